"""Error types of the data pipeline.

Every user-facing failure (missing file, corrupt model, bad shard) is a `DataError`, a
`ValueError`, so the CLI can print one line and exit 2 and callers need not import
anything special to catch it.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad data input: a missing or unreadable file, a corrupt model, a wrong manifest."""


class ShardError(DataError):
    """A shard that cannot be used; `shard` names it (file name or URL)."""

    def __init__(self, shard: str, reason: str) -> None:
        super().__init__(f"shard {shard}: {reason}")
        self.shard = shard
        self.reason = reason
