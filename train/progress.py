"""How far a run has come: the counters a checkpoint saves and a resume restores,
and the console's estimate of the time left."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Progress:
    """Optimizer steps taken and units (tokens or images, by family) trained on."""

    step: int = 0
    units: int = 0


class StepClock:
    """Wall time per step, smoothed, for the console's ETA.

    Measured between the train records (`tick` at each), so the evaluations,
    checkpoints and data waits between them count: the estimate is of when the
    run ends, not of the optimizer steps alone. Every step of a window weighs in
    as in an exponential moving average of `smoothing` per step: a window of many
    steps moves the estimate more than a window of one.

    Args:
        smoothing: the weight of one new step's time.
        clock: seconds, monotonic (a test's own clock).
    """

    def __init__(self, smoothing: float = 0.2, clock: Callable[[], float] = time.monotonic):
        self.smoothing = smoothing
        self.clock = clock
        self.seconds_per_step: float | None = None
        self._last: tuple[int, float] | None = None  # (step, time) of the previous tick

    def tick(self, step: int, step_time_s: float | None = None) -> float | None:
        """`step` is reached now; returns the smoothed seconds per step.

        Args:
            step: the step just logged.
            step_time_s: the window's own time per step, used when there is no
                earlier tick to measure from (the first record, or after a rewind).
        """
        now = self.clock()
        last, self._last = self._last, (step, now)
        if last is None or step <= last[0]:
            sample, steps = step_time_s, 1
        else:
            sample, steps = (now - last[1]) / (step - last[0]), step - last[0]
        if sample is None:
            return self.seconds_per_step
        if self.seconds_per_step is None:
            self.seconds_per_step = sample
        else:
            weight = 1.0 - (1.0 - self.smoothing) ** steps
            self.seconds_per_step += weight * (sample - self.seconds_per_step)
        return self.seconds_per_step

    def eta_s(self, step: int, max_steps: int) -> float | None:
        """Seconds until `max_steps` at the smoothed rate (None before the first tick)."""
        if self.seconds_per_step is None:
            return None
        return max(0, max_steps - step) * self.seconds_per_step


def format_duration(seconds: float) -> str:
    """A short human duration: 0.4s, 45s, 3m05s, 2h07m, 1d04h."""
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"
