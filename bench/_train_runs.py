"""Helpers shared by bench_mfu.py and bench_scaling.py: run gobig's own worker loop
(`python -m train` or `torchrun ... -m train`) in a subprocess and read its metrics.jsonl,
and describe the machine for the results files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

# Keep the runs to the measured training loop: no eval, no checkpoint until the last
# step (both happen after the last window is timed), no W&B.
QUIET = [
    "train.eval_every=100000",
    "train.checkpoint_every=100000",
    "logging.wandb.mode=disabled",
]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text]
        flags = f" ({', '.join(have)})" if have else ""
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU cores, {cpu_model()}{flags}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} cores"


def run_train(
    overrides: list[str], nproc: int = 1, threads: int | None = None, timeout: float = 600
) -> dict:
    """One training run through gobig's worker loop; returns throughput over every
    logging window after the first (the first is warm-up), plus the raw records."""
    with tempfile.TemporaryDirectory(prefix="gobig-bench-") as tmp:
        args = ["configs/gpt-tiny.yaml", *QUIET, *overrides, f"run.dir={tmp}"]
        if nproc == 1:
            cmd = [PYTHON, "-m", "train", *args]
        else:
            cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "train", *args]
        env = dict(os.environ)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        else:
            env.pop("OMP_NUM_THREADS", None)
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        metrics = next(Path(tmp).rglob("metrics.jsonl"))
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    train = [r for r in records if r.get("kind") == "train"]
    measured = train[1:]  # skip the first logging window: warm-up
    tokens_per_s, data_wait_frac = steady_rate(train)
    return {
        "cmd": cmd,
        "tokens_per_s": tokens_per_s,
        "mfu": statistics.fmean(r["mfu"] for r in measured),  # equal-length windows
        "data_wait_frac": data_wait_frac,
        "step_time_s": statistics.fmean(r["step_time_s"] for r in measured),
        "windows": [round(r["tokens_per_s"]) for r in measured],
        "wall_s": wall,
    }


def steady_rate(train: list[dict]) -> tuple[float, float]:
    """(tokens/s, data-wait fraction) over every logging window after the first (warm-up),
    from a run's "train" records in order."""
    prev = train[0]["tokens_seen"]
    tokens = seconds = data = 0.0
    for r in train[1:]:
        n = r["tokens_seen"] - prev
        prev = r["tokens_seen"]
        t = n / r["tokens_per_s"]
        tokens += n
        seconds += t
        data += r["data_wait_frac"] * t
    return tokens / seconds, data / seconds


def read_records(path: Path | None) -> list[dict]:
    """A metrics.jsonl's records ([] while it does not exist yet)."""
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_stamping_evals(cmd: list[str], run_root: Path) -> tuple[Path, list[dict], float]:
    """Run a `gobig train` command whose runs go under `run_root`, watching its
    metrics.jsonl: each evaluation record gets "minutes", the minutes of training
    from the first step to when the record appeared. Returns (metrics.jsonl, its
    records, wall seconds)."""
    start = time.time()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    stamped: dict[int, float] = {}  # eval step -> wall time it was first seen
    metrics: Path | None = None
    while proc.poll() is None:
        time.sleep(2.0)
        metrics = metrics or next(run_root.rglob("metrics.jsonl"), None)
        for r in read_records(metrics):
            if r.get("kind") == "eval":
                stamped.setdefault(r["step"], time.time())
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    metrics = metrics or next(run_root.rglob("metrics.jsonl"))
    records = read_records(metrics)
    first_step_at = next(r["first_step_at"] for r in records if r.get("kind") == "startup")
    for r in records:
        if r.get("kind") == "eval":
            r["minutes"] = (stamped.get(r["step"], time.time()) - first_step_at) / 60
    return metrics, records, wall


def shell(cmd: list[str], threads: int | None = None) -> str:
    short = [c.replace(str(Path(PYTHON).parent) + "/", ".venv/bin/") for c in cmd]
    short = [c if not c.startswith("run.dir=") else "run.dir=$TMP" for c in short]
    prefix = f"OMP_NUM_THREADS={threads} " if threads is not None else ""
    return prefix + " ".join(short)
