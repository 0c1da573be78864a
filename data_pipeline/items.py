"""Items: what one row of a batch is made from, in the epoch's global item order.

- `RecordItems` (ViT, bert-cls): an item is a record (an image); item order = record
  order.
- `PackedItems` (GPT, BERT): documents of the record order, each followed by a separator
  (EOS), form one token stream; item i is the window of `length` tokens starting at token
  i * `stride`. GPT uses length T+1 and stride T (inputs and shifted targets, no token is
  wasted or padded); BERT uses length = stride. Items are shuffled in blocks too, so one
  batch does not hold consecutive windows of one document.
- `GroupedItems` (seq2seq): each order block's records are grouped (into length-bucketed
  batches of sentence pairs); an item is a group, and a block's groups are shuffled.

Every item comes with a *cursor*, a small dict from which `iter_from` restarts exactly at
that item: {"index": i, "doc": d} for records; for packed items {"index": i, "doc": d,
"tok": o, "skip": s} where (d, o) is the document and token offset at which i's item block
starts and s is i's slot in that block; for grouped items d is the first document of i's
order block and s is i's slot among that block's groups. The cursor never mentions ranks
or workers.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from data_pipeline.order import SALT_GROUPS, SALT_ITEMS, RecordStream, block_permutation

Item = tuple[dict, Any]  # (cursor, payload)


def start_cursor() -> dict:
    """The cursor of an epoch's first item."""
    return {"index": 0, "doc": 0, "tok": 0, "skip": 0}


class RecordItems:
    """Items are the records themselves."""

    def __init__(self, stream: RecordStream) -> None:
        self.stream = stream

    def iter_from(self, cursor: dict) -> Iterator[Item]:
        """(cursor, record) from the item at `cursor` on."""
        index = cursor["index"]
        for doc, record in self.stream.iter_from(cursor["doc"]):
            yield {"index": index, "doc": doc, "tok": 0, "skip": 0}, record
            index += 1


class PackedItems:
    """Fixed-length token windows over the stream of documents joined by `sep_id`.

    Args:
        stream: the epoch's documents (records are 1-d token arrays).
        length: tokens per window.
        stride: tokens between window starts (length - stride tokens overlap).
        sep_id: token appended after every document.
        block: windows per shuffle block.
        shuffle: permute windows within blocks.
    """

    def __init__(
        self, stream: RecordStream, length: int, stride: int, sep_id: int, block: int, shuffle: bool
    ) -> None:
        self.stream, self.length, self.stride, self.sep = stream, length, stride, sep_id
        self.block, self.shuffle = block, shuffle

    def iter_from(self, cursor: dict) -> Iterator[Item]:
        """(cursor, window) from the item at `cursor` on."""
        docs = self.stream.iter_from(cursor["doc"])
        block_no = (cursor["index"] - cursor["skip"]) // self.block
        skip = cursor["skip"]
        # Pending tokens and, per pending segment, (doc index, offset of its first token).
        pending = np.empty(0, dtype=np.int64)
        segments: deque[list[int]] = deque()  # [doc, offset in doc, length in pending]
        first_offset = cursor["tok"]
        overlap = self.length - self.stride
        need = self.block * self.stride + overlap
        exhausted = False
        while True:
            parts = [pending]
            have = len(pending)
            while have < need and not exhausted:
                nxt = next(docs, None)
                if nxt is None:
                    exhausted = True
                    break
                doc, ids = nxt
                toks = np.empty(len(ids) + 1, dtype=np.int64)
                toks[:-1] = ids
                toks[-1] = self.sep
                if first_offset:
                    toks = toks[first_offset:]
                segments.append([doc, first_offset, len(toks)])
                first_offset = 0
                parts.append(toks)
                have += len(toks)
            pending = np.concatenate(parts) if len(parts) > 1 else pending
            n = self.block if have >= need else max(0, (have - overlap) // self.stride)
            if n == 0:
                return
            start = {"index": block_no * self.block, "doc": segments[0][0], "tok": segments[0][1]}
            windows = np.lib.stride_tricks.sliding_window_view(
                pending[: n * self.stride + overlap], self.length
            )[:: self.stride]
            perm = block_permutation(
                n, self.stream.seed, self.stream.epoch, SALT_ITEMS, block_no, self.shuffle
            )
            for slot in range(skip, n):
                yield (
                    {
                        "index": start["index"] + slot,
                        "doc": start["doc"],
                        "tok": start["tok"],
                        "skip": slot,
                    },
                    windows[perm[slot]],
                )
            # advance past the block's windows, keeping the segment bookkeeping right
            used = n * self.stride
            pending = pending[used:]
            while used:
                seg = segments[0]
                if seg[2] <= used:
                    used -= seg[2]
                    segments.popleft()
                else:
                    seg[1] += used
                    seg[2] -= used
                    used = 0
            block_no += 1
            skip = 0
            if n < self.block:
                return


class GroupedItems:
    """Items are groups of the records of one order block (e.g. batches of similar
    length): `group` turns a block's present records, in the block's order, into a list
    of groups, a function of those records alone; the groups are then permuted within the
    block. A group never spans two blocks, so any item can be rebuilt from its block.

    Args:
        stream: the epoch's records.
        group: a block's records -> its groups.
        shuffle: permute the groups within each block.
    """

    def __init__(
        self, stream: RecordStream, group: Callable[[list[Any]], list[Any]], shuffle: bool
    ) -> None:
        self.stream, self.group, self.shuffle = stream, group, shuffle

    def iter_from(self, cursor: dict) -> Iterator[Item]:
        """(cursor, group) from the item at `cursor` on."""
        size = self.stream.block
        first_block = cursor["doc"] // size
        index = cursor["index"] - cursor["skip"]
        records = self.stream.iter_from(first_block * size)
        for block_no, members in itertools.groupby(records, key=lambda dr: dr[0] // size):
            groups = self.group([record for _, record in members])
            perm = block_permutation(
                len(groups), self.stream.seed, self.stream.epoch, SALT_GROUPS, block_no,
                self.shuffle,
            )  # fmt: skip
            skip = cursor["skip"] if block_no == first_block else 0
            start = block_no * size
            for slot in range(skip, len(groups)):
                at = {"index": index + slot, "doc": start, "tok": 0, "skip": slot}
                yield at, groups[perm[slot]]
            index += len(groups)
