"""`gobig generate`: sample text from a trained model, printed as it is made.

    gobig generate RUN_OR_CHECKPOINT_OR_EXPORT --prompt TEXT [--prompt-file FILE]
        [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]
        [--seed S] [--num-samples N] [--device DEV]

The path is a run directory (its newest complete checkpoint), one checkpoint
(of any world size and ZeRO stage: the weights are consolidated without
DeepSpeed), or a `gobig export` directory. Text is decoded with the tokenizer
the run trained with: the export's copy, or the run's configured tokenizer,
checked against the hash its checkpoint recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipeline.errors import GobigError, report_error
from train import export as exports
from train.families import family_of


class GenerateError(GobigError, ValueError):
    """A model or prompt that cannot be sampled from; str() is one line."""


@dataclass
class TrainedModel:
    """A model ready for inference and how its text is encoded."""

    model: nn.Module
    tokenizer: Any  # data_pipeline.Tokenizer
    source: Path  # the checkpoint or export it came from


def load_trained(path: Path, device: torch.device) -> TrainedModel:
    """The model and tokenizer of a run, a checkpoint or an export of a model that
    generates text (GPT), in eval mode.

    Args:
        path: a run directory, a checkpoint directory or an export directory.
        device: where the model runs.
    """
    trained = load_model(path, device)
    family = family_of(trained.model.config)
    if not family.generates_text:
        raise GenerateError(
            f"{trained.source}: a {family.name} model ({family.task}) does not generate text; "
            "gobig generate samples from gpt models"
        )
    return trained


def load_model(path: Path, device: torch.device) -> TrainedModel:
    """The model (of any family) and tokenizer of a run, a checkpoint or an export, in
    eval mode: what the commands that run a trained model (generate, translate) load.

    Args:
        path: a run directory (its newest complete checkpoint), a checkpoint directory
            (any world size and ZeRO stage) or an export directory.
        device: where the model runs.
    """
    # DeepSpeed, imported by the checkpoint readers, logs to stdout (its handler
    # keeps the stream it found): stdout is for the command's output alone.
    with contextlib.redirect_stdout(sys.stderr):
        return _load(Path(path), device)


def _load(path: Path, device: torch.device) -> TrainedModel:
    from data_pipeline import Tokenizer

    if exports.is_export(path):
        model, source = exports.load_exported(path), path
        tokenizer_path = path / exports.TOKENIZER_FILE
        if not tokenizer_path.is_file():
            raise GenerateError(f"{path}: the export holds no {exports.TOKENIZER_FILE}")
    else:
        source = exports.resolve_checkpoint(path)
        model, meta = exports.consolidated_model(source)
        tokenizer_path = exports.run_tokenizer(meta, source)
        if tokenizer_path is None:
            raise GenerateError(f"{source}: the run recorded no tokenizer")
    return TrainedModel(model.to(device).eval(), Tokenizer(tokenizer_path), source)


def sample_text(
    trained: TrainedModel,
    prompt: str,
    max_new_tokens: int,
    *,
    seed: int = 0,
    out: Any = None,
    **sampling: Any,
) -> str:
    """Continue `prompt`, writing the text to `out` as each token arrives.

    Args:
        trained: from `load_trained`.
        prompt: the text to continue (printed first).
        max_new_tokens: at most this many tokens; an end-of-text token stops early.
        seed: the random source of the sampling.
        out: where the text goes (default stdout; flushed after every token).
        **sampling: temperature, top_k, top_p (see model.sampling).

    Returns:
        The whole text, prompt included.
    """
    out = out or sys.stdout
    tok = trained.tokenizer
    ids = tok.encode(prompt)
    if not ids:
        raise GenerateError("the prompt is empty: give --prompt TEXT or --prompt-file FILE")
    device = next(trained.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    prompt_ids = torch.tensor([ids], dtype=torch.long, device=device)
    shown = tok.decode(ids)
    out.write(shown)
    out.flush()
    steps = trained.model.stream(prompt_ids, max_new_tokens, generator=generator, **sampling)
    for token, _ in steps:
        if int(token) == tok.eos_id:
            break
        ids.append(int(token))
        text = tok.decode(ids)
        # A byte piece may be the first half of a character (it decodes as U+FFFD
        # until the rest comes), and a piece can change how the text before it
        # decodes: print only text that is settled.
        if text.startswith(shown) and not text.endswith("\ufffd"):
            out.write(text[len(shown) :])
            out.flush()
            shown = text
    text = tok.decode(ids)
    out.write((text[len(shown) :] if text.startswith(shown) else "") + "\n")
    out.flush()
    return text


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.accelerator.current_accelerator() or torch.device("cpu")


def _check_sampling(ns: argparse.Namespace) -> None:
    # Before the model loads and the prompt is printed.
    if ns.max_new_tokens < 0 or ns.num_samples < 1:
        raise GenerateError("--max-new-tokens must be >= 0 and --num-samples >= 1")
    if ns.temperature < 0 or (ns.top_k is not None and ns.top_k < 1):
        raise GenerateError("--temperature must be >= 0 and --top-k >= 1")
    if ns.top_p is not None and not 0 < ns.top_p <= 1:
        raise GenerateError(f"--top-p must be in (0, 1], got {ns.top_p:g}")


def main(argv: list[str] | None = None) -> int:
    """`gobig generate ...`; exit 2 with one line on bad input."""
    parser = argparse.ArgumentParser(prog="gobig generate", description=__doc__.splitlines()[0])
    parser.add_argument("path", metavar="RUN_OR_CHECKPOINT_OR_EXPORT")
    parser.add_argument("--prompt", default=None, help="text to continue")
    parser.add_argument("--prompt-file", default=None, help="read the prompt from a file")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--device", default=None, help="default: the accelerator, else cpu")
    ns = parser.parse_args(argv)
    try:
        prompt = _prompt(ns)
        _check_sampling(ns)
        trained = load_trained(Path(ns.path), _device(ns.device))
        for i in range(ns.num_samples):
            if ns.num_samples > 1:
                print(f"--- sample {i + 1} of {ns.num_samples} (seed {ns.seed + i})", flush=True)
            sample_text(
                trained, prompt, ns.max_new_tokens, seed=ns.seed + i,
                temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p,
            )  # fmt: skip
    except GobigError as exc:  # GenerateError, ExportError, CheckpointError, DataError
        return report_error("gobig", exc)
    except ValueError as exc:  # non-finite logits (model.sampling)
        return report_error("gobig", GenerateError(f"{ns.path}: {exc}"))
    return 0


def _prompt(ns: argparse.Namespace) -> str:
    if ns.prompt_file is not None:
        try:
            return Path(ns.prompt_file).read_text()
        except OSError as exc:
            why = f"cannot read the prompt ({exc.strerror})"
            raise GenerateError(f"{ns.prompt_file}: {why}") from None
    if ns.prompt is None:
        raise GenerateError("give --prompt TEXT or --prompt-file FILE")
    return ns.prompt


if __name__ == "__main__":
    sys.exit(main())
