"""`gobig eval`: a trained model's metrics over a whole dataset split.

    gobig eval RUN_OR_CHECKPOINT_OR_EXPORT --data SOURCE [--split val|train]
        [--batch-size N] [--max-batches N] [--json FILE] [--device DEV]

The metrics are the family's, as in training's evaluations but over every
sample of the split once: loss and perplexity (GPT), masked-token accuracy
(BERT), top-1 accuracy (ViT). SOURCE is anything `data.source` takes (a
dataset directory, a manifest, shard URLs). A progress bar goes to stderr; the
result is one line on stdout and, with --json, a JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
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
    if (path / exports.CONFIG_FILE).is_file() and (path / exports.WEIGHTS_FILE).is_file():
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
    family = family_of(model.config.family)
    options = {**family.loader_options(config), **family.val_loader_options()}
    loader = build_loader(
        family.name, source, split=split, batch_size=batch_size, seed=config.train.seed,
        shuffle=False, infinite=False, **options,
    )  # fmt: skip
    made_with = getattr(getattr(loader, "tokenizer", None), "hash", None)
    if tokenizer_hash and made_with and made_with != tokenizer_hash:
        raise EvalError(
            f"{source} is tokenized with {made_with}, but the model was trained with "
            f"tokenizer {tokenizer_hash}"
        )
    family.check_fits_data(config, loader)
    total = loader.batches_per_epoch()
    if max_batches is not None:
        total = min(total, max_batches)
    from tqdm import tqdm

    batches = tqdm(loader, total=total, desc="eval", unit="batch", file=sys.stderr)
    metrics = evaluate(TrainingModule(model).to(device), batches, family, total, device)
    if not metrics:
        raise EvalError(f"{source}: split {split!r} holds no samples to evaluate")
    return {
        "model": str(path), "data": source, "split": split, "batches": total,
        **{name.removeprefix("val_"): value for name, value in metrics.items()},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """`gobig eval ...`; exit 2 with one line on bad input."""
    parser = argparse.ArgumentParser(prog="gobig eval", description=__doc__.splitlines()[0])
    parser.add_argument("path", metavar="RUN_OR_CHECKPOINT_OR_EXPORT")
    parser.add_argument("--data", required=True, metavar="SOURCE")
    parser.add_argument("--split", default="val", choices=["val", "train"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result")
    parser.add_argument("--device", default=None, help="default: the accelerator, else cpu")
    ns = parser.parse_args(argv)
    device = (
        torch.device(ns.device)
        if ns.device
        else (torch.accelerator.current_accelerator() or torch.device("cpu"))
    )
    try:
        if ns.batch_size < 1 or (ns.max_batches is not None and ns.max_batches < 1):
            raise EvalError("--batch-size and --max-batches must be >= 1")
        result = evaluate_dataset(
            Path(ns.path), ns.data, ns.split, ns.batch_size, ns.max_batches, device
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
