"""`model.init_from`: a new run starts from the weights of another (fine-tuning).

The source is a run directory (its newest complete checkpoint), one checkpoint
of any world size and ZeRO stage, a `gobig export` directory (either format),
or a Hugging Face transformers GPT-2, BERT or ViT directory. Tensors are
matched by name and shape: a matching tensor is loaded, one the model has but
the source lacks (or holds in another shape: a classification head for another
number of labels, a longer position table) keeps its fresh initialisation, and
one only the source has is dropped; rank 0 prints the three once. Only weights
move: the optimizer state, the schedule and the data position start fresh.

The weights go into the whole model before DeepSpeed partitions it, so every
ZeRO stage takes them the same way. A run that resumes from its own checkpoint
never reads the source again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from train import export as exports


@dataclass
class InitReport:
    """What `load_initial_weights` did."""

    source: Path
    loaded: list[str]
    new: list[str]
    dropped: list[str]

    def line(self) -> str:
        def names(keys: list[str]) -> str:
            return f" ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})" if keys else ""

        return (
            f"init_from {self.source}: loaded {len(self.loaded)} tensors, newly initialised "
            f"{len(self.new)}{names(self.new)}, dropped {len(self.dropped)}{names(self.dropped)}"
        )


def _source_model(path: Path) -> tuple[nn.Module, Path]:
    if exports.is_export(path):
        return exports.load_exported(path), path
    ckpt = exports.resolve_checkpoint(path)
    return exports.consolidated_model(ckpt)[0], ckpt


def load_initial_weights(model: nn.Module, path: str | Path) -> InitReport:
    """Copy the tensors of `path` that fit `model` into it.

    Args:
        model: the freshly built gobig model (not yet wrapped by DeepSpeed).
        path: a run, checkpoint or export directory.
    """
    source_model, source = _source_model(Path(path))
    if source_model.config.family != model.config.family:
        raise exports.ExportError(
            f"model.init_from {source}: holds a {source_model.config.family} model, "
            f"this run trains a {model.config.family} model"
        )
    for field in ("norm", "activation"):
        # Same names and shapes, another function: loading would silently be wrong.
        theirs, ours = getattr(source_model.config, field), getattr(model.config, field)
        if theirs != ours:
            raise exports.ExportError(
                f"model.init_from {source}: its model has model.{field}={theirs}, "
                f"this run's has model.{field}={ours}; set model.{field}={theirs}"
            )
    have, want = source_model.state_dict(), model.state_dict()
    matched = {k: v for k, v in have.items() if k in want and want[k].shape == v.shape}
    if not matched:
        raise exports.ExportError(
            f"model.init_from {source}: no tensor matches this model in name and shape"
        )
    model.load_state_dict(matched, strict=False)
    return InitReport(
        source=source,
        loaded=sorted(matched),
        new=sorted(k for k in want if k not in matched),
        dropped=sorted(k for k in have if k not in matched),
    )
