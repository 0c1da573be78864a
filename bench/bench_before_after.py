"""Throughput of one training command on two revisions of gobig, interleaved.

    .venv/bin/python bench/bench_before_after.py --before REV [--rounds 3] [--steps 300]
        [--config configs/shakespeare-char.yaml] [--out bench/results/before_after.md]

Checks REV out into a temporary git worktree and runs, alternately (before, after,
before, after, ...), the same command in each tree with this venv's Python:

    python -m train CONFIG train.max_steps=STEPS train.log_every=STEPS/6 \
        train.eval_every=100000 train.checkpoint_every=100000 logging.wandb.mode=disabled

(data paths made absolute, so both trees read the same prepared data). Throughput is
tokens/s over every logging window after the first (warm-up), from each run's own
metrics.jsonl; the ratio after / before is taken per round (the machine is shared and
noisy, so neighbouring runs are compared), and the median reported. For
configs/shakespeare-char.yaml the data is prepared first as bench_shakespeare.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report import write_report  # noqa: E402  (bench/ is the script's folder)
from _train_runs import PYTHON, load_line, machine_line, steady_rate  # noqa: E402
from bench_shakespeare import prepare  # noqa: E402

TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def check_tree(tree: Path) -> None:
    """The `train` package a run in `tree` imports must be that tree's (not the venv's)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    found = subprocess.run(
        [PYTHON, "-c", "import train, sys; sys.stdout.write(train.__file__)"],
        cwd=tree, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"bench_before_after: error: {tree} imports train from {found}")


def run(tree: Path, config: str, steps: int) -> dict:
    """One run of the command in `tree`; its steady tokens/s and wall time."""
    log_every = max(1, steps // 6)
    with tempfile.TemporaryDirectory(prefix="gobig-bench-") as tmp:
        cmd = [
            PYTHON, "-m", "train", str(ROOT / config), f"train.max_steps={steps}",
            f"train.log_every={log_every}", "train.eval_every=100000",
            "train.checkpoint_every=100000", "logging.wandb.mode=disabled",
            f"data.source={ROOT / 'data' / 'shakespeare-char'}", f"run.dir={tmp}",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(tree)}
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{tree}: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        metrics = next(Path(tmp).rglob("metrics.jsonl"))
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    train = [r for r in records if r["kind"] == "train"]
    tokens_per_s, _ = steady_rate(train)
    return {"tokens_per_s": tokens_per_s, "wall_s": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--config", default="configs/shakespeare-char.yaml")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "before_after.md"))
    args = parser.parse_args()
    command = "python bench/bench_before_after.py " + " ".join(sys.argv[1:])
    prepare(TEXT)
    before_rev = subprocess.run(
        ["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    after_rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="gobig-before-") as tmp:
        old = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.before],
                       cwd=ROOT, check=True)  # fmt: skip
        try:
            check_tree(old)
            check_tree(ROOT)
            for rnd in range(args.rounds):
                b = run(old, args.config, args.steps)
                a = run(ROOT, args.config, args.steps)
                rows.append((b, a))
                print(
                    f"round {rnd + 1}: before {b['tokens_per_s']:,.0f} tok/s, "
                    f"after {a['tokens_per_s']:,.0f} tok/s, "
                    f"ratio {a['tokens_per_s'] / b['tokens_per_s']:.3f}",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT)
    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for b, a in rows]
    lines = [
        "# Throughput before and after, interleaved",
        "",
        f"Command: `{command}`; before = `{before_rev}`, after = `{after_rev}`"
        + (" plus uncommitted changes" if dirty else "")
        + f". Each run: `python -m train {args.config} train.max_steps={args.steps} ...`",
        "(no eval, no checkpoint, no W&B); tokens/s after the first logging window.",
        "",
        f"Machine: {machine_line()}. Load: {load_line()}.",
        "",
        "| round | before tok/s | after tok/s | after / before |",
        "| ---: | ---: | ---: | ---: |",
        *[
            f"| {i + 1} | {b['tokens_per_s']:,.0f} | {a['tokens_per_s']:,.0f} | {r:.3f} |"
            for i, ((b, a), r) in enumerate(zip(rows, ratios, strict=True))
        ],
        "",
        f"**Median after / before: {statistics.median(ratios):.3f}** "
        f"(range {min(ratios):.3f} to {max(ratios):.3f}).",
    ]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
