"""`gobig eval`: a trained model's metrics over a whole dataset split.

    gobig eval RUN_OR_CHECKPOINT_OR_EXPORT --data SOURCE [--split val|train]
        [--batch-size N] [--max-batches N] [--json FILE] [--device DEV]
    gobig eval RUN_OR_CHECKPOINT --as-logged [--data SOURCE] [--json FILE] [--device DEV]

The metrics are the family's, as in training's evaluations but over every
sample of the split once: loss and perplexity (GPT), masked-token accuracy
(BERT), top-1 accuracy (ViT), unsmoothed loss, perplexity and corpus BLEU of
its beam-search translations (seq2seq, decoded as the run's `decode` says).
SOURCE is anything `data.source` takes (a dataset directory, a manifest, shard
URLs). A progress bar goes to stderr; the result is one line on stdout and,
with --json, a JSON file.

--as-logged reproduces the evaluation the run logged at the checkpoint's step
instead: the run evaluates a fixed subset, not the whole split (each rank
takes `train.eval_batches` micro batches of its validation loader, shuffled
with the run's seed and restarted at every evaluation; the sums are added over
ranks, then divided). For every rank of the world size the checkpoint was
written by, the loader that rank built (train/data.py) is built again and the
same batches are evaluated, in the run's `train.precision`; SOURCE defaults to
the run's own validation source. The figures equal the logged `val_*` ones up
to the order of the additions (a seq2seq run's `val_bleu` is not recomputed). A
run directory means its newest complete checkpoint; an export keeps no record
of the run and cannot be used.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import torch

from data_pipeline.errors import GobigError, report_error
from train import export as exports
from train.config.load import build_config
from train.config.schema import ExperimentConfig


class EvalError(GobigError, ValueError):
    """A model and a dataset that cannot be evaluated together; str() is one line."""


def load_for_eval(path: Path) -> tuple[torch.nn.Module, ExperimentConfig, str | None]:
    """(model, the run's config, the tokenizer hash it trained with) of a run,
    checkpoint or export. An export's config is the defaults with its model."""
    if exports.is_export(path):
        model = exports.load_exported(path)
        config = build_config({"model": model.config.to_dict()}, str(path))
        tokenizer = path / exports.TOKENIZER_FILE
        from data_pipeline.tokenizer import file_hash

        return model, config, file_hash(tokenizer) if tokenizer.is_file() else None
    ckpt = exports.resolve_checkpoint(path)
    model, meta = exports.consolidated_model(ckpt)
    return model, build_config(meta["config"], str(ckpt)), meta.get("tokenizer_hash")


def evaluate_dataset(
    path: Path,
    source: str,
    split: str = "val",
    batch_size: int = 8,
    max_batches: int | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """The family's metrics of the model at `path` over one pass of `source`'s split."""
    from data_pipeline import build_loader
    from train.evaluate import evaluate
    from train.families import family_of
    from train.task import TrainingModule

    device = device or torch.device("cpu")
    # DeepSpeed, imported by the checkpoint readers, logs to stdout: keep the result alone.
    with contextlib.redirect_stdout(sys.stderr):
        model, config, tokenizer_hash = load_for_eval(Path(path))
    family = family_of(model.config)
    options = {**family.loader_options(config), **family.val_loader_options()}
    loader = build_loader(
        family.name, source, split=split, batch_size=batch_size, seed=config.train.seed,
        shuffle=False, infinite=False, **options,
    )  # fmt: skip
    _check_tokenizer(loader, tokenizer_hash, source)
    family.check_fits_data(config, loader)
    total = loader.batches_per_epoch()
    if max_batches is not None:
        total = min(total, max_batches)
    from tqdm import tqdm

    start = loader.state_dict()
    batches = tqdm(loader, total=total, desc="eval", unit="batch", file=sys.stderr)
    metrics = evaluate(TrainingModule(model).to(device), batches, family, total, device)
    if not metrics:
        raise EvalError(f"{source}: split {split!r} holds no samples to evaluate")
    if family.translates:  # the same batches again: BLEU of what the model writes
        from train.translate import bleu_of_batches

        loader.load_state_dict(start)
        batches = itertools.islice(loader, total)
        metrics["val_bleu"] = bleu_of_batches(model, batches, config.decode, loader.tokenizer)
    return {
        "model": str(path), "data": source, "split": split, "batches": total,
        **{name.removeprefix("val_"): value for name, value in metrics.items()},
    }  # fmt: skip


def evaluate_as_logged(
    path: Path, source: str | None = None, device: torch.device | None = None
) -> dict[str, Any]:
    """The evaluation the run logged at the step of the checkpoint at `path`.

    Args:
        path: a run directory (its newest complete checkpoint) or one checkpoint.
        source: the validation data (default: the run's `data.val_source`, else
            its `data.source`).
        device: where the model runs (default: cpu).
    """
    from train.evaluate import evaluate
    from train.families import family_of
    from train.task import TrainingModule

    path, device = Path(path), device or torch.device("cpu")
    if exports.is_export(path):
        raise EvalError(
            f"{path}: --as-logged needs a run or checkpoint; an export keeps no record of "
            "the run's world size and data"
        )
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's logs: keep stdout for the result
        ckpt = exports.resolve_checkpoint(path)
        model, meta = exports.consolidated_model(ckpt)
        config = build_config(meta["config"], str(ckpt))
        if source is not None:  # both: the train loader built beside it must resolve too
            data = config.data.model_copy(update={"source": source, "val_source": source})
            config = config.model_copy(update={"data": data})
        world = int(meta.get("world_size", 1))
        val_sets = [run_val_batches(config, rank, world) for rank in range(world)]
    source = config.data.val_source or config.data.source
    _check_tokenizer(val_sets[0].loader, meta.get("tokenizer_hash"), source)
    family, cfg, step = family_of(config.model), config.train, int(meta["step"])
    if step % cfg.eval_every and step != cfg.max_steps:
        print(f"gobig: note: the run logged no evaluation at step {step} "
              f"(train.eval_every={cfg.eval_every}); these are the figures it would have",
              file=sys.stderr)  # fmt: skip
    # Every rank's batches in one pass: evaluate() adds the sums over all of them and
    # divides once, as the run's all-reduce of the per-rank sums does.
    per_rank = [itertools.islice(v, cfg.eval_batches) for v in val_sets]
    cap = sum(min(cfg.eval_batches, v.loader.batches_per_epoch()) for v in val_sets)
    from tqdm import tqdm

    bar = tqdm(itertools.chain.from_iterable(per_rank), total=cap, desc="eval", unit="batch",
               file=sys.stderr)  # fmt: skip
    module = TrainingModule(model.to(RUN_DTYPES[cfg.precision])).to(device)  # as the engine
    metrics = evaluate(module, bar, family, world * cfg.eval_batches, device)
    if not metrics:
        raise EvalError(f"{source}: the validation split holds no samples to evaluate")
    return {
        "model": str(path), "checkpoint": str(ckpt), "step": step, "data": source,
        "split": "val", "ranks": world, "batches": bar.n,
        **{name.removeprefix("val_"): value for name, value in metrics.items()},
    }  # fmt: skip


# The weights the engine evaluates with: DeepSpeed casts the module to the run's precision.
RUN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run_val_batches(config: ExperimentConfig, rank: int, world_size: int) -> Any:
    """Rank `rank`'s validation batches as the run built them (train/data.py's
    `EvalBatches`: restarted at every iteration). Its train loader is built too, unused."""
    from train.data import build_loaders
    from train.distributed import DistInfo

    dist = DistInfo(rank=rank, world_size=world_size, local_rank=0, device=torch.device("cpu"))
    return build_loaders(config, dist)[1]


def _check_tokenizer(loader: Any, tokenizer_hash: str | None, source: str) -> None:
    made_with = getattr(getattr(loader, "tokenizer", None), "hash", None)
    if tokenizer_hash and made_with and made_with != tokenizer_hash:
        raise EvalError(
            f"{source} is tokenized with {made_with}, but the model was trained with "
            f"tokenizer {tokenizer_hash}"
        )


def main(argv: list[str] | None = None) -> int:
    """`gobig eval ...`; exit 2 with one line on bad input."""
    parser = argparse.ArgumentParser(prog="gobig eval", description=__doc__.splitlines()[0])
    parser.add_argument("path", metavar="RUN_OR_CHECKPOINT_OR_EXPORT")
    parser.add_argument(
        "--data", default=None, metavar="SOURCE",
        help="the data (required, except with --as-logged: the run's validation source)",
    )  # fmt: skip
    parser.add_argument("--split", default=None, choices=["val", "train"], help="default: val")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8")
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument(
        "--as-logged", action="store_true",
        help="reproduce the evaluation the run logged at the checkpoint's step: every rank's "
        "train.eval_batches batches of the run's shuffled validation loader, at the run's "
        "micro batch size and precision (not with --split, --batch-size, --max-batches)",
    )  # fmt: skip
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result")
    parser.add_argument("--device", default=None, help="default: the accelerator, else cpu")
    ns = parser.parse_args(argv)
    device = (
        torch.device(ns.device)
        if ns.device
        else (torch.accelerator.current_accelerator() or torch.device("cpu"))
    )
    try:
        if ns.as_logged:
            given = [f"--{k.replace('_', '-')}" for k in ("split", "batch_size", "max_batches")
                     if getattr(ns, k) is not None]  # fmt: skip
            if given:
                raise EvalError(f"--as-logged takes the run's own settings: drop {given[0]}")
            result = evaluate_as_logged(Path(ns.path), ns.data, device)
        else:
            if ns.data is None:
                raise EvalError("--data SOURCE is required (unless --as-logged)")
            batch_size = 8 if ns.batch_size is None else ns.batch_size
            if batch_size < 1 or (ns.max_batches is not None and ns.max_batches < 1):
                raise EvalError("--batch-size and --max-batches must be >= 1")
            result = evaluate_dataset(
                Path(ns.path), ns.data, ns.split or "val", batch_size, ns.max_batches, device
            )
    except GobigError as exc:  # EvalError, ExportError, DataError, ShardError, ConfigError
        return report_error("gobig", exc)
    shown = {k: v for k, v in result.items() if isinstance(v, float)}
    print(" | ".join(f"{k} {v:.4f}" for k, v in shown.items()) + f" | {result['batches']} batches")
    if ns.json:
        Path(ns.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
