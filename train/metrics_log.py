"""Where metrics go: one compact console line (rates and the time left) and metrics.jsonl.

Record kinds: "train", "eval" and "samples" (W&B gets these too, through its callback),
"startup" (per-attempt start-up timings), "checkpoint" (how long each save
took and how long training waited for it) and "anomaly" (an update the
anomaly guard withheld, and why; these stay when a resume or a rollback
rewinds the log: they happened).

Only rank 0 writes. After a resume, lines past the checkpoint's step are
dropped from metrics.jsonl (they are recomputed); `wandb_last_step` keeps
the highest step an earlier attempt logged, which W&B already has and is
not sent again, so no step is ever logged twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train.progress import StepClock, format_duration
from train.startup import format_startup_line

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl (empty if none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_train_line(record: dict[str, Any], max_steps: int, eta_s: float | None = None) -> str:
    unit = "img" if "samples_per_s" in record and "tokens_per_s" not in record else "tok"
    rate = record.get("tokens_per_s", record.get("samples_per_s", 0.0))
    parts = [
        f"step {record['step']:>6}/{max_steps}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.2e}",
        f"gnorm {record['grad_norm']:.2f}",
        f"{rate / 1000:.1f}k {unit}/s" if rate >= 1000 else f"{rate:.1f} {unit}/s",
        f"mfu {100 * record['mfu']:.1f}%",
        f"data {100 * record['data_wait_frac']:.1f}%",
        f"{1000 * record['step_time_s']:.0f} ms/step",
        f"mem {record['peak_mem_gb']:.2f} GB",
    ]
    if eta_s is not None:
        parts.append(f"eta {format_duration(eta_s)}")
    return " | ".join(parts)


def format_eval_line(record: dict[str, Any]) -> str:
    shown = [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val_")]
    return f"eval @ step {record['step']}: " + " | ".join(shown)


def format_anomaly_line(record: dict[str, Any]) -> str:
    return (
        f"anomaly @ step {record['step']}: {record['reason']} (loss {record['loss']}, "
        f"grad norm {record['grad_norm']}); update withheld, policy {record['policy']}"
    )


def format_checkpoint_line(record: dict[str, Any]) -> str:
    how = "in the background" if record["background"] else "synchronously"
    return (
        f"checkpoint @ step {record['step']}: written {how} in {record['write_s']:.2f} s, "
        f"training waited {record['blocking_s']:.3f} s"
    )


class MetricsLog:
    """Rank 0's sink for training and evaluation records.

    Args:
        run_dir: the run directory holding metrics.jsonl.
        max_steps: for the console line's progress and time left (ETA).
        enabled: False on ranks other than 0.
    """

    def __init__(self, run_dir: Path, max_steps: int, enabled: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.max_steps = max_steps
        self.enabled = enabled
        self.wandb_last_step = -1
        self.clock = StepClock()

    def rewind_to(self, step: int) -> None:
        """Forget records after `step`; W&B keeps what it has and skips up to it."""
        if not self.enabled:
            return
        records = read_metrics(self.path.parent)
        self.wandb_last_step = max((r["step"] for r in records), default=-1)
        self.clock = StepClock()  # the steps since `step` are trained again
        kept = [r for r in records if r["step"] <= step or r["kind"] == "anomaly"]
        if len(kept) != len(records):
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict[str, Any]) -> None:
        """Append `record` (must have `kind` and `step`) and print it."""
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if record["kind"] == "train":
            self.clock.tick(record["step"], record.get("step_time_s"))
            eta = self.clock.eta_s(record["step"], self.max_steps)
            print(format_train_line(record, self.max_steps, eta), flush=True)
        elif record["kind"] == "eval":
            print(format_eval_line(record), flush=True)
        elif record["kind"] == "checkpoint":
            print(format_checkpoint_line(record), flush=True)
        elif record["kind"] == "anomaly":
            print(format_anomaly_line(record), flush=True)
        elif record["kind"] == "samples":
            for sample in record["samples"]:
                print(f"sample @ step {record['step']}: {sample['text']!r}", flush=True)
        else:
            print(format_startup_line(record), flush=True)
