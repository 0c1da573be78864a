"""Start-up and recovery: seconds from `gobig train` to the first step, and from a
worker's SIGKILL to the first new step, broken down by phase.

    .venv/bin/python bench/bench_startup.py [--rounds 2] [--out bench/results/startup.md]

Both come from the `"kind": "startup"` records each attempt writes to metrics.jsonl
(train/startup.py), related to this script's own clock: the launch of the command,
and the moment of the kill. The experiment is configs/gpt-tiny.yaml with 2 workers
at ZeRO-2 on an embedded local Ray, W&B disabled. Start-up is measured with the
built-in corpus already prepared (a cold preparation is timed separately).

Start-up is also measured against a Ray that is already running (`ray start --head`
on 127.0.0.1, then `gobig train --address 127.0.0.1:PORT`), the way to skip Ray's own
start when training repeatedly on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import write_report

from cluster.local_head import local_ray_head

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "configs/gpt-tiny.yaml", "cluster.num_workers=2", "zero.stage=2", "train.log_every=1",
    "train.eval_every=100000", "logging.wandb.mode=disabled",
]  # fmt: skip
PHASES = ("process_to_fit_s", "distributed_init_s", "data_loaders_s", "model_and_engine_s",
          "checkpoint_load_s", "logging_setup_s", "first_step_s")  # fmt: skip


def records(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if r["kind"] == kind]


def breakdown(record: dict, t0: float) -> dict[str, float]:
    """Phases of one attempt, the first being 'until the worker process existed'."""
    process_started = record["fit_started_at"] - record["process_to_fit_s"]
    out = {"launch/detect + Ray start of the worker": process_started - t0}
    out.update({p.removesuffix("_s").replace("_", " "): record[p] for p in PHASES})
    out["total"] = record["first_step_at"] - t0
    return out


def gobig(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "train", *args], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def startup_round(runs: Path, env: dict, name: str, address: str | None = None) -> dict[str, float]:
    t0 = time.time()
    where = ["--address", address] if address else []
    args = [*BASE, "train.max_steps=3", f"run.dir={runs}", f"run.name={name}", *where]
    proc = gobig(args, env)
    if proc.wait(timeout=600) != 0:
        raise SystemExit(f"start-up run {name} failed")
    return breakdown(records(runs / name, "startup")[0], t0)


def recovery_round(runs: Path, env: dict, name: str) -> dict[str, float]:
    run_dir = runs / name
    overrides = ["train.max_steps=80", "train.checkpoint_every=5", "cluster.max_failures=2"]
    proc = gobig([*BASE, *overrides, f"run.dir={runs}", f"run.name={name}"], env)
    deadline = time.time() + 600
    while max((r["step"] for r in records(run_dir, "train")), default=0) < 12:
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit(f"recovery run {name} did not reach step 12")
        time.sleep(0.05)
    pid = json.loads((run_dir / "workers" / "rank_00001.json").read_text())["pid"]
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    if proc.wait(timeout=600) != 0:
        raise SystemExit(f"recovery run {name} failed")
    restarted = [r for r in records(run_dir, "startup") if r["fit_started_at"] > t_kill]
    return breakdown(restarted[0], t_kill)


def median_table(rounds: list[dict[str, float]]) -> list[tuple[str, float]]:
    return [(key, statistics.median(r[key] for r in rounds)) for key in rounds[0]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "startup.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gobig-bench-") as tmp:
        tmp_path = Path(tmp)
        env = {**os.environ, "GOBIG_CACHE": str(tmp_path / "cache")}
        t = time.time()
        from data_pipeline import prepare_source

        os.environ["GOBIG_CACHE"] = env["GOBIG_CACHE"]
        prepare_source("builtin:stdlib")
        cold_prep = time.time() - t
        starts = [startup_round(tmp_path / "runs", env, f"start{i}") for i in range(args.rounds)]
        with local_ray_head() as head:
            time.sleep(10)  # the head's own start, not part of any measured start-up
            reused = [startup_round(tmp_path / "runs", env, f"reuse{i}", head.gcs)
                      for i in range(args.rounds)]  # fmt: skip
        recoveries = [recovery_round(tmp_path / "runs", env, f"kill{i}")
                      for i in range(args.rounds)]  # fmt: skip
    lines = [
        "# Start-up and recovery", "",
        f"Command: `.venv/bin/python bench/bench_startup.py --rounds {args.rounds}`", "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.machine()}, Python "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.1f} at the end.", "",
        f"Cold preparation of builtin:stdlib (tokenizer + shards, once per machine): "
        f"{cold_prep:.1f} s.", "",
        "| phase | start-up: `gobig train` -> first step (s) "
        "| start-up on a running Ray (`--address`) (s) "
        "| recovery: SIGKILL -> first new step (s) |",
        "| --- | ---: | ---: | ---: |",
    ]  # fmt: skip
    start_med, rec_med = dict(median_table(starts)), dict(median_table(recoveries))
    reuse_med = dict(median_table(reused))
    for key in start_med:
        lines.append(
            f"| {key} | {start_med[key]:.1f} | {reuse_med[key]:.1f} | {rec_med[key]:.1f} |"
        )
    lines += ["", f"Medians of {args.rounds} rounds each; every round:", "",
              f"- start-up totals: {[round(r['total'], 1) for r in starts]}",
              f"- start-up totals on a running Ray: {[round(r['total'], 1) for r in reused]}",
              f"- recovery totals: {[round(r['total'], 1) for r in recoveries]}"]  # fmt: skip
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
