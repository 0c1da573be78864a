"""Where a run directory lives: a local path, or a URI mirrored through pyarrow.fs.

A local path (a local disk or a shared file system) is used as it is: every
rank writes straight into it and nothing here copies anything.

A URI (`s3://`, `gs://`, `file://`, anything `pyarrow.fs.FileSystem.from_uri`
accepts, e.g. `s3://bucket/runs/x?endpoint_override=127.0.0.1:9000&scheme=http`;
the layer Ray's own storage uses) is the run's home, and every rank works in a
local staging directory, `$GOBIG_CACHE/runs/<readable uri>-<hash>` (default
`~/.cache/gobig/runs/...`, location.py). The path is the same for every rank
of a node and for every attempt, so ranks on one node share it and a restarted
worker finds what it wrote.

Checkpoints keep the catalog's completeness rule on the remote copy: every
rank uploads its share of the step directory (its sums file with it), a
barrier, then rank 0 writes meta.json and COMPLETE (with the sizes of the
remote files and the checksums taken while writing) last. Resume takes the
newest remote checkpoint whose sizes verify remotely, downloads it into the
staging directory, checks the checksums there (every rank its share: the
downloaded bytes are the remote ones, or the check catches the download) and
the ordinary local resume path takes over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from train.checkpoint.catalog import Catalog, local_catalog
from train.checkpoint.files import LocalFiles, RemoteFiles
from train.checkpoint.layout import CHECKPOINTS, MARKER, META, step_of
from train.checkpoint.location import is_uri, join_run_dir, split_run_dir, staging_dir

if TYPE_CHECKING:  # `gobig verify` reads a run's storage without torch
    from train.distributed import DistInfo

# Rank 0's files besides checkpoints, mirrored at each checkpoint and at the end.
RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl")
# Uploaded with them, never fetched back: each attempt copies it afresh (run_dir.py).
KEPT_FILES = ("tokenizer.model",)
END_FILES = ("result.json",)
WANDB_DIR = "wandb"


class RunStorage:
    """A run directory: where ranks write (`local`) and, for a URI, its remote home.

    Args:
        spec: a local path, or a URI that pyarrow.fs understands.
    """

    def __init__(self, spec: str | Path):
        self.spec = str(spec) if is_uri(spec) else Path(spec)
        self.remote: RemoteFiles | None = None
        if is_uri(spec):
            import pyarrow.fs as pafs

            fs, root = pafs.FileSystem.from_uri(str(spec))
            self.remote = RemoteFiles(fs, root, str(spec))
            self.local = staging_dir(str(spec))
            self.name = split_run_dir(spec)[1]
            home = RemoteFiles(fs, self.remote.path(CHECKPOINTS), self.home_of_name(CHECKPOINTS))
            self.checkpoints = Catalog(home)
        else:
            self.local = Path(spec)
            self.name = self.local.name
            self.checkpoints = local_catalog(self.local)
        # This node's working copy: the home itself for a local run.
        self.staged = local_catalog(self.local) if self.remote else self.checkpoints

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    def __str__(self) -> str:
        return str(self.spec)

    def home_of_name(self, rel: str) -> str:
        return str(join_run_dir(self.spec, rel))

    def home_of(self, path: Path) -> str:
        """Where `path`, inside the local working directory, lives at the run's home."""
        if not self.is_remote:
            return str(path)
        rel = Path(path).relative_to(self.local).as_posix()
        return self.home_of_name(rel) if rel != "." else str(self.spec)

    # --- reading (driver side and resume) ---------------------------------

    def read_text(self, name: str) -> str | None:
        """A file of the run directory (None if absent), read from its home."""
        home = self.remote or LocalFiles(self.local)
        return home.read_text(name)

    def list_checkpoints(self) -> list[str]:
        """Names of the run's checkpoint directories at home, oldest first."""
        return self.checkpoints.names()

    def verify(self, name: str) -> str | None:
        """None if checkpoint `name` is complete and intact at home, else why not."""
        return self.checkpoints.verify(name)

    def newest_complete(self, warn: bool = True) -> str | None:
        """Name of the newest intact checkpoint at home; newer broken ones are warned about."""
        return self.checkpoints.newest_complete(warn)

    # --- resume (every rank) -------------------------------------------------

    def candidates(self, before_step: int | None = None) -> list[str]:
        """Checkpoint names at home, newest first (only steps < `before_step` if given)."""
        names = reversed(self.list_checkpoints())
        return [n for n in names if before_step is None or step_of(n) < before_step]

    def fetch_run_files(self, dist: DistInfo) -> None:
        """Rank 0 of a remote run: the run's own files into the staging directory."""
        self.local.mkdir(parents=True, exist_ok=True)
        if self.is_remote and dist.is_main:
            for run_file in RUN_FILES:  # run.json keeps the W&B id; metrics get rewound
                text = self.read_text(run_file)
                if text is not None:
                    (self.local / run_file).write_text(text)

    def fetch_checkpoint(self, name: str) -> Path:
        """The local directory of checkpoint `name`, downloaded first if remote."""
        if not self.is_remote:
            return self.local / CHECKPOINTS / name
        with self._lock():  # ranks on one node share the staging dir: fetch once
            return self._fetch_checkpoint(name)

    def _fetch_checkpoint(self, name: str) -> Path:
        import pyarrow.fs as pafs

        target = self.local / CHECKPOINTS / name
        marker = self.checkpoints.files.read_text(f"{name}/{MARKER}")
        here = self.staged.files.read_text(f"{name}/{MARKER}")
        if here == marker and self.staged.verify(name) is None:
            return target  # already here, the same bytes the remote copy vouches for
        partial = target.with_name(f".{name}.download")  # not a step_* dir: never listed
        shutil.rmtree(partial, ignore_errors=True)
        pafs.copy_files(
            self.remote.path(f"{CHECKPOINTS}/{name}"), str(partial),
            source_filesystem=self.remote.fs, destination_filesystem=pafs.LocalFileSystem(),
        )  # fmt: skip
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        return target

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.local / ".fetch.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
            yield

    # --- writing a checkpoint ----------------------------------------------------

    def begin_checkpoint(self, name: str, dist: DistInfo) -> None:
        """Before any rank writes checkpoint `name`: no old marker may vouch for it."""
        self.staged.begin(name)
        if self.is_remote and dist.is_main:
            self.checkpoints.begin(name)

    def upload_share(self, ckpt: Path, dist: DistInfo) -> None:
        """Upload this rank's share of a written, flushed local checkpoint.

        Ranks of one node share the staging directory and so see the same files
        (after the barrier that follows the flush): the sorted list is dealt out
        round-robin by local rank, so each file goes up once per node. Without
        LOCAL_WORLD_SIZE every rank uploads all it sees; duplicates are identical
        bytes and harmless. meta.json and COMPLETE are rank 0's, written last.
        """
        if not self.is_remote:
            return
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        files = sorted(rel for rel in LocalFiles(ckpt).tree("") if rel not in (META, MARKER))
        for rel in files[dist.local_rank % local_world :: local_world]:
            self.remote.upload(ckpt / rel, f"{CHECKPOINTS}/{ckpt.name}/{rel}")

    def mark_checkpoint(self, name: str, meta: dict[str, Any], world_size: int) -> None:
        """Rank 0, once every rank's share is written (and uploaded): mark it complete.

        A remote run marks this node's staging copy, mirrors the run files, then
        marks the remote copy, last.
        """
        if self.is_remote:
            self.staged.mark_complete(name, meta, world_size=None)  # this node's share only
            self.upload_run_files()
        self.checkpoints.mark_complete(name, meta, world_size)

    def discard_checkpoint(self, name: str) -> None:
        """Rank 0, after a failed save: remove what was written of `name`, here and at home."""
        if (self.local / CHECKPOINTS / name).is_dir():
            self.staged.files.remove_tree(name, now=True)
        if self.is_remote:
            with contextlib.suppress(OSError):  # nothing uploaded yet, or the store is down
                self.checkpoints.files.remove_tree(name, now=True)

    def prune(self, keep: int) -> None:
        """Rank 0: keep the newest `keep` complete checkpoints (here and at home)."""
        if self.is_remote:
            self.staged.prune(keep)
        self.checkpoints.prune(keep)

    # --- rank 0's run files ------------------------------------------------------

    def upload_run_files(self, final: bool = False) -> None:
        """Rank 0: config snapshot, run.json, metrics; at the end also result and W&B."""
        if not self.is_remote:
            return
        for name in RUN_FILES + KEPT_FILES + (END_FILES if final else ()):
            if (self.local / name).is_file():
                self.remote.upload(self.local / name, name)
        if final and (self.local / WANDB_DIR).is_dir():
            import pyarrow.fs as pafs

            self.remote.fs.create_dir(self.remote.path(WANDB_DIR), recursive=True)
            pafs.copy_files(
                str(self.local / WANDB_DIR), self.remote.path(WANDB_DIR),
                source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.remote.fs,
            )  # fmt: skip
