"""Make DeepSpeed read its checkpoint files with `torch.load(weights_only=True)`.

DeepSpeed's default checkpoint engine unpickles arbitrary objects, so a
tampered checkpoint could run code on load. gobig swaps in an engine that
only accepts tensors, containers and plain values (plus the few DeepSpeed
types a checkpoint legitimately holds, allow-listed below).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine


def _safe_globals() -> list[Any]:
    import collections

    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [
        collections.OrderedDict,
        LossScaler,
        DynamicLossScaler,
        ZeroStageEnum,
        fragment_address,
    ]


def safe_load(path: str | Path, map_location: Any = None) -> Any:
    """torch.load with weights_only=True, allowing DeepSpeed's checkpoint types."""
    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


class SafeTorchCheckpointEngine(TorchCheckpointEngine):
    """TorchCheckpointEngine whose load refuses pickled code."""

    def load(self, path: str, map_location: Any = None) -> Any:
        return safe_load(path, map_location)


def use_safe_checkpoint_loading(engine: Any) -> None:
    """Replace `engine`'s checkpoint engine by the weights-only one."""
    current = engine.checkpoint_engine
    if type(current) is TorchCheckpointEngine:
        safe = SafeTorchCheckpointEngine.__new__(SafeTorchCheckpointEngine)
        safe.__dict__.update(current.__dict__)
        engine.checkpoint_engine = safe
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None and getattr(optimizer, "checkpoint_engine", None) is current:
            optimizer.checkpoint_engine = safe
