"""Parallel text -> translation shards (`gobig data pairs`).

Input: a source file and a target file, one sentence per line, line i of the target the
translation of line i of the source (Multi30k's `train.en` / `train.de`). Lines are split
at "\\n" only (a stray form feed or U+2028 inside a sentence must not shift every later
pair) and surrounding whitespace is dropped. A line that is blank on both sides is
skipped; files of different line counts, or a line blank on one side only, are a
`DataError` naming `file:line`. Every line is checked in a first pass, before the output
directory is touched, so bad input leaves nothing behind; the manifest is written last,
as always.

Each sample holds `source.npy` and `target.npy`: the ids of the two sentences (no special
tokens; the loader adds EOS and BOS), in the text writer's dtype, tokenized with one
tokenizer (a joint vocabulary, so source and target may share one embedding). The
tokenizer must have <pad>, <s> and </s> ids, as every `gobig data tokenizer` model has.
The manifest is a text manifest of kind "pairs"; `tokens` counts both sides.

Validation: `val_source`/`val_target` (every pair of those files, e.g. Multi30k's
val.en/val.de), or a share `val_fraction` of the training pairs chosen as the other
writers do (the "spread" rule over a seeded random order, text_shards.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import DataError
from data_pipeline.manifest import Manifest
from data_pipeline.seq2seq_batches import check_pair_tokenizer
from data_pipeline.shard_writer import parse_size, prepare_out_dir, seeded_ranks
from data_pipeline.text_shards import TextRecord, is_val, text_manifest, write_records
from data_pipeline.tokenizer import Tokenizer


@dataclass(frozen=True)
class SentencePair:
    """One pair of line-aligned files, with its line number."""

    line: int
    source: str
    target: str


def iter_pairs(source: str | Path, target: str | Path) -> Iterator[SentencePair]:
    """The pairs of two line-aligned files (see the module docstring); DataError names
    `file:line` where they disagree.

    Args:
        source: the source-language file.
        target: the target-language file, line i translating line i of `source`.
    """
    paths = (Path(source), Path(target))
    for path in paths:
        if not path.is_file():
            raise DataError(f"input not found: {path}")
    try:
        # newline="\n": lines end at "\n" only (universal newlines would also split "\r")
        files = [p.open(encoding="utf-8", errors="replace", newline="\n") for p in paths]
    except OSError as exn:
        raise DataError(f"cannot read input {exn.filename}: {exn.strerror}") from None
    with files[0], files[1]:
        for n, (src, tgt) in enumerate(itertools.zip_longest(*files), 1):
            if src is None or tgt is None:
                longer, shorter = paths if tgt is None else paths[::-1]
                lines = f"{n - 1} line" + ("" if n == 2 else "s")
                raise DataError(
                    f"{longer}:{n}: no matching line in {shorter}, which has {lines} "
                    "(source and target must have the same number of lines)"
                )
            src, tgt = src.strip(), tgt.strip()
            if not src and not tgt:
                continue
            if not src or not tgt:
                empty, other = paths if not src else paths[::-1]
                raise DataError(
                    f"{empty}:{n}: empty sentence, but line {n} of {other} is not "
                    "(every sentence needs its translation)"
                )
            yield SentencePair(n, src, tgt)


def check_pair_inputs(files: list[tuple[str | Path, str | Path]]) -> list[int]:
    """Check every line of each (source, target) file pair (first pass); the number of
    sentence pairs of each."""
    counts = []
    for source, target in files:
        count = sum(1 for _ in iter_pairs(source, target))
        if count == 0:
            raise DataError(f"{source} and {target} hold no sentence pairs")
        counts.append(count)
    return counts


def write_pair_shards(
    source: str | Path,
    target: str | Path,
    tokenizer: str | Path,
    out_dir: str | Path,
    *,
    val_source: str | Path | None = None,
    val_target: str | Path | None = None,
    val_fraction: float = 0.0,
    shard_size: str | int = "64MB",
    shuffle_seed: int | None = 0,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Manifest:
    """Tokenize line-aligned sentence pairs into `train-NNNNNN.tar` / `val-NNNNNN.tar`
    translation shards plus manifest (see the module docstring).

    Args:
        source, target: the training files, one sentence per line, line-aligned.
        tokenizer: sentencepiece model file (or its directory), one for both languages.
        out_dir: output directory; also receives a copy of the tokenizer.
        val_source, val_target: files whose every pair is validation (both or neither;
            not with `val_fraction`).
        val_fraction: share of the training pairs for "val", in [0, 1).
        shard_size: bytes per shard (archive size), e.g. "64MB".
        shuffle_seed: seed of the validation choice and the written order; None: input
            order.
        workers: tokenizer processes (default: all cores).
        progress: show a tqdm bar on stderr.
        overwrite: replace an earlier dataset in `out_dir`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if (val_source is None) != (val_target is None):
        raise DataError("give --val-source and --val-target together")
    if val_source is not None and val_fraction > 0:
        raise DataError("give --val-source/--val-target or --val-fraction, not both")
    if shuffle_seed is not None and shuffle_seed < 0:
        raise DataError(f"--seed must be >= 0, got {shuffle_seed}")
    tok = Tokenizer(tokenizer)
    check_pair_tokenizer(tok)
    max_bytes = parse_size(shard_size)
    files = [(source, target)] + ([(val_source, val_target)] if val_source is not None else [])
    count = check_pair_inputs(files)[0]
    ranks = None
    if shuffle_seed is not None and val_fraction > 0:
        ranks = seeded_ranks(count, shuffle_seed)

    def records() -> Iterator[TextRecord]:
        for position, pair in enumerate(iter_pairs(source, target)):
            at = position if ranks is None else int(ranks[position])
            split = "val" if is_val(at, val_fraction) else "train"
            yield split, {"source": pair.source, "target": pair.target}, {}
        if val_source is not None:
            for pair in iter_pairs(val_source, val_target):
                yield "val", {"source": pair.source, "target": pair.target}, {}

    out = prepare_out_dir(out_dir, overwrite)
    shards = write_records(
        out, tok, records(), max_bytes, shuffle_seed, workers, progress, unit="pair"
    )
    manifest = text_manifest(tok, shards, shuffle_seed, kind="pairs")
    manifest.save(out)
    return manifest
