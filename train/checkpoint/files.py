"""The one small filesystem interface checkpoints are kept through.

Everything the catalog does (list, verify, mark complete, prune) is written
once against `RunFiles`; `LocalFiles` is a directory on this machine (or a
shared file system), `RemoteFiles` a prefix in anything `pyarrow.fs` reaches
(S3, GCS, `file://`). Paths are relative to the root and use `/`.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from train.checkpoint.checksum import hash_local_file, hash_stream
from train.checkpoint.layout import TRASH


class RunFiles(Protocol):
    """What the catalog needs of a place that holds files."""

    def describe(self, rel: str) -> str:
        """`rel` as a user would name it (a path or a URI), for messages."""

    def read_text(self, rel: str) -> str | None:
        """The file's text, or None if there is no such file."""

    def write_text(self, rel: str, text: str) -> None:
        """Write the file whole (atomically and durably where the storage allows)."""

    def subdirs(self, rel: str) -> list[str]:
        """Names of the directories directly under `rel`, sorted (none if `rel` is absent)."""

    def sizes(self, rels: list[str]) -> list[int | None]:
        """Each file's size in bytes, None for a missing one."""

    def tree(self, rel: str) -> dict[str, int]:
        """Every file under `rel`: its path relative to `rel` -> its size."""

    def checksum(self, rel: str) -> str:
        """The file's content checksum (checksum.py), read whole."""

    def remove(self, rel: str) -> None:
        """Delete a file if it exists."""

    def remove_tree(self, rel: str, now: bool = False) -> None:
        """Delete a directory and everything in it (`now`: before returning)."""


def json_text(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=1, sort_keys=True)


class LocalFiles:
    """Files under a local directory.

    Args:
        root: the directory (need not exist yet).
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def describe(self, rel: str) -> str:
        return str(self.root / rel)

    # Other ranks remove a rewritten checkpoint's marker and sums while this one
    # reads the catalog: a file may vanish between a look and a read, so every
    # read here asks once and takes "gone" for an answer (no exists-then-read).
    def read_text(self, rel: str) -> str | None:
        try:
            return (self.root / rel).read_text()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def write_text(self, rel: str, text: str) -> None:
        path = self.root / rel
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def subdirs(self, rel: str) -> list[str]:
        folder = self.root / rel
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir())

    def sizes(self, rels: list[str]) -> list[int | None]:
        return [_file_size(self.root / rel) for rel in rels]

    def tree(self, rel: str) -> dict[str, int]:
        folder = self.root / rel
        found = {p.relative_to(folder).as_posix(): _file_size(p) for p in sorted(folder.rglob("*"))}
        return {name: size for name, size in found.items() if size is not None}

    def checksum(self, rel: str) -> str:
        return hash_local_file(self.root / rel)

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)

    def remove_tree(self, rel: str, now: bool = False) -> None:
        if now:  # e.g. a failed checkpoint on a full disk: the room is needed back
            shutil.rmtree(self.root / rel, ignore_errors=True)
            return
        # A rename into the trash (instant), then deletion in a background
        # thread: deleting hundreds of MB takes longer than writing them on
        # some file systems, and training need not wait for it. Trash left by a
        # process that exited early goes with the next removal.
        trash = self.root / TRASH
        trash.mkdir(exist_ok=True)
        (self.root / rel).rename(trash / f"{Path(rel).name}-{time.time_ns()}")
        threading.Thread(target=_empty, args=(trash,), daemon=True).start()


def _file_size(path: Path) -> int | None:
    """A regular file's size; None for a directory or a file that is not (or no longer) there."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _empty(trash: Path) -> None:
    for item in list(trash.iterdir()):
        shutil.rmtree(item, ignore_errors=True)


class RemoteFiles:
    """Files under a prefix of a pyarrow filesystem.

    Args:
        fs: the pyarrow.fs.FileSystem.
        root: the prefix inside it (no trailing slash).
        uri: the URI of `root`, for messages.
    """

    def __init__(self, fs: Any, root: str, uri: str):
        self.fs = fs
        self.root = root.rstrip("/")
        self.uri = uri

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def describe(self, rel: str) -> str:
        from train.checkpoint.location import join_run_dir

        return str(join_run_dir(self.uri, rel)) if rel else self.uri

    def read_text(self, rel: str) -> str | None:
        if self.sizes([rel])[0] is None:
            return None
        with self.fs.open_input_stream(self.path(rel)) as fh:
            return fh.read().decode()

    def write_text(self, rel: str, text: str) -> None:
        self.fs.create_dir(self.path(rel).rpartition("/")[0], recursive=True)
        with self.fs.open_output_stream(self.path(rel)) as dst:
            dst.write(text.encode())

    def upload(self, local: Path, rel: str) -> None:
        """Copy a local file to `rel`."""
        self.fs.create_dir(self.path(rel).rpartition("/")[0], recursive=True)
        with open(local, "rb") as src, self.fs.open_output_stream(self.path(rel)) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)

    def subdirs(self, rel: str) -> list[str]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path(rel), allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def sizes(self, rels: list[str]) -> list[int | None]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info([self.path(rel) for rel in rels])
        return [i.size if i.type == pafs.FileType.File else None for i in infos]

    def tree(self, rel: str) -> dict[str, int]:
        import pyarrow.fs as pafs

        prefix = self.path(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
        return {i.path[len(prefix) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}

    def checksum(self, rel: str) -> str:
        with self.fs.open_input_stream(self.path(rel)) as fh:
            return hash_stream(fh)

    def remove(self, rel: str) -> None:
        if self.sizes([rel])[0] is not None:
            self.fs.delete_file(self.path(rel))

    def remove_tree(self, rel: str, now: bool = False) -> None:
        self.fs.delete_dir(self.path(rel))
