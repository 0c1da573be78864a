"""How long an attempt takes to reach its first training step, phase by phase.

Every attempt (a fresh start, a resume, a restart after a failure) appends one
`"kind": "startup"` record to metrics.jsonl once its first step is done:
seconds spent before `fit` (process start, imports, Ray worker set-up),
joining the process group, building the data loaders, building the model and
DeepSpeed engine, loading the checkpoint, and the first step itself; plus the
wall-clock times of the start of `fit` and of the first step, so a driver or
benchmark can relate them to its own clock (a kill, a launch).
"""

from __future__ import annotations

import os
import time
from typing import Any


def _process_start_time() -> float:
    try:
        import psutil

        return psutil.Process(os.getpid()).create_time()
    except Exception:  # psutil missing or restricted: the phase is simply unknown
        return time.time()


class StartupTimeline:
    """Marks phases as they end; `record()` is the startup line for metrics.jsonl."""

    def __init__(self) -> None:
        self.fit_started_at = time.time()
        self.before_fit_s = self.fit_started_at - _process_start_time()
        self._last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """End `phase` now (its duration is the time since the previous mark)."""
        now = time.perf_counter()
        self.phases[phase] = now - self._last
        self._last = now

    def record(self, step: int) -> dict[str, Any]:
        """The startup record of an attempt that started at `step`."""
        return {
            "kind": "startup",
            "step": step,
            "process_to_fit_s": self.before_fit_s,
            **{f"{name}_s": seconds for name, seconds in self.phases.items()},
            "fit_started_at": self.fit_started_at,
            "first_step_at": time.time(),
        }


def format_startup_line(record: dict[str, Any]) -> str:
    phases = [
        f"{key.removesuffix('_s').replace('_', ' ')} {value:.1f}s"
        for key, value in record.items()
        if key.endswith("_s")
    ]
    return f"startup @ step {record['step']}: " + " | ".join(phases)
