"""Errors the gobig command reports as one line (exit status 2)."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The Ray cluster could not be reached or refused a request."""
