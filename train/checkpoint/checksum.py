"""Content checksums of checkpoint files: taken while a file is written, checked on resume.

The hash is xxHash's XXH3, 128 bits (`xxh3_128`). It runs at about 20 GB/s on
one core of this machine, ten times a checkpoint's write rate, so hashing the
bytes on their way to disk costs a small share of a save (BENCHMARKS.md). It
is not cryptographic, and need not be: it is there to catch corruption (a
flipped bit, a torn or half-copied file, a bad upload), which keeps the size a
size check relies on; tampering is a different threat, and loading is
weights-only (weights.py) for that one. 128 bits make an accidental match of a
damaged file impossible in practice.

Nothing here imports torch: `gobig verify` checks a run without it.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

HASH = "xxh3_128"
CHUNK = 8 << 20


def new_hasher() -> Any:
    return xxhash.xxh3_128()


class HashingFile:
    """A writable binary file that hashes and counts every byte on its way out.

    `torch.save` accepts any object with `write` (and `flush`), so the bytes
    are hashed as they are serialized, never read back.

    Args:
        raw: the file the bytes go to (opened "wb").
    """

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.hasher = new_hasher()
        self.size = 0
        self.hash_s = 0.0  # time spent hashing (a few hundred writes per file: cheap to time)
        # torch's serializer turns an exception from `write` into its own
        # RuntimeError ("unexpected pos ..."), which hides the errno: keep it.
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            written = self.raw.write(data)
        except OSError as exn:
            self.error = exn
            raise
        t0 = time.perf_counter()
        self.hasher.update(data)
        self.hash_s += time.perf_counter() - t0
        self.size += memoryview(data).nbytes
        return written

    def flush(self) -> None:
        try:
            self.raw.flush()
        except OSError as exn:
            self.error = exn
            raise

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()


def hash_local_file(path: str | Path) -> str:
    """The checksum of a file on local disk (hashed straight from the page cache)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        hasher = new_hasher()
        if size == 0:
            return hasher.hexdigest()
        if hasattr(mmap, "MAP_POPULATE"):  # Linux: map and fault in every page at once
            flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
            with mmap.mmap(fh.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as mapped:
                hasher.update(mapped)  # no copy into Python: 3x faster than read()
            return hasher.hexdigest()
        return hash_stream(fh)


def hash_stream(stream: Any) -> str:
    """The checksum of everything left in a readable binary stream (e.g. a remote file)."""
    hasher = new_hasher()
    while chunk := stream.read(CHUNK):
        hasher.update(chunk)
    return hasher.hexdigest()
