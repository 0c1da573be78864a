"""Error types of the data pipeline, and the one base of every user-facing gobig error.

`GobigError` lives here because every package may import data_pipeline (it imports
none of them). Every user-facing failure derives from it: `DataError` and `ShardError`
here, `ConfigError`, `CheckpointError` and `ExportError` in train, `ClusterError` and
`UsageError` in cluster. Each command line (`gobig`, `python -m train`, `gobig export`,
`gobig data`) prints one with `report_error`: one line on stderr, exit status 2.

Every data failure (missing file, corrupt model, bad shard) is a `DataError`, also a
`ValueError`, so callers need not import anything special to catch it.
"""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2


class GobigError(Exception):
    """The one base of user-facing errors: str() is a one-line message ready to print."""


class DataError(GobigError, ValueError):
    """Bad data input: a missing or unreadable file, a corrupt model, a wrong manifest."""


class ShardError(DataError):
    """A shard that cannot be used; `shard` names it (file name or URL)."""

    def __init__(self, shard: str, reason: str) -> None:
        super().__init__(f"shard {shard}: {reason}")
        self.shard = shard
        self.reason = reason


def error_message(exc: BaseException) -> str:
    """`exc` as one line: an OSError names its file and reason, anything else its str()."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename} {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line or type(exc).__name__


def report_error(prog: str, exc: BaseException) -> int:
    """Print `PROG: error: MESSAGE` as one line on stderr; the exit status (2).

    Args:
        prog: the command, e.g. `gobig` or `gobig data text`.
        exc: a `GobigError`, or an OSError at a command's boundary.
    """
    print(f"{prog}: error: {error_message(exc)}", file=sys.stderr)
    return EXIT_USER_ERROR
