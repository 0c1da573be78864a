"""`gobig translate`: a trained seq2seq model's translations, one line per input line.

    gobig translate RUN_OR_CHECKPOINT_OR_EXPORT [--input FILE] [--beam-size K]
        [--length-penalty A] [--max-len-a A] [--max-len-b B] [--batch-size N] [--device DEV]

Reads sentences one per line from FILE (default stdin) and writes each one's
translation on a line of stdout, in order (an empty line translates to an empty
line); a progress bar goes to stderr. Decoding is beam search with the
Transformer paper's settings by default (4 beams, length penalty 0.6, at most
source length + 50 tokens). The path is what `gobig generate` takes: a run
directory, one checkpoint (any world size and ZeRO stage) or an export; text is
encoded and decoded with the run's tokenizer.

The decoding and BLEU helpers here are shared with training's evaluations
(train/callbacks/translations.py) and `gobig eval` (a family that translates).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipeline.errors import GobigError, report_error
from train.config.schema import DecodeConfig


class TranslateError(GobigError, ValueError):
    """A model or input that cannot be translated; str() is one line."""


def encode_source(tokenizer: Any, text: str, seq_len: int) -> list[int]:
    """A sentence's source ids as the translation loader makes them
    (data_pipeline/seq2seq_batches.py): its first seq_len - 1 pieces, then EOS."""
    return [*tokenizer.encode(text)[: seq_len - 1], tokenizer.eos_id]


def strip_target(ids: Iterable[int], tokenizer: Any) -> list[int]:
    """A decoded or reference row's ids up to its EOS (padding and -100 dropped)."""
    out = []
    for token in ids:
        if token == tokenizer.eos_id:
            break
        if token >= 0 and token != tokenizer.pad_id:
            out.append(int(token))
    return out


def sentence_pairs(
    batches: Iterable[dict[str, torch.Tensor]], tokenizer: Any, limit: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """(source ids, reference ids up to EOS) of each row of translation batches, in order.

    Args:
        batches: batches with `input_ids`, `attention_mask` and `labels`.
        tokenizer: its pad and EOS ids.
        limit: stop after this many pairs (None: all).
    """
    pairs: list[tuple[list[int], list[int]]] = []
    for batch in batches:
        rows = zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True)
        for ids, mask, labels in rows:
            pairs.append((ids[mask.bool()].tolist(), strip_target(labels.tolist(), tokenizer)))
            if limit is not None and len(pairs) >= limit:
                return pairs
    return pairs


