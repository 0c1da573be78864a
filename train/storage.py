"""Where a run directory lives: a local path, or a URI mirrored through pyarrow.fs.

A local path (a local disk or a shared file system) is used as it is: every
rank writes straight into it and nothing here copies anything.

A URI (`s3://`, `gs://`, `file://`, anything `pyarrow.fs.FileSystem.from_uri`
accepts, e.g. `s3://bucket/runs/x?endpoint_override=127.0.0.1:9000&scheme=http`;
the layer Ray's own storage uses) is the run's home, and every rank works in a
local staging directory, `$GOBIG_CACHE/runs/<readable uri>-<hash>` (default
`~/.cache/gobig/runs/...`). The path is the same for every rank of a node and
for every attempt, so ranks on one node share it and a restarted worker finds
what it wrote. Only the scheme, host and path make the readable part; the hash
covers the query too, whose credentials must not become a directory name.

Checkpoints keep the completeness rule of train/checkpoint.py, on the remote
copy: every rank uploads its share of the step directory, a barrier, then rank
0 writes meta.json and COMPLETE (with the sizes of the remote files) last.
Resume picks the newest remote checkpoint that verifies remotely, downloads it
into the staging directory, and the ordinary local resume path takes over.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from train import checkpoint as ckpt_io
from train.distributed import DistInfo

# Rank 0's files besides checkpoints, mirrored at each checkpoint and at the end.
RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl")
END_FILES = ("result.json",)
WANDB_DIR = "wandb"


def is_uri(spec: str | Path) -> bool:
    """Whether `spec` names a run directory by URI rather than by local path."""
    return isinstance(spec, str) and "://" in spec


def join_run_dir(parent: str | Path, name: str) -> str | Path:
    """`parent/name` for a path or a URI (a URI keeps its query after the new path)."""
    if not is_uri(parent):
        return Path(parent) / name
    parts = urlsplit(str(parent))
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def split_run_dir(run_dir: str | Path) -> tuple[str, str]:
    """(parent, name) of a run directory path or URI, the inverse of `join_run_dir`."""
    if not is_uri(run_dir):
        return str(Path(run_dir).parent), Path(run_dir).name
    parts = urlsplit(str(run_dir))
    parent, _, name = parts.path.rstrip("/").rpartition("/")
    return urlunsplit(parts._replace(path=parent)), name


def staging_dir(uri: str) -> Path:
    """The local working copy of the run at `uri` (see the module docstring)."""
    parts = urlsplit(uri)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parts.scheme}_{parts.netloc}{parts.path}")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:10]
    root = Path(os.environ.get("GOBIG_CACHE", Path.home() / ".cache" / "gobig"))
    return root / "runs" / f"{readable.strip('_')[:80]}-{digest}"


class RunStorage:
    """A run directory: where ranks write (`local`) and, for a URI, its remote home.

    Args:
        spec: a local path, or a URI that pyarrow.fs understands.
    """

    def __init__(self, spec: str | Path):
        self.spec = str(spec) if is_uri(spec) else Path(spec)
        self.fs = None
        self.root = ""
        if is_uri(spec):
            import pyarrow.fs as pafs

            self.fs, root = pafs.FileSystem.from_uri(str(spec))
            self.root = root.rstrip("/")
            self.local = staging_dir(str(spec))
            self.name = split_run_dir(spec)[1]
        else:
            self.local = Path(spec)
            self.name = self.local.name

    @property
    def is_remote(self) -> bool:
        return self.fs is not None

    def __str__(self) -> str:
        return str(self.spec)

    def home_of(self, path: Path) -> str:
        """Where `path`, inside the local working directory, lives at the run's home."""
        if not self.is_remote:
            return str(path)
        rel = Path(path).relative_to(self.local).as_posix()
        return str(join_run_dir(self.spec, rel)) if rel != "." else str(self.spec)

    def _remote(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # --- reading (driver side and resume) ---------------------------------

    def read_text(self, name: str) -> str | None:
        """A file of the run directory (None if absent), read from its home."""
        if not self.is_remote:
            path = self.local / name
            return path.read_text() if path.is_file() else None
        if not self._exists(self._remote(name)):
            return None
        with self.fs.open_input_stream(self._remote(name)) as fh:
            return fh.read().decode()

    def list_checkpoints(self) -> list[str]:
        """Names of the run's checkpoint directories, oldest first."""
        if not self.is_remote:
            return [c.name for c in ckpt_io.list_checkpoints(self.local)]
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self._remote(ckpt_io.CHECKPOINTS), allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory and info.base_name.startswith("step_")
        )

    def verify(self, name: str) -> str | None:
        """None if checkpoint `name` is complete and intact at home, else why not."""
        if not self.is_remote:
            return ckpt_io.verify(self.local / ckpt_io.CHECKPOINTS / name)
        marker = self.read_text(f"{ckpt_io.CHECKPOINTS}/{name}/{ckpt_io.MARKER}")
        if marker is None:
            return "not marked complete"
        try:
            sizes = json.loads(marker)["files"]
        except (ValueError, KeyError):
            return f"unreadable {ckpt_io.MARKER}"
        infos = self.fs.get_file_info(
            [self._remote(ckpt_io.CHECKPOINTS, name, rel) for rel in sizes]
        )
        for (rel, size), info in zip(sizes.items(), infos, strict=True):
            if info.size is None:
                return f"missing {rel}"
            if info.size != size:
                return f"{rel} is {info.size} bytes, expected {size} (truncated?)"
        return None

    def newest_complete(self, warn: bool = True) -> str | None:
        """Name of the newest intact checkpoint; each newer broken one is warned about."""
        for name in reversed(self.list_checkpoints()):
            reason = self.verify(name)
            if reason is None:
                return name
            if warn:
                where = join_run_dir(join_run_dir(self.spec, ckpt_io.CHECKPOINTS), name)
                warnings.warn(f"skipping checkpoint {where}: {reason}", stacklevel=2)
        return None

    # --- resume (every rank) -------------------------------------------------

    def checkpoint_to_resume(self, dist: DistInfo) -> Path | None:
        """The local checkpoint directory to resume from, fetched from home if remote.

        Args:
            dist: this rank (rank 0 warns and also fetches the run's own files).
        """
        if not self.is_remote:
            return ckpt_io.newest_complete(self.local, warn=dist.is_main)
        self.local.mkdir(parents=True, exist_ok=True)
        name = self.newest_complete(warn=dist.is_main)
        if dist.is_main:
            for run_file in RUN_FILES:  # run.json keeps the W&B id; metrics get rewound
                self._download_file(run_file)
        if name is None:
            return None
        with self._lock():  # ranks on one node share the staging dir: fetch once
            return self._fetch_checkpoint(name)

    def _fetch_checkpoint(self, name: str) -> Path:
        target = self.local / ckpt_io.CHECKPOINTS / name
        marker = self.read_text(f"{ckpt_io.CHECKPOINTS}/{name}/{ckpt_io.MARKER}")
        local_marker = target / ckpt_io.MARKER
        if ckpt_io.verify(target) is None and local_marker.read_text() == marker:
            return target  # already here, the same bytes the remote copy vouches for
        import pyarrow.fs as pafs

        partial = target.with_name(f".{name}.download")  # not a step_* dir: never listed
        shutil.rmtree(partial, ignore_errors=True)
        pafs.copy_files(
            self._remote(ckpt_io.CHECKPOINTS, name), str(partial),
            source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem(),
        )  # fmt: skip
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        return target

    def _download_file(self, name: str) -> None:
        text = self.read_text(name)
        if text is not None:
            (self.local / name).write_text(text)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.local / ".fetch.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
            yield

    # --- checkpoint upload -----------------------------------------------------

    def begin_checkpoint(self, ckpt: Path) -> None:
        """Rank 0, before any rank uploads: the old remote marker must not vouch for
        files being rewritten (the remote twin of loop.save_checkpoint's unlink)."""
        if self.is_remote:
            marker = self._remote(ckpt_io.CHECKPOINTS, ckpt.name, ckpt_io.MARKER)
            if self._exists(marker):
                self.fs.delete_file(marker)

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
        files = sorted(
            p.relative_to(ckpt).as_posix()
            for p in ckpt.rglob("*")
            if p.is_file() and p.name not in (ckpt_io.META, ckpt_io.MARKER)
        )
        for rel in files[dist.local_rank % local_world :: local_world]:
            self._upload(ckpt / rel, self._remote(ckpt_io.CHECKPOINTS, ckpt.name, rel))

    def publish_checkpoint(self, ckpt: Path, world_size: int, keep: int) -> None:
        """Rank 0, after every rank's upload: run files, meta, then COMPLETE; prune.

        Args:
            ckpt: the local checkpoint, already marked complete locally.
            world_size: ranks that wrote it (each rank's state file must be there).
            keep: complete checkpoints to keep at home.
        """
        if not self.is_remote:
            return
        import pyarrow.fs as pafs

        self.upload_run_files()
        remote = self._remote(ckpt_io.CHECKPOINTS, ckpt.name)
        self._upload(ckpt / ckpt_io.META, f"{remote}/{ckpt_io.META}")
        selector = pafs.FileSelector(remote, recursive=True)
        sizes = {
            info.path[len(remote) + 1 :]: info.size
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name != ckpt_io.MARKER
        }
        missing = [
            ckpt_io.rank_file(Path(), r).name
            for r in range(world_size)
            if ckpt_io.rank_file(Path(), r).name not in sizes
        ]
        if missing:  # a rank's files never arrived: better no checkpoint than a bad one
            raise ckpt_io.CheckpointError(f"{self.spec}: {ckpt.name} lacks {missing} remotely")
        payload = json.dumps({"files": dict(sorted(sizes.items()))}, indent=1, sort_keys=True)
        self._write_text(f"{remote}/{ckpt_io.MARKER}", payload)
        self._prune(keep)

    def _prune(self, keep: int) -> None:
        # As checkpoint.prune: never touch anything newer than the newest complete one.
        names = self.list_checkpoints()
        complete = [n for n in names if self.verify(n) is None]
        if not complete:
            return
        kept = set(complete[-keep:])
        for name in names:
            if name not in kept and name < complete[-1]:
                self.fs.delete_dir(self._remote(ckpt_io.CHECKPOINTS, name))

    # --- rank 0's run files ------------------------------------------------------

    def upload_run_files(self, final: bool = False) -> None:
        """Rank 0: config snapshot, run.json, metrics; at the end also result and W&B."""
        if not self.is_remote:
            return
        for name in RUN_FILES + (END_FILES if final else ()):
            if (self.local / name).is_file():
                self._upload(self.local / name, self._remote(name))
        if final and (self.local / WANDB_DIR).is_dir():
            import pyarrow.fs as pafs

            self.fs.create_dir(self._remote(WANDB_DIR), recursive=True)
            pafs.copy_files(
                str(self.local / WANDB_DIR), self._remote(WANDB_DIR),
                source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs,
            )  # fmt: skip

    # --- primitives ----------------------------------------------------------------

    def _exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _upload(self, local: Path, remote: str) -> None:
        self.fs.create_dir(remote.rpartition("/")[0], recursive=True)
        with open(local, "rb") as src, self.fs.open_output_stream(remote) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)

    def _write_text(self, remote: str, text: str) -> None:
        with self.fs.open_output_stream(remote) as dst:
            dst.write(text.encode())
