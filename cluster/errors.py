"""Errors the gobig command reports as one line (exit status 2).

Both derive from `GobigError` (data_pipeline/errors.py), the one base of
user-facing errors, so `gobig`'s single boundary in cluster/cli.py prints them.
"""

from __future__ import annotations

from data_pipeline.errors import GobigError


class ClusterError(GobigError, RuntimeError):
    """The Ray cluster could not be reached or refused a request."""


class UsageError(GobigError, ValueError):
    """Bad command-line input; printed as one line, exit code 2."""