def decode_order(sources: Sequence[list[int]], batch_size: int) -> list[list[int]]:
    """The sentences (indices) of each decoding batch: longest first, so a batch holds
    sentences of about one length (little padding). A function of the sources and the
    batch size alone: every rank, whatever the world size, makes the same batches."""
    order = sorted(range(len(sources)), key=lambda i: (-len(sources[i]), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def translate_ids(
    model: nn.Module,
    sources: Sequence[list[int]],
    decode: DecodeConfig,
    tokenizer: Any,
    progress: Any = None,
    part: tuple[int, int] = (0, 1),
) -> list[list[int] | None]:
    """Beam-search translations (ids up to EOS) of `sources`, in their order.

    Sources are decoded in the batches of `decode_order`; each is cut to the model's
    max_seq_len. Every caller with the same sources and `part` makes the same forward
    passes (what ZeRO-3 needs).

    Args:
        model: a `Seq2Seq` (the unwrapped module).
        sources: source ids per sentence (`encode_source`).
        decode: beam size, length penalty, length limit, batch size.
        tokenizer: its pad, BOS and EOS ids.
        progress: a tqdm bar to advance by the sentences done (or None).
        part: (i, n): decode only batches i, i + n, i + 2n, ...; the other
            sentences' translations are None.
    """
    device = next(model.parameters()).device
    limit = model.config.max_seq_len
    out: list[list[int] | None] = [None] * len(sources)
    index, parts = part
    for chunk in decode_order(sources, decode.batch_size)[index::parts]:
        rows = [sources[i][:limit] or [tokenizer.eos_id] for i in chunk]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            input_ids[j, : len(row)] = torch.tensor(row)
            mask[j, : len(row)] = 1
        tokens = model.beam_search(
            input_ids.to(device), mask.to(device), beam_size=decode.beam_size,
            length_penalty=decode.length_penalty, max_len_a=decode.max_len_a,
            max_len_b=decode.max_len_b, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
        )  # fmt: skip
        for i, row in zip(chunk, tokens.tolist(), strict=True):
            out[i] = strip_target(row, tokenizer)
        if progress is not None:
            progress.update(len(chunk))
    return out


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacreBLEU's corpus BLEU (13a tokenization, one reference each) of detokenized text."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def bleu_of_batches(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    decode: DecodeConfig,
    tokenizer: Any,
) -> float:
    """Corpus BLEU of the model's translations of every pair in `batches` against their
    targets, both detokenized (a progress bar on stderr).

    Args:
        model: a `Seq2Seq`, on its device.
        batches: translation batches (`input_ids`, `attention_mask`, `labels`).
        decode: the decoding settings.
        tokenizer: the dataset's tokenizer.
    """
    from tqdm import tqdm

    pairs = sentence_pairs(batches, tokenizer)
    with tqdm(total=len(pairs), desc="translate", unit="sent", file=sys.stderr) as bar:
        ids = translate_ids(model, [s for s, _ in pairs], decode, tokenizer, progress=bar)
    hypotheses = [tokenizer.decode(row or []) for row in ids]
    return corpus_bleu(hypotheses, [tokenizer.decode(ref) for _, ref in pairs])


def check_translates(model: nn.Module, source: Any) -> None:
    """TranslateError unless `model`'s family translates (an encoder-decoder)."""
    from train.families import family_of

    family = family_of(model.config)
    if not family.translates:
        raise TranslateError(
            f"{source}: a {family.name} model ({family.task}) does not translate; "
            "gobig translate takes seq2seq models"
        )


def _decode_options(ns: argparse.Namespace) -> DecodeConfig:
    from pydantic import ValidationError

    try:
        return DecodeConfig(
            beam_size=ns.beam_size, length_penalty=ns.length_penalty, max_len_a=ns.max_len_a,
            max_len_b=ns.max_len_b, batch_size=ns.batch_size,
        )  # fmt: skip
    except ValidationError as exc:
        error = exc.errors()[0]
        option = "--" + str(error["loc"][0]).replace("_", "-")
        raise TranslateError(f"{option}: {error['msg']}") from None


def _read_lines(path: str | None) -> list[str]:
    if path is None:
        return sys.stdin.read().splitlines()
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TranslateError(f"{path}: cannot read the input ({exc.strerror})") from None


def translate_lines(trained: Any, lines: list[str], decode: DecodeConfig) -> list[str]:
    """The translation of each line (an empty line's is empty), with a progress bar on
    stderr.

    Args:
        trained: a `train.generate.TrainedModel` of a seq2seq model.
        lines: the sentences.
        decode: the decoding settings.
    """
    from tqdm import tqdm

    tok = trained.tokenizer
    wanted = [i for i, line in enumerate(lines) if line.strip()]
    seq_len = trained.model.config.max_seq_len
    sources = [encode_source(tok, lines[i].strip(), seq_len) for i in wanted]
    with tqdm(total=len(sources), desc="translate", unit="sent", file=sys.stderr) as bar:
        ids = translate_ids(trained.model, sources, decode, tok, progress=bar)
    out = [""] * len(lines)
    for i, row in zip(wanted, ids, strict=True):
        out[i] = tok.decode(row or [])
    return out


def main(argv: list[str] | None = None) -> int:
    """`gobig translate ...`; exit 2 with one line on bad input."""
    paper = DecodeConfig()
    parser = argparse.ArgumentParser(prog="gobig translate", description=__doc__.splitlines()[0])
    parser.add_argument("path", metavar="RUN_OR_CHECKPOINT_OR_EXPORT")
    parser.add_argument("--input", default=None, metavar="FILE", help="default: stdin")
    parser.add_argument("--beam-size", type=int, default=paper.beam_size)
    parser.add_argument("--length-penalty", type=float, default=paper.length_penalty)
    parser.add_argument("--max-len-a", type=float, default=paper.max_len_a,
                        help="at most A x source tokens + B tokens per translation")  # fmt: skip
    parser.add_argument("--max-len-b", type=int, default=paper.max_len_b)
    parser.add_argument("--batch-size", type=int, default=paper.batch_size,
                        help="sentences decoded together")  # fmt: skip
    parser.add_argument("--device", default=None, help="default: the accelerator, else cpu")
    ns = parser.parse_args(argv)
    try:
        from train.generate import load_model

        decode = _decode_options(ns)
        lines = _read_lines(ns.input)
        device = torch.device(ns.device) if ns.device else None
        trained = load_model(Path(ns.path), device or _default_device())
        check_translates(trained.model, trained.source)
        translations = translate_lines(trained, lines, decode)
    except GobigError as exc:  # TranslateError, GenerateError, ExportError, CheckpointError
        return report_error("gobig", exc)
    sys.stdout.write("".join(line + "\n" for line in translations))
    sys.stdout.flush()
    return 0


def _default_device() -> torch.device:
    return torch.accelerator.current_accelerator() or torch.device("cpu")


if __name__ == "__main__":
    sys.exit(main())
