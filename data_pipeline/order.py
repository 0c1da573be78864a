"""The global order of one epoch's records, a pure function of (seed, epoch, shard list).

1. Shards are permuted by a generator seeded with (seed, epoch) (when shuffling).
2. Their records, concatenated, form the epoch's *stream*; position p is a record.
3. The stream is cut into blocks of `block` records, and each block is permuted by a
   generator seeded with (seed, epoch, block number). This is the sample buffer: unlike a
   reservoir buffer it can be rebuilt from any position, which is what exact resume needs.

The record at *document index* d is therefore: block d // block, slot d % block of that
block's permutation. `RecordStream.iter_from(d)` reads only from the start of d's block
(shards before it are never opened). A shard that fails under `on_error="skip"` leaves
holes: its unread positions are absent, the positions of all other records stay put.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipeline.errors import ShardError
from data_pipeline.reader import read_shard

# Salts keep the generators of different decisions independent.
SALT_SHARDS, SALT_DOCS, SALT_ITEMS, SALT_TRANSFORM, SALT_GROUPS = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class ShardRef:
    """A shard to read: where it is, its name, and its sample count from the manifest."""

    url: str
    name: str
    samples: int
    tokens: int = 0


def rng_for(seed: int, epoch: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on its arguments (never on rank or worker)."""
    return np.random.default_rng([seed, epoch, *keys])


def shard_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Indices of the shards in the order epoch `epoch` reads them."""
    if not shuffle:
        return list(range(n))
    return [int(i) for i in rng_for(seed, epoch, SALT_SHARDS).permutation(n)]


def block_permutation(
    n: int, seed: int, epoch: int, salt: int, block: int, shuffle: bool
) -> np.ndarray:
    """Permutation of the `n` slots of block number `block`."""
    if not shuffle:
        return np.arange(n)
    return rng_for(seed, epoch, salt, block).permutation(n)


class RecordStream:
    """One epoch's records in global order, decoded, readable from any document index.

    Args:
        shards: the split's shards (manifest order).
        seed, epoch: what the order is a function of.
        shuffle: permute the shards (False: manifest order).
        block: records per shuffle block (the sample buffer).
        decode: raw webdataset sample -> record; ValueError marks the record bad.
        on_error: "raise" or "skip" (skip: warn via `report`, leave holes).
        report: called with the ShardError of every skipped shard.
        permute_samples: permute records within blocks (default: as `shuffle`).
    """

    def __init__(
        self,
        shards: list[ShardRef],
        seed: int,
        epoch: int,
        shuffle: bool,
        block: int,
        decode: Callable[[dict], Any],
        on_error: str,
        report: Callable[[int, ShardError], None],
        permute_samples: bool | None = None,
    ) -> None:
        self.order = [shards[i] for i in shard_order(len(shards), seed, epoch, shuffle)]
        self.starts = [0]
        for s in self.order:
            self.starts.append(self.starts[-1] + s.samples)
        self.total = self.starts[-1]
        self.seed, self.epoch, self.block = seed, epoch, block
        self.permute = shuffle if permute_samples is None else permute_samples
        self.decode, self.on_error, self.report = decode, on_error, report

    def iter_from(self, doc: int) -> Iterator[tuple[int, Any]]:
        """(document index, record) for every present record from index `doc` on."""
        b = doc // self.block
        pos = b * self.block
        positions = self._sequential(pos)
        while pos < self.total:
            n = min(self.block, self.total - pos)
            chunk = [next(positions) for _ in range(n)]
            perm = block_permutation(n, self.seed, self.epoch, SALT_DOCS, b, self.permute)
            for slot in range(max(0, doc - pos), n):
                record = chunk[perm[slot]]
                if record is not None:
                    yield pos + slot, record
            pos += n
            b += 1

    def _sequential(self, pos: int) -> Iterator[Any]:
        """Records (None for holes) in stream order from stream position `pos`."""
        k = bisect.bisect_right(self.starts, pos) - 1
        skip = pos - self.starts[k]
        for shard in self.order[k:]:
            yield from self._read(shard, skip)
            skip = 0

    def _read(self, shard: ShardRef, skip: int) -> Iterator[Any]:
        n = 0
        try:
            for sample in read_shard(shard.url, shard.name, shard.samples):
                if n >= skip:
                    try:
                        record = self.decode(sample)
                    except ValueError as exn:
                        raise ShardError(
                            shard.name, f"sample {sample.get('__key__')}: {exn}"
                        ) from None
                    yield record
                n += 1
        except ShardError as err:
            if self.on_error != "skip":
                raise
            self.report(self.epoch, err)
            # holes keep every later record at its manifest position
            for _ in range(max(n, skip), shard.samples):
                yield None
