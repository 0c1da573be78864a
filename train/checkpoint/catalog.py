"""The checkpoints of one run: list, verify, mark complete, find the newest, prune.

Written once over `RunFiles` (files.py), so a local run directory and a
remote one (a URI) keep their checkpoints by the same rules:

- a checkpoint counts only when its COMPLETE marker exists and every file the
  marker lists has its recorded size (truncation is caught);
- the marker is written last, after meta.json, by rank 0 once every rank has
  written (and, remotely, uploaded) its share;
- resume takes the newest checkpoint that verifies and warns, naming each
  newer one it skips;
- pruning never touches anything newer than the newest complete checkpoint
  (another rank may still be writing it).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from train.checkpoint.files import LocalFiles, RunFiles, json_text
from train.checkpoint.layout import (
    CHECKPOINTS,
    MARKER,
    META,
    STEP_PREFIX,
    CheckpointError,
    rank_file_name,
)


class Catalog:
    """The checkpoint directories under one `checkpoints/` folder.

    Args:
        files: the `checkpoints/` folder (local or remote).
    """

    def __init__(self, files: RunFiles):
        self.files = files

    def names(self) -> list[str]:
        """Checkpoint directory names, oldest first."""
        return [n for n in self.files.subdirs("") if n.startswith(STEP_PREFIX)]

    def verify(self, name: str) -> str | None:
        """None if checkpoint `name` is complete and intact, else the reason it is not."""
        marker = self.files.read_text(f"{name}/{MARKER}")
        if marker is None:
            return "not marked complete"
        try:
            recorded = json.loads(marker)["files"]
        except (ValueError, KeyError, TypeError):
            return f"unreadable {MARKER}"
        found = self.files.sizes([f"{name}/{rel}" for rel in recorded])
        for (rel, size), actual in zip(recorded.items(), found, strict=True):
            if actual is None:
                return f"missing {rel}"
            if actual != size:
                return f"{rel} is {actual} bytes, expected {size} (truncated?)"
        return None

    def newest_complete(self, warn: bool = True) -> str | None:
        """The newest intact checkpoint's name; each newer broken one is warned about."""
        for name in reversed(self.names()):
            reason = self.verify(name)
            if reason is None:
                return name
            if warn:
                warnings.warn(
                    f"skipping checkpoint {self.files.describe(name)}: {reason}", stacklevel=2
                )
        return None

    def read_meta(self, name: str) -> dict[str, Any]:
        text = self.files.read_text(f"{name}/{META}")
        if text is None:
            raise CheckpointError(f"{self.files.describe(name)}: no {META}")
        return json.loads(text)

    def begin(self, name: str) -> None:
        """Before (re)writing checkpoint `name`: its old marker must not vouch for
        half-rewritten files."""
        self.files.remove(f"{name}/{MARKER}")

    def mark_complete(self, name: str, meta: dict[str, Any], world_size: int | None) -> None:
        """meta.json, then the marker listing every file's size.

        Args:
            name: the checkpoint, every rank's files already written and flushed.
            meta: its meta record.
            world_size: ranks whose state file must be present (None: do not
                check, for a node's partial staging copy of a remote run).
        """
        self.files.write_text(f"{name}/{META}", json_text(meta))
        sizes = {rel: size for rel, size in self.files.tree(name).items() if rel != MARKER}
        missing = [rank_file_name(r) for r in range(world_size or 0)]
        missing = [f for f in missing if f not in sizes]
        if missing:  # a rank's files never arrived: better no checkpoint than a bad one
            raise CheckpointError(f"{self.files.describe(name)}: lacks {missing}")
        self.files.write_text(f"{name}/{MARKER}", json_text({"files": dict(sorted(sizes.items()))}))

    def prune(self, keep: int) -> list[str]:
        """Remove all but the newest `keep` complete checkpoints, and broken older ones."""
        names = self.names()
        complete = [n for n in names if self.verify(n) is None]
        if not complete:
            return []
        kept = set(complete[-keep:])
        removed = [n for n in names if n not in kept and n < complete[-1]]
        for name in removed:
            self.files.remove_tree(name)
        return removed


# -- the same, for a local run directory by path ------------------------------------


def local_catalog(run_dir: Path) -> Catalog:
    return Catalog(LocalFiles(Path(run_dir) / CHECKPOINTS))


def _of(ckpt: Path) -> tuple[Catalog, str]:
    ckpt = Path(ckpt)
    return Catalog(LocalFiles(ckpt.parent)), ckpt.name


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a local run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    return [root / name for name in local_catalog(run_dir).names()]


def newest_complete(run_dir: Path, warn: bool = True) -> Path | None:
    """The newest intact checkpoint of a local run; newer broken ones are warned about."""
    name = local_catalog(run_dir).newest_complete(warn)
    return Path(run_dir) / CHECKPOINTS / name if name else None


def verify(ckpt: Path) -> str | None:
    """None if the checkpoint directory `ckpt` is complete and intact, else why not."""
    catalog, name = _of(ckpt)
    return catalog.verify(name)


def read_meta(ckpt: Path) -> dict[str, Any]:
    catalog, name = _of(ckpt)
    return catalog.read_meta(name)


def mark_complete(ckpt: Path, meta: dict[str, Any], world_size: int | None = None) -> None:
    catalog, name = _of(ckpt)
    catalog.mark_complete(name, meta, world_size)


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Prune a local run's checkpoints (see Catalog.prune); returns what was removed."""
    root = Path(run_dir) / CHECKPOINTS
    return [root / name for name in local_catalog(run_dir).prune(keep)]
