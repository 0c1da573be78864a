"""What a translation model writes, at every evaluation: its BLEU and a few translations.

At each "eval" record of the seq2seq family the model translates a fixed set of
`train.eval_bleu_sentences` validation pairs, evenly spread over the validation
split as the loader reads it unshuffled (by length within each block: short and
long sentences alike), read at the start; the same set at every evaluation, and
whatever the world size or seed. Beam search decodes them as `decode`
says; the corpus BLEU (sacreBLEU) of the detokenized translations against the
detokenized targets joins the eval record as `val_bleu` (the console's eval
line, metrics.jsonl, W&B), and the first `logging.sample_translations` go to a
"samples" record (the source as the prompt, the translation as the text, the
reference beside them): a console line each, metrics.jsonl and a W&B table.

Decoding runs on the unwrapped module in eval mode and draws nothing at random:
the run's losses and random state are untouched. Every rank takes part, so all
stay inside the evaluation's time allowance: under ZeRO-3 each forward gathers
the weights collectively and every rank decodes every batch alike; otherwise
each rank decodes every world_size-th batch and rank 0 gathers the ids (the
batches are the same whatever the world size, and so are the translations).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from train.callbacks.base import Callback
from train.config.schema import DecodeConfig

READ_BATCH = 256  # pairs a batch while the validation pairs are read
MAX_READ = 100_000  # validation pairs read at most (the set spreads over these)


class TranslationsCallback(Callback):
    """Args:
    sentences: validation pairs translated at each evaluation.
    shown: of which this many are logged with their translation.
    decode: the decoding settings.
    """

    def __init__(self, sentences: int, shown: int, decode: DecodeConfig):
        self.sentences, self.shown, self.decode = sentences, shown, decode
        self.pairs: list[tuple[list[int], list[int]]] = []

    def on_train_start(self, trainer: Any) -> None:
        self.pairs = validation_set(trainer.val_loader.loader, self.sentences)

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        if record["kind"] != "eval" or not self.pairs:
            return
        from train.translate import corpus_bleu, translate_ids

        tok, dist = trainer.val_loader.loader.tokenizer, trainer.dist
        model = trainer.engine.module.model
        sources = [source for source, _ in self.pairs]
        alike = trainer.config.zero.stage == 3  # every forward is a collective
        part = (0, 1) if alike else (dist.rank, dist.world_size)
        ids = translate_ids(model, sources, self.decode, tok, part=part)
        if not alike:
            ids = _gather(ids, dist.device)
        if not dist.is_main:
            return
        hypotheses = [tok.decode(row) for row in ids]
        references = [tok.decode(ref) for _, ref in self.pairs]
        record["val_bleu"] = corpus_bleu(hypotheses, references)
        shown = [
            {"prompt": tok.decode(_text_ids(source, tok)), "text": hyp, "reference": ref}
            for source, hyp, ref in zip(sources, hypotheses, references, strict=True)
        ][: self.shown]
        if shown:
            trainer.record({"kind": "samples", "step": record["step"], "samples": shown})


def validation_set(val_loader: Any, n: int) -> list[tuple[list[int], list[int]]]:
    """The (source ids, reference ids) of the `n` pairs a run translates at its
    evaluations: spread over the split `val_loader` reads, read unshuffled by one rank.

    Args:
        val_loader: a rank's validation loader (any rank, any world size).
        n: pairs wanted.
    """
    from data_pipeline import StreamingLoader
    from train.translate import sentence_pairs

    whole = dataclasses.replace(
        val_loader.config, rank=0, world_size=1, shuffle=False, infinite=False,
        num_workers=0, max_tokens=None, batch_size=READ_BATCH,
    )  # fmt: skip
    pairs = sentence_pairs(StreamingLoader(whole), val_loader.tokenizer, MAX_READ)
    return spread(pairs, n)


def spread(items: list[Any], n: int) -> list[Any]:
    """`n` of `items` evenly spaced over them, in their order (all if there are fewer)."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def _text_ids(source: list[int], tok: Any) -> list[int]:
    return [t for t in source if t not in (tok.eos_id, tok.bos_id, tok.pad_id)]


def _gather(ids: list[list[int] | None], device: torch.device) -> list[list[int]]:
    """Every rank's share of the translations, whole, on every rank: one sum of a
    [sentences, longest + 1] tensor whose rows are the ids + 1 on the rank that
    decoded them and 0 elsewhere (ids, not pickled objects, cross the wire)."""
    import torch.distributed as torch_dist

    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return [row or [] for row in ids]
    longest = torch.tensor([max((len(r) for r in ids if r), default=0)], device=device)
    torch_dist.all_reduce(longest, op=torch_dist.ReduceOp.MAX)
    table = torch.zeros((len(ids), int(longest) + 1), dtype=torch.long, device=device)
    for i, row in enumerate(ids):
        if row is not None:
            table[i, 0] = len(row) + 1  # a row of its own, even an empty translation
            table[i, 1 : len(row) + 1] = torch.tensor(row, dtype=torch.long) + 1
    torch_dist.all_reduce(table)
    rows = table.cpu().tolist()
    return [[t - 1 for t in row[1 : row[0]]] for row in rows]
