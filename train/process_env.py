"""Environment variables every training process starts with (a user's own value wins).

THP_MEM_ALLOC_ENABLE=1 makes PyTorch's CPU allocator back tensors of 2 MB and more
with transparent huge pages. Page tables shrink by up to 512x for model and optimizer
state, which makes the fork of an asynchronous checkpoint about twice as fast and
fresh allocations (loading a checkpoint, activations) cheaper; BENCHMARKS.md has the
figures. It has to be in the environment before torch allocates anything, so it is
set for Ray workers through their runtime environment and by `python -m train`
before it imports torch.
"""

from __future__ import annotations

import os

DEFAULTS = {"THP_MEM_ALLOC_ENABLE": "1"}


def training_env() -> dict[str, str]:
    """The variables, with any value this process already has kept."""
    return {name: os.environ.get(name, value) for name, value in DEFAULTS.items()}


def apply_training_env() -> None:
    """Set the variables in this process (before torch is imported)."""
    os.environ.update(training_env())
