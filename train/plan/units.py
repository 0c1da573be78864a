"""Numbers in and out of the plan: `300B` tokens, bytes as GB, durations."""

from __future__ import annotations

import math
import re

from train.plan.errors import PlanError

_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)
COUNT_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_count(text: str, option: str) -> int:
    """A positive count such as `300B`, `1.5T`, `40M` or `1000` (K, M, B, T: 1e3 .. 1e12).

    Args:
        text: the value as given.
        option: the option's name, for the error.
    """
    m = _COUNT.match(text)
    if not m:
        raise PlanError(f"{option}: expected a count such as 300B, 1.5T or 40M, got {text!r}")
    number = float(m.group(1)) * COUNT_SUFFIXES[m.group(2).lower()]
    if not math.isfinite(number) or number > 1e30:
        raise PlanError(f"{option}: {text!r} is too large")
    value = round(number)
    if value < 1:
        raise PlanError(f"{option} must be at least 1, got {text!r}")
    return value


def gb(n: float) -> str:
    """Bytes as decimal gigabytes (1 GB = 1e9 bytes, the ZeRO paper's unit), 3 digits."""
    return f"{n / 1e9:.3g} GB" if n < 1e12 else f"{n / 1e9:,.0f} GB"


def count(n: float) -> str:
    """A count with K / M / B / T, 3 digits: 124M, 6.66B."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def duration(seconds: float) -> str:
    """Seconds as the largest sensible unit: 850 ms, 3.2 s, 41 min, 5.5 h, 12.3 days, 2.1 years."""
    for div, unit in (
        (365.25 * 86400, "years"),
        (86400, "days"),
        (3600, "h"),
        (60, "min"),
        (1, "s"),
    ):
        if seconds >= div:
            return f"{seconds / div:.3g} {unit}"
    return f"{seconds * 1e3:.3g} ms"
