"""Deterministic WebDataset shard writing shared by the text and image writers.

Same samples in, byte-identical `.tar` files out: `webdataset.TarWriter` with a fixed
mtime, owner and mode (no pax extended headers), members in key order, and shard
boundaries that depend only on the sample sizes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

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
