"""The checkpoints of one run: list, verify, mark complete, find the newest, prune.

Written once over `RunFiles` (files.py), so a local run directory and a
remote one (a URI) keep their checkpoints by the same rules:

- a checkpoint counts only when its COMPLETE marker exists and every file the
  marker lists has its recorded size (truncation is caught); resume and
  `gobig verify` also compare content checksums (flipped bytes are caught):
  `verify(name, share=(rank, world))` hashes one rank's share of the files,
  `share_of` deals them out by size so each rank reads about 1/world of the
  bytes;
- the marker is written last, after meta.json, by rank 0 once every rank has
  written (and, remotely, uploaded) its share; it folds in every rank's sums
  file (the checksums taken while writing) and hashes the few files no rank's
  writer wrote (meta.json, DeepSpeed's recovery scripts);
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

from train.checkpoint.checksum import HASH
from train.checkpoint.files import LocalFiles, RunFiles, json_text
from train.checkpoint.layout import (
    CHECKPOINTS,
    MARKER,
    META,
    STEP_PREFIX,
    CheckpointError,
    is_sums_file,
    rank_file_name,
)

NOT_MARKED = "not marked complete"
Share = tuple[int, int]  # (rank, world size): which files a rank hashes


def share_of(sizes: dict[str, int], share: Share) -> list[str]:
    """The files rank `share[0]` of `share[1]` checks: the largest file goes to the
    rank with the fewest bytes so far (ties: the lowest rank), so the bytes split
    evenly; every rank computes the same deal from the same marker."""
    rank, world = share
    load = [0] * world
    mine = []
    for rel, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        owner = min(range(world), key=lambda r: (load[r], r))
        load[owner] += size
        if owner == rank:
            mine.append(rel)
    return sorted(mine)


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

    def marker(self, name: str) -> dict[str, Any] | None:
        """Checkpoint `name`'s COMPLETE record (None if unmarked); CheckpointError if unreadable.

        `files` maps each file to its size; `checksums` (absent in markers written
        before checksums) maps files to their `hash` digests.
        """
        text = self.files.read_text(f"{name}/{MARKER}")
        if text is None:
            return None
        try:
            record = json.loads(text)
            if not isinstance(record["files"], dict):
                raise TypeError
        except (ValueError, KeyError, TypeError) as exn:
            raise CheckpointError(f"unreadable {MARKER}") from exn
        if record.get("hash") != HASH:  # none recorded, or a hash this version cannot check
            record["checksums"] = {}
        return record

    def verify(self, name: str, share: Share | None = None) -> str | None:
        """None if checkpoint `name` is complete and intact, else the reason it is not.

        Args:
            name: the checkpoint.
            share: None: sizes only (one stat per file). (rank, world): also compare
                the checksums of that rank's share of the files; (0, 1): all of them.
                A file with no recorded checksum (an older marker) is checked by size.
        """
        try:
            record = self.marker(name)
        except CheckpointError as exn:
            return str(exn)
        if record is None:
            return NOT_MARKED
        recorded = record["files"]
        found = self.files.sizes([f"{name}/{rel}" for rel in recorded])
        for (rel, size), actual in zip(recorded.items(), found, strict=True):
            if actual is None:
                return f"missing {rel}"
            if actual != size:
                return f"{rel} is {actual} bytes, expected {size} (truncated?)"
        if share is None:
            return None
        sums = record["checksums"]
        bad = []
        for rel in share_of(recorded, share):
            if rel not in sums:
                continue
            try:
                if self.files.checksum(f"{name}/{rel}") != sums[rel]:
                    bad.append(f"{rel} checksum mismatch (corrupt)")
            except OSError as exn:
                bad.append(f"{rel} unreadable ({exn.strerror or exn})")
        return ", ".join(bad) or None

    def newest_bytes(self) -> int | None:
        """The size of the newest complete checkpoint by its marker (None if there is none)."""
        for name in reversed(self.names()):
            # Sized first, then verified: a marker another rank removes in between
            # (a rewrite) fails the check and the next older checkpoint is taken.
            size = self.total_bytes(name)
            if size is not None and self.verify(name) is None:
                return size
        return None

    def total_bytes(self, name: str) -> int | None:
        """The size of checkpoint `name` by its marker (None if unmarked or unreadable)."""
        try:
            record = self.marker(name)
        except CheckpointError:
            return None
        return sum(record["files"].values()) if record else None

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
        half-rewritten files, nor an earlier attempt's sums be folded into the new one.

        Every rank may call it: DeepSpeed's save starts with a barrier, so no rank
        writes its new sums before every rank is past this.
        """
        self.files.remove(f"{name}/{MARKER}")
        try:
            stale = [rel for rel in self.files.tree(name) if is_sums_file(rel)]
        except FileNotFoundError:
            stale = []
        for rel in stale:
            self.files.remove(f"{name}/{rel}")

    def mark_complete(self, name: str, meta: dict[str, Any], world_size: int | None) -> None:
        """meta.json, then the marker listing every file's size and checksum.

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
        written = self._written_sums(name, sizes)
        checksums = {}
        for rel in sorted(sizes):
            if rel in written:  # taken while writing; none if that writer took none
                if HASH in written[rel]:
                    checksums[rel] = written[rel][HASH]
            else:  # no writer's: meta.json, the sums files, DeepSpeed's own scripts (small)
                checksums[rel] = self.files.checksum(f"{name}/{rel}")
        record = {"files": dict(sorted(sizes.items())), "hash": HASH, "checksums": checksums}
        self.files.write_text(f"{name}/{MARKER}", json_text(record))

    def _written_sums(self, name: str, sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
        """Every rank's sums file folded into one; each file must have the size its
        writer recorded."""
        written: dict[str, dict[str, Any]] = {}
        for sums_file in (rel for rel in sizes if is_sums_file(rel)):
            try:
                record = json.loads(self.files.read_text(f"{name}/{sums_file}") or "")
                if record.get("hash") != HASH:
                    continue
                written.update(record["files"])
            except (ValueError, KeyError, TypeError, AttributeError) as exn:
                where = self.files.describe(name)
                raise CheckpointError(f"{where}: unreadable {sums_file}") from exn
        for rel, entry in written.items():
            if sizes.get(rel) != entry["size"]:
                found = "missing" if rel not in sizes else f"{sizes[rel]} bytes"
                raise CheckpointError(
                    f"{self.files.describe(name)}: {rel} is {found}, its writer wrote "
                    f"{entry['size']} bytes"
                )
        return written

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


def verify(ckpt: Path, checksums: bool = False) -> str | None:
    """None if the checkpoint directory `ckpt` is complete and intact, else why not.

    Args:
        ckpt: the checkpoint directory.
        checksums: also read every file and compare its checksum (else sizes only).
    """
    catalog, name = _of(ckpt)
    return catalog.verify(name, (0, 1) if checksums else None)


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
