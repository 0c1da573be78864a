"""Plan a run before starting it: memory per device, what fits, and what it costs.

`make_plan(config, PlanRequest(...))` gives a `Plan` (train/plan/schema.py);
`render_plan` prints it; `gobig plan` and `gobig train --dry-run` are its commands
(train/plan/command.py). The formulas and their sources are in docs/plan.md.

The public names load on first use (PEP 562), as in model/: the activation count
(train/plan/activations.py) needs no torch, and importing this package must not
bring it in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from train.plan.build import PlanRequest, make_plan
    from train.plan.errors import PlanError
    from train.plan.report import render_plan
    from train.plan.schema import Plan

# public name -> the module that defines it
_SOURCES = {
    "Plan": "train.plan.schema",
    "PlanError": "train.plan.errors",
    "PlanRequest": "train.plan.build",
    "make_plan": "train.plan.build",
    "render_plan": "train.plan.report",
}

__all__ = ["Plan", "PlanError", "PlanRequest", "make_plan", "render_plan"]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
