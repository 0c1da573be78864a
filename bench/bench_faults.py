"""Many faults in one run: does a 2-worker Ray run survive them and end exact?

One `gobig train` of a small GPT on tiny Shakespeare with a seeded schedule
of mixed faults (kills, a kill during a checkpoint write, a hung rank,
non-finite losses under the rollback policy, a corrupted newest checkpoint),
then a straight run given the same skipped samples (the faulty run's guard
record, RUN_DIR/guards.json). Reported: faults injected and survived, steps
recomputed, the wall-clock overhead, and whether every loss matches.

A second measurement (--default-hang) stops one worker with SIGSTOP under the
shipped `train.hang_timeout_s` default and times the hang to training again.

    python bench/bench_faults.py [--faults 8] [--seed 0] [--steps 40] [--default-hang]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import write_report  # noqa: E402
from cluster.check_resume import compare_losses  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
KINDS = ["kill", "kill", "kill_during_save", "hang", "nan_loss", "nan_loss",
         "corrupt_checkpoint", "kill"]  # fmt: skip
HANG_TIMEOUT_S = 15


def prepare_data(root: Path) -> Path:
    from data_pipeline import train_tokenizer, write_text_shards

    tok = train_tokenizer([SHAKESPEARE], root / "tok", vocab_size=512)
    out = root / "shards"
    write_text_shards([str(SHAKESPEARE)], tok.path, out, val_fraction=0.1, shard_size="64KB",
                      doc_split="paragraph", progress=False)  # fmt: skip
    return out


def base_args(data: Path, steps: int) -> list[str]:
    return [
        "model.name=gpt-tiny", "model.n_layer=2", "model.n_head=2", "model.d_model=64",
        "model.max_seq_len=32", "model.vocab_size=512", f"data.source={data}",
        "train.micro_batch_size=4", f"train.max_steps={steps}", "train.log_every=1",
        f"train.eval_every={steps}", "train.checkpoint_every=4", "cluster.num_workers=2",
        "zero.stage=2", "logging.wandb.mode=disabled", "guards.anomaly_policy=rollback",
    ]  # fmt: skip


def schedule(count: int, steps: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(count)]
    rng.shuffle(kinds)
    at = sorted(rng.sample(range(3, steps - 1), count))
    pairs = zip(kinds, at, strict=True)
    return [{"kind": k, "step": s, "rank": rng.randrange(2)} for k, s in pairs]


def gobig(args: list[str], log: Path) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600)  # fmt: skip
    seconds = time.perf_counter() - t0
    log.write_text(proc.stdout + proc.stderr)
    return proc.returncode, seconds, proc.stdout + proc.stderr


def recomputed_steps(output: str) -> int:
    """Steps trained again after a restart or a rollback (from rank 0's step lines)."""
    done, again = 0, 0
    for match in re.finditer(r"step\s+(\d+)/\d+ \|", output):
        step = int(match.group(1))
        if step <= done:
            again += 1
        done = max(done, step)
    return again


def run_schedule(root: Path, data: Path, steps: int, count: int, seed: int) -> list[str]:
    faults = schedule(count, steps, seed)
    spec = json.dumps(faults).replace('"', "")
    faulty_args = [
        *base_args(data, steps),
        f"faults={spec}",
        f"cluster.max_failures={count + 2}",
        f"train.hang_timeout_s={HANG_TIMEOUT_S}",
        f"run.dir={root}",
        "run.name=faulty",
    ]
    code, faulty_s, output = gobig(faulty_args, root / "faulty.log")
    fired = sorted((root / "faulty" / "faults").glob("fault_*"))
    guards = root / "faulty" / "guards.json"
    straight_dir = root / "straight"
    straight_dir.mkdir()
    if guards.is_file():  # the same skipped samples, nothing else
        record = json.loads(guards.read_text())
        (straight_dir / "guards.json").write_text(
            json.dumps({"skipped_batches": record.get("skipped_batches", [])})
        )
    straight_args = [*base_args(data, steps), f"run.dir={root}", "run.name=straight"]
    code_straight, straight_s, _ = gobig(straight_args, root / "straight.log")
    same = compare_losses(straight_dir, root / "faulty") if code == code_straight == 0 else None
    rows = [f"| {f['step']} | {f['kind']} | {f['rank']} |" for f in faults]
    skipped = json.loads(guards.read_text()).get("skipped_batches", []) if guards.is_file() else []
    return [
        f"Schedule (seed {seed}, {steps} steps, checkpoint every 4, "
        f"train.hang_timeout_s={HANG_TIMEOUT_S}, guards.anomaly_policy=rollback):",
        "",
        "| step | fault | rank |",
        "| --- | --- | --- |",
        *rows,
        "",
        f"- faults injected: {len(fired)} of {len(faults)}; run finished: "
        f"{'yes' if code == 0 else f'no (exit {code})'}",
        f"- steps recomputed: {recomputed_steps(output)}; batches skipped by rollbacks: "
        f"{sum(s['micro_batches'] for s in skipped)}",
        f"- wall clock: faulty {faulty_s:.0f} s, straight {straight_s:.0f} s "
        f"(overhead {faulty_s / straight_s:.2f}x)",
        f"- final losses equal the straight run's (same skipped samples): "
        f"{'yes, all ' + str(same.steps) + ' bit for bit' if same and same.ok else same}",
    ]


def default_hang(root: Path, data: Path) -> list[str]:
    """SIGSTOP rank 1 at step 5 under the default hang timeout; time to training again."""
    args = [*base_args(data, 12), "cluster.max_failures=2", f"run.dir={root}",
            "run.name=default-hang", "faults=[{kind: stop, step: 5, rank: 1}]"]  # fmt: skip
    code, seconds, output = gobig(args, root / "default-hang.log")
    run_dir = root / "default-hang"
    marker = (run_dir / "faults" / "fault_000").stat().st_mtime
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    restart = [r for r in records if r["kind"] == "startup" and r["step"] > 0]
    back = restart[-1]["first_step_at"] - marker if restart else float("nan")
    return [
        f"- SIGSTOP of rank 1 at step 5 with the default train.hang_timeout_s (120 s on CPU): "
        f"training again {back:.0f} s after the stop (target: under 240 s); run "
        f"{'finished' if code == 0 else f'failed (exit {code})'} in {seconds:.0f} s",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--default-hang", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "faults.md"))
    ns = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gobig-bench-faults-"))
    data = prepare_data(root / "data")
    lines = ["## Many faults in one run (bench/bench_faults.py)", ""]
    lines += run_schedule(root, data, ns.steps, ns.faults, ns.seed)
    if ns.default_hang:
        lines += default_hang(root, data)
    lines += ["", f"Runs and logs: {root}"]
    write_report(lines, ns.out)


if __name__ == "__main__":
    main()
