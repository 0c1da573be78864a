"""The batch producer: runs in the loader's process or in each DataLoader worker.

Ownership. Positions k = 0, 1, 2, ... count the global items from where this iteration
started (the loaded state). Rank r of W owns positions k with k % W == r; its j-th item
(j = k // W) goes into its batch j // B; DataLoader worker w of n builds that rank's
batches b with b % n == w. The DataLoader hands worker outputs back round-robin, so the
rank sees its batches in order 0, 1, 2, ... Every producer walks the whole item sequence
(reading every shard, decoding only what it owns), which is why no producer ever waits
for a shard another one holds, whatever the shard count.

State. When rank r has taken c items, every rank has (ranks step together), so all
positions below c * W are consumed. The producer attaches to each batch the cursor of the
item at that position (it looks at most W - 1 items ahead to see it); the loader keeps
the cursor of the last batch it handed out. That cursor names a global item, not a rank
position, so it restores under any world size (elastic) and any worker count.

Epoch ends. Infinite mode (training) flows into the next epoch without a break: no
sample is dropped or repeated and every rank always has a next batch. Finite mode (one
pass, e.g. evaluation) pads the last round with repeats of the first items so every rank
yields ceil(N / W) items and the same number of batches; that pads at most W - 1 items.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from data_pipeline.classify import (
    CLASSIFY_KIND,
    ClassifySpec,
    classify_batch,
    classify_row,
    decode_labelled,
)
from data_pipeline.errors import DataError, ShardError
from data_pipeline.items import GroupedItems, PackedItems, RecordItems, start_cursor
from data_pipeline.order import RecordStream, ShardRef
from data_pipeline.reader import parse_image, parse_tokens
from data_pipeline.seq2seq_batches import (
    SEQ2SEQ_KIND,
    Seq2SeqSpec,
    bucket_pairs,
    decode_pair,
    fixed_batches,
    seq2seq_batch,
)
from data_pipeline.transforms import (
    BertSpec,
    VitSpec,
    bert_batch,
    bert_row,
    gpt_batch,
    transform_rng,
    vit_batch,
    vit_image,
)

DEFAULT_BLOCK = 1024  # records per order block when shuffle_buffer is 0
RECORD_KINDS = ("vit", CLASSIFY_KIND)  # an item is a record (no packing)


@dataclass
class Plan:
    """Everything a producer needs; plain data so it crosses into DataLoader workers."""

    kind: str
    shards: list[ShardRef]
    rank: int
    world_size: int
    batch_size: int
    seq_len: int
    seed: int
    shuffle: bool
    shuffle_buffer: int
    infinite: bool
    on_error: str
    dtype: str = "uint16"
    vocab_size: int = 0
    eos_id: int = 0
    num_classes: int = 0
    bert: BertSpec | None = None
    vit: VitSpec | None = None
    classify: ClassifySpec | None = None
    seq2seq: Seq2SeqSpec | None = None  # its items are whole batches: batch_size is 1

    # -- per-kind pieces ------------------------------------------------------------
    def decoder(self) -> Callable[[dict], Any]:
        """Raw webdataset sample -> record (ValueError when the record is bad)."""
        if self.kind == "vit":

            def decode_image(sample: dict) -> tuple[bytes | np.ndarray, int, str]:
                data, cls = parse_image(sample, self.num_classes)
                return data, cls, str(sample.get("__key__"))

            return decode_image
        dtype = np.dtype(self.dtype).newbyteorder("<")
        if self.kind == CLASSIFY_KIND:

            def decode_labelled_text(sample: dict) -> tuple[np.ndarray, int]:
                return decode_labelled(sample, dtype, self.vocab_size, self.classify.num_classes)

            return decode_labelled_text
        if self.kind == SEQ2SEQ_KIND:

            def decode_sentence_pair(sample: dict) -> tuple[np.ndarray, np.ndarray]:
                return decode_pair(sample, dtype, self.vocab_size, self.seq_len)

            return decode_sentence_pair

        def decode_tokens(sample: dict) -> np.ndarray:
            if "tokens.npy" not in sample:
                raise ValueError("no tokens.npy in sample")
            return parse_tokens(sample["tokens.npy"], dtype, self.vocab_size)

        return decode_tokens

    def items(
        self, epoch: int, report: Callable[[int, ShardError], None]
    ) -> RecordItems | PackedItems | GroupedItems:
        """The item sequence of `epoch`."""
        # shuffle_buffer 0: shard order still shuffled, samples kept in shard order
        block = self.shuffle_buffer or DEFAULT_BLOCK
        permute = self.shuffle and self.shuffle_buffer > 0
        stream = RecordStream(
            self.shards, self.seed, epoch, self.shuffle, block, self.decoder(),
            self.on_error, report, permute_samples=permute,
        )  # fmt: skip
        if self.kind in RECORD_KINDS:
            return RecordItems(stream)
        if self.kind == SEQ2SEQ_KIND:
            spec = self.seq2seq
            return GroupedItems(stream, lambda pairs: bucket_pairs(pairs, spec), permute)
        if self.kind == "gpt":
            length, stride = self.seq_len + 1, self.seq_len
        else:
            length = stride = self.seq_len - (3 if self.bert and self.bert.pairs else 2)
        return PackedItems(stream, length, stride, self.eos_id, block, permute)

    def seq2seq_batches(self, epoch: int) -> int:
        """seq2seq: the global batches of `epoch`. With `max_tokens` they depend on the
        sentence lengths: the epoch's batches are made (the split is read once)."""
        spec = self.seq2seq
        if not spec.max_tokens:
            records = sum(s.samples for s in self.shards)
            return fixed_batches(records, self.shuffle_buffer or DEFAULT_BLOCK, spec.batch_size)
        items = self.items(epoch, lambda _epoch, _err: None)  # skipped shards: as iterated
        return sum(1 for _ in items.iter_from(start_cursor()))

    def row(self, epoch: int, index: int, payload: Any, counters: dict) -> Any:
        """One batch row from an item (random choices a function of (seed, epoch, index)).

        ViT rows are (image, class, epoch, index): augmentation happens per batch."""
        if self.kind in ("gpt", SEQ2SEQ_KIND):  # seq2seq: the item is a batch of pairs
            return payload
        if self.kind == "bert":
            return bert_row(payload, self.bert, transform_rng(self.seed, epoch, index))
        if self.kind == CLASSIFY_KIND:
            return classify_row(payload, self.classify, self.seq_len)
        data, cls, key = payload
        try:
            return vit_image(data, self.vit.image_size), cls, epoch, index
        except (OSError, ValueError, SyntaxError) as exn:
            if self.on_error != "skip" or self.vit.image_size is None:
                raise DataError(f"image sample {key} cannot be decoded: {exn}") from None
            counters["bad_samples"] += 1
            warnings.warn(
                f"image sample {key} cannot be decoded ({exn}); using a blank image", stacklevel=2
            )
            size = self.vit.image_size
            return np.zeros((size, size, 3), dtype=np.uint8), cls, epoch, index

    def collate(self, rows: list) -> dict:
        """Stack rows into the batch dict of this kind."""
        if self.kind == "gpt":
            return gpt_batch(rows)
        if self.kind == "bert":
            return bert_batch(rows, self.bert.pairs)
        if self.kind == CLASSIFY_KIND:
            return classify_batch(rows, self.classify.pad_id)
        if self.kind == SEQ2SEQ_KIND:
            return seq2seq_batch([pair for batch in rows for pair in batch], self.seq2seq)
        return vit_batch(rows, self.vit, self.seed)


