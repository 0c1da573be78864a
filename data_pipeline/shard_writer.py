"""Deterministic WebDataset shard writing shared by the text and image writers.

Same samples in, byte-identical `.tar` files out: `webdataset.TarWriter` with a fixed
mtime, owner and mode (no pax extended headers), members in key order, and shard
boundaries that depend only on the sample sizes.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from array import array
from pathlib import Path

import numpy as np
import webdataset as wds

from data_pipeline.errors import DataError
from data_pipeline.manifest import MANIFEST_FILE, ShardInfo

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(text: str | int) -> int:
    """Bytes in a size such as `64MB`, `512KiB`, `100000` (decimal units; `i` = binary)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise DataError(f"bad size {text!r} (examples: 64MB, 512KiB, 100000)")
    unit = (m.group(2) or "").lower().rstrip("b")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise DataError(f"size must be positive, got {text!r}")
    return value


def prepare_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Create `out_dir`; refuse to mix with an earlier dataset unless `overwrite`."""
    out = Path(out_dir)
    if (out / MANIFEST_FILE).exists():
        if not overwrite:
            raise DataError(
                f"{out} already holds a dataset (manifest.json); "
                "choose another --out or pass --overwrite"
            )
        for old in list(out.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar")) + [out / MANIFEST_FILE]:
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


class SplitShardWriter:
    """Writes one split's samples into `<split>-NNNNNN.tar` shards of about `max_bytes`.

    Args:
        out_dir: output directory.
        split: split name, the shard name prefix.
        max_bytes: start a new shard once the current one holds this many archive bytes.
        tokenizer: tokenizer hash recorded per shard (text shards).
    """

    def __init__(self, out_dir: Path, split: str, max_bytes: int, tokenizer: str = "") -> None:
        self.out_dir = out_dir
        self.split = split
        self.max_bytes = max_bytes
        self.tokenizer = tokenizer
        self.shards: list[ShardInfo] = []
        self._writer: wds.TarWriter | None = None
        self._name = ""
        self._samples = self._tokens = self._payload = 0

    def write(self, sample: dict[str, bytes | str], tokens: int = 0) -> None:
        """Add one sample (`__key__` plus bytes per extension)."""
        if self._writer is None or self._payload >= self.max_bytes:
            self._finish()
            self._name = f"{self.split}-{len(self.shards):06d}.tar"
            # an int mtime: a float one costs a pax header (1 kB) per member
            self._writer = wds.TarWriter(
                str(self.out_dir / self._name),
                mtime=0,
                user="gobig",
                group="gobig",
                mode=0o444,
                encoder=False,
            )
        self._writer.write(sample)
        # count archive bytes (a 512-byte header per member, data padded to 512)
        self._payload += sum(
            512 + -(-len(v) // 512) * 512 for k, v in sample.items() if not k.startswith("_")
        )
        self._samples += 1
        self._tokens += tokens

    def _finish(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        path = self.out_dir / self._name
        data = path.read_bytes()
        self.shards.append(
            ShardInfo(
                name=self._name,
                split=self.split,
                samples=self._samples,
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                tokens=self._tokens,
                tokenizer=self.tokenizer,
            )
        )
        self._writer = None
        self._samples = self._tokens = self._payload = 0

    def close(self) -> list[ShardInfo]:
        """Finish the last shard; the list of shards written."""
        self._finish()
        return self.shards


class SplitWriter:
    """One split's records, written in a seeded random order (or as they come).

    The writers see their input in its own order (ImageFolder class by class, files in
    name order); a loader's shuffle buffer cannot mix a shard that holds one class. With
    `shuffle_seed` set, records are spooled to a temporary file beside the shards as they
    arrive and written out on `close()` in a permutation seeded by (seed, split): the
    input is read once, in order, and memory holds only offsets. Keys are the position
    in the written order, so key order is shard order.

    Args:
        out_dir: output directory (also holds the spool while writing).
        split: split name, the shard name prefix.
        max_bytes: bytes per shard (see `SplitShardWriter`).
        key_digits: width of the zero-padded `__key__`.
        tokenizer: tokenizer hash recorded per shard (text shards).
        shuffle_seed: seed of the written order; None keeps the arrival order.
    """

    def __init__(
        self, out_dir: Path, split: str, max_bytes: int, key_digits: int, tokenizer: str = "",
        shuffle_seed: int | None = None,
    ) -> None:  # fmt: skip
        self.shards = SplitShardWriter(out_dir, split, max_bytes, tokenizer)
        self.key_digits = key_digits
        self.shuffle_seed = shuffle_seed
        self._written = 0
        self._spool = None
        if shuffle_seed is not None:
            # closed in close(); unnamed, so nothing is left behind if writing fails
            self._spool = tempfile.TemporaryFile(dir=out_dir, prefix=f".{split}-spool-")  # noqa: SIM115
            self._fields: list[tuple[str, ...]] = []  # distinct field layouts
            self._layout = array("l")  # per record: index into _fields
            self._tokens = array("q")
            self._lengths = array("q")  # every record's field lengths, concatenated
            self._first = array("q")  # per record: its first entry in _lengths
            self._offset = array("q")  # per record: where its bytes start in the spool
            self._end = 0

    def add(self, fields: dict[str, bytes], tokens: int = 0) -> None:
        """Add one record: bytes per extension (no `__key__`: the writer assigns it)."""
        if self._spool is None:
            self._write(fields, tokens)
            return
        layout = tuple(fields)
        if layout not in self._fields:
            self._fields.append(layout)
        self._layout.append(self._fields.index(layout))
        self._tokens.append(tokens)
        self._first.append(len(self._lengths))
        self._offset.append(self._end)
        for value in fields.values():
            self._spool.write(value)
            self._lengths.append(len(value))
            self._end += len(value)

    def close(self) -> list[ShardInfo]:
        """Write out the spooled records (when shuffling); the shards written."""
        if self._spool is not None:
            self._spool.flush()
            fd = self._spool.fileno()
            split = self.shards.split.encode()
            rng = np.random.default_rng([self.shuffle_seed, _SPLIT_SALT, *split])
            for i in rng.permutation(len(self._offset)):
                names = self._fields[self._layout[i]]
                first = self._first[i]
                fields, pos = {}, self._offset[i]
                for k, name in enumerate(names):
                    length = self._lengths[first + k]
                    fields[name] = os.pread(fd, length, pos)
                    pos += length
                self._write(fields, self._tokens[i])
            self._spool.close()
            self._spool = None
        return self.shards.close()

    def _write(self, fields: dict[str, bytes], tokens: int) -> None:
        key = f"{self._written:0{self.key_digits}d}"
        self._written += 1
        self.shards.write({"__key__": key, **fields}, tokens=tokens)


def seeded_ranks(n: int, seed: int) -> np.ndarray:
    """Each item's position in a seeded random order of `n` items (a permutation's
    inverse): the order that validation items are drawn from."""
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.random.default_rng([seed, _VAL_SALT]).permutation(n)] = np.arange(n)
    return ranks


# Salts keep the order of the written records and the choice of validation items apart.
_SPLIT_SALT, _VAL_SALT = 11, 12
