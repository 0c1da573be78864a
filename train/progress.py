"""How far a run has come: the counters a checkpoint saves and a resume restores."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    """Optimizer steps taken and units (tokens or images, by family) trained on."""

    step: int = 0
    units: int = 0
