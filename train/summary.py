"""The end-of-run record (RUN_DIR/result.json) and the summary printed from it.

Rank 0 writes the record when `fit` returns; `python -m train` and the Ray
driver both print the same summary from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"


def result_record(result: Any) -> dict[str, Any]:
    """A FitResult as plain JSON-able values."""
    return {
        "step": result.step,
        "final_loss": result.final_loss,
        "throughput": result.throughput,
        "unit": result.unit,
        "stopped_early": result.stopped_early,
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "eval": result.eval_metrics,
    }


def write_result(run_dir: Path, result: Any) -> None:
    (Path(run_dir) / RESULT_FILE).write_text(json.dumps(result_record(result), indent=1))


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    from train.checkpoint.location import is_uri
    from train.checkpoint.storage import RunStorage

    if is_uri(run_dir):  # a URI run: read where it lives (rank 0 uploaded it at the end)
        text = RunStorage(run_dir).read_text(RESULT_FILE)
        return json.loads(text) if text is not None else None
    path = Path(run_dir) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def summary_lines(record: dict[str, Any], run_dir: str | Path) -> list[str]:
    """The closing summary: state, losses, throughput, where the run is."""
    from train.checkpoint.location import join_run_dir

    state = "stopped early" if record["stopped_early"] else "finished"
    lines = [f"gobig: run {state} at step {record['step']}"]
    if record["final_loss"] is not None:
        lines.append(f"  final loss       {record['final_loss']:.4f}")
    lines += [f"  {key:<16} {value:.4f}" for key, value in record["eval"].items()]
    lines += [
        f"  throughput       {record['throughput']:,.0f} {record['unit']}/s",
        f"  run directory    {run_dir}",
        f"  metrics          {join_run_dir(run_dir, 'metrics.jsonl')}",
        f"  checkpoint       {record['last_checkpoint']}",
    ]
    if record["stopped_early"]:
        lines.append(f"  continue with    gobig resume {run_dir}")
    return lines


def print_summary(run_dir: str | Path) -> None:
    """Print the summary of the run in `run_dir` (nothing if it has no result yet)."""
    record = read_result(run_dir)
    if record is not None:
        print("\n".join(summary_lines(record, run_dir)), flush=True)
