"""The closing summary a run prints: final loss, throughput, where things are."""

from __future__ import annotations

from typing import Any


def print_summary(result: Any) -> None:
    """Print a short end-of-run summary (rank 0's FitResult)."""
    if result is None or not result.is_main:
        return
    lines = [
        "",
        "run "
        + ("stopped early" if result.stopped_early else "finished")
        + f" at step {result.step}",
        f"  final loss     {result.final_loss:.4f}" if result.final_loss is not None else "",
        *(f"  {k:<14} {v:.4f}" for k, v in result.eval_metrics.items()),
        f"  throughput     {result.tokens_per_s:,.0f} {result.unit}/s",
        f"  run directory  {result.run_dir}",
        f"  checkpoint     {result.last_checkpoint}",
    ]
    print("\n".join(line for line in lines if line), flush=True)
