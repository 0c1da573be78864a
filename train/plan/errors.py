"""The one error of planning: bad planning input, or a run the plan says will not fit."""

from __future__ import annotations

from data_pipeline.errors import GobigError


class PlanError(GobigError, ValueError):
    """Printed as one line by `gobig plan` and `gobig train --dry-run` (exit status 2)."""