class Producer(IterableDataset):
    """Yields (batch or None, meta) pairs; meta carries the state after the batch and the
    skipped-shard events seen since the previous pair. See the module docstring."""

    def __init__(self, plan: Plan, state: dict) -> None:
        super().__init__()
        self.plan = plan
        self.state = state

    def __iter__(self) -> Iterator[tuple[dict | None, dict]]:
        info = get_worker_info()
        if info is None:
            return self._run(0, 1)
        return self._forward_errors(self._run(info.id, info.num_workers))

    @staticmethod
    def _forward_errors(
        pairs: Iterator[tuple[dict | None, dict]],
    ) -> Iterator[tuple[dict | None, dict]]:
        """In a DataLoader worker, hand data errors to the loader as data, so it raises
        the same clean error as without workers (torch would wrap it in a RuntimeError
        with the worker's traceback)."""
        try:
            yield from pairs
        except ShardError as err:
            yield None, {"error": ("shard", err.shard, err.reason)}
        except DataError as err:
            yield None, {"error": ("data", str(err))}

    def _run(self, worker: int, workers: int) -> Iterator[tuple[dict | None, dict]]:
        p = self.plan
        W, r, B = p.world_size, p.rank, p.batch_size
        epoch, cursor = self.state["epoch"], dict(self.state["cursor"])
        counters = {"bad_samples": 0}
        events: list[tuple[int, str, str]] = []

        def report(ep: int, err: ShardError) -> None:
            warnings.warn(f"skipping {err} (data.on_error=skip)", stacklevel=2)
            events.append((ep, err.shard, err.reason))

        def meta(state: dict) -> dict:
            out = {"state": state, "events": list(events), "bad_samples": counters["bad_samples"]}
            events.clear()
            counters["bad_samples"] = 0
            return out

        def owned(pos: int) -> bool:
            return pos % W == r and (pos // W // B) % workers == worker

        k = 0
        rows: list = []
        held, target = None, -1
        while True:
            first: list[tuple[int, Any]] = []
            seen = 0
            for cur, payload in p.items(epoch, report).iter_from(cursor):
                if held is not None and k == target:
                    yield held, meta({"epoch": epoch, "cursor": cur})
                    held = None
                if not p.infinite and len(first) < W:
                    first.append((cur["index"], payload))
                if owned(k):
                    rows.append(p.row(epoch, cur["index"], payload, counters))
                    if len(rows) == B:
                        held, rows, target = p.collate(rows), [], (k // W + 1) * W
                k += 1
                seen += 1
            following = {"epoch": epoch + 1, "cursor": start_cursor()}
            if p.infinite:
                if seen == 0:
                    raise DataError(
                        f"epoch {epoch} of the data has no samples (all shards skipped or empty)"
                    )
                epoch, cursor = epoch + 1, start_cursor()
                continue
            if not first:
                raise DataError(f"no samples left in epoch {epoch} (all shards skipped or empty)")
            if held is not None:
                yield held, meta(following)
            for pos in range(k, -(-k // W) * W):  # pad the last round to a multiple of W
                if owned(pos):
                    index, payload = first[(pos - k) % len(first)]
                    rows.append(p.row(epoch, index, payload, counters))
                    if len(rows) == B:
                        yield p.collate(rows), meta(following)
                        rows = []
            if rows:
                yield p.collate(rows), meta(following)
            yield None, meta(following)
            return
