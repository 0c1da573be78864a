"""Translation batches (loader kind "seq2seq") from parallel-text shards.

An item is one *batch* of sentence pairs (`gobig data pairs`), not one pair: pairs are
batched by length, as in "Attention Is All You Need" (sec. 5.1: "sentence pairs were
batched together by approximate sequence length"). Within each block of the epoch's
record order (order.py: `shuffle_buffer` pairs, seeded), the pairs are sorted by length
(the longer side's, then both sides') and cut greedily into batches: with `max_tokens`,
a batch takes pairs while its padded size, pairs x (longest source + longest target),
stays within `max_tokens`; without it, `batch_size` pairs. The block's batches are then
permuted (seeded), so long and short batches alternate. A larger block pads less (on
Multi30k: 13% of the tokens with blocks of 1024 pairs, 9% with 4096; 51% unsorted).
A batch is a pure function of (seed, epoch, block), so the loader's order, split across
ranks and state work unchanged, one item per batch: global batch k goes to rank
k % world_size, and the state is the position of a batch in that order
(items.GroupedItems).

Rows (each side cut to `seq_len - 1` ids, so every row fits a model of `seq_len`
positions): `input_ids` [B, S] source + EOS and `attention_mask` [B, S] (1 = token);
`decoder_input_ids` [B, T] BOS + target; `labels` [B, T] target + EOS. Both sides are
right-padded to the batch's longest row with the pad id, labels with -100.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.reader import parse_tokens
from data_pipeline.tokenizer import Tokenizer

SEQ2SEQ_KIND = "seq2seq"
IGNORE = -100  # label of a padding position

Pair = tuple[np.ndarray, np.ndarray]  # (source ids, target ids), no special tokens


@dataclass(frozen=True)
class Seq2SeqSpec:
    """What translation batches need to know.

    `max_tokens` 0: batches of `batch_size` pairs; else padded tokens per batch."""

    bos_id: int
    eos_id: int
    pad_id: int
    batch_size: int
    max_tokens: int = 0


def check_pair_tokenizer(tok: Tokenizer) -> None:
    """DataError unless `tok` has the pad, BOS and EOS ids translation batches use."""
    missing = [name for name in ("pad", "bos", "eos") if tok.special_ids[name] < 0]
    if missing:
        raise DataError(
            f"tokenizer {tok.path} has no {'/'.join(missing)} id; translation needs pad, BOS "
            "and EOS (every `gobig data tokenizer` model has them: 0, 2, 3)"
        )


def decode_pair(sample: dict, dtype: np.dtype, vocab_size: int, seq_len: int) -> Pair:
    """(source ids, target ids) of a pair sample, checked, each cut to `seq_len - 1`."""
    sides = []
    for name in ("source.npy", "target.npy"):
        if name not in sample:
            raise ValueError(f"no {name} in sample")
        sides.append(parse_tokens(sample[name], dtype, vocab_size)[: seq_len - 1])
    return sides[0], sides[1]


def bucket_pairs(pairs: list[Pair], spec: Seq2SeqSpec) -> list[list[Pair]]:
    """One block's pairs in batches of similar lengths (see the module docstring)."""
    # By the longer side, then the sum: on Multi30k this pads less than sorting by source
    # then target length (13% vs 23% of a 4096-token batch in blocks of 1024 pairs), as
    # the target's padding counts as much as the source's. Stable: ties keep the block's
    # seeded order.
    lengths = [(len(src), len(tgt)) for src, tgt in pairs]
    order = sorted(range(len(pairs)), key=lambda i: (max(lengths[i]), sum(lengths[i])))
    batches: list[list[Pair]] = []
    batch: list[Pair] = []
    longest_s = longest_t = 0
    for i in order:
        pair = pairs[i]
        s, t = len(pair[0]) + 1, len(pair[1]) + 1  # + EOS, + BOS
        if spec.max_tokens:
            s, t = max(s, longest_s), max(t, longest_t)
            full = (len(batch) + 1) * (s + t) > spec.max_tokens
        else:
            full = len(batch) == spec.batch_size
        if batch and full:
            batches.append(batch)
            batch = []
            s, t = len(pair[0]) + 1, len(pair[1]) + 1
        batch.append(pair)
        longest_s, longest_t = s, t
    if batch:
        batches.append(batch)
    return batches


def seq2seq_batch(pairs: list[Pair], spec: Seq2SeqSpec) -> dict[str, np.ndarray]:
    """{"input_ids", "attention_mask"} [B, S] and {"decoder_input_ids", "labels"} [B, T]
    of a batch of pairs (see the module docstring)."""
    n = len(pairs)
    width_s = max(len(src) for src, _ in pairs) + 1
    width_t = max(len(tgt) for _, tgt in pairs) + 1
    input_ids = np.full((n, width_s), spec.pad_id, dtype=np.int64)
    attention_mask = np.zeros((n, width_s), dtype=np.int64)
    decoder_input_ids = np.full((n, width_t), spec.pad_id, dtype=np.int64)
    labels = np.full((n, width_t), IGNORE, dtype=np.int64)
    for i, (src, tgt) in enumerate(pairs):
        s, t = len(src), len(tgt)
        input_ids[i, :s] = src
        input_ids[i, s] = spec.eos_id
        attention_mask[i, : s + 1] = 1
        decoder_input_ids[i, 0] = spec.bos_id
        decoder_input_ids[i, 1 : t + 1] = tgt
        labels[i, :t] = tgt
        labels[i, t] = spec.eos_id
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
    }


def fixed_batches(records: int, block: int, batch_size: int) -> int:
    """Batches of an epoch of `records` pairs without `max_tokens` (no shard skipped):
    every block of `block` pairs, the last one shorter, is cut into `batch_size` pairs."""
    full, rest = divmod(records, block)
    return full * -(-block // batch_size) + -(-rest // batch_size)
