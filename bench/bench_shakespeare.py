"""Character-level tiny Shakespeare: gobig against a bare PyTorch loop, side by side.

    .venv/bin/python bench/bench_shakespeare.py [--rounds 2] [--text PATH]
        [--out bench/results/shakespeare.md]

Prepares the data the config names (`data/shakespeare-char`: a char tokenizer on the
text, first 90% train, last 10% validation) with gobig's own commands if it is missing,
then alternates, per round:
  bare:       python bench/bare_loop.py configs/shakespeare-char.yaml (fp32 eager)
  gobig:      gobig train configs/shakespeare-char.yaml (1 worker x 2 CPUs, bf16)
  gobig fp32: the same with train.precision=fp32 (what the framework itself costs)
Each runs the full recipe, 2000 iterations. tokens/s is over the training steps after
the first 100 (warm-up) in both; validation loss is over the whole validation split
after iteration 2000. The ratio gobig / bare is taken per round, median reported
(target: at least 1.2x, with validation loss at most 1.89).
"""

from __future__ import annotations

import argparse
import json
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

CONFIG = "configs/shakespeare-char.yaml"
DATASET = ROOT / "data" / "shakespeare-char"
TOKENIZER = ROOT / "data" / "shakespeare-char-tok"
GOBIG = str(Path(PYTHON).with_name("gobig"))
WARMUP_STEPS = 100


def prepare(text: Path) -> None:
    """The config's dataset, written by the commands its header shows (skipped if present)."""
    if (DATASET / "manifest.json").is_file():
        return
    if not text.is_file():
        sys.exit(f"bench_shakespeare: error: text not found: {text} (pass --text)")
    for cmd in (
        [GOBIG, "data", "tokenizer", "--input", str(text), "--model-type", "char",
         "--vocab-size", "400", "--out", str(TOKENIZER)],
        [GOBIG, "data", "text", "--input", str(text), "--tokenizer", str(TOKENIZER),
         "--out", str(DATASET), "--val-fraction", "0.1", "--val-split", "tail", "--quiet"],
    ):  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True)


def run_bare() -> dict:
    with tempfile.TemporaryDirectory(prefix="gobig-bench-") as tmp:
        out = Path(tmp) / "bare.json"
        cmd = [PYTHON, "bench/bare_loop.py", CONFIG, "--log-every", str(WARMUP_STEPS),
               "--json", str(out)]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=1800)
        result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - start
    return result


def run_gobig(precision: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="gobig-bench-") as tmp:
        cmd = [GOBIG, "train", CONFIG, f"train.precision={precision}",
               f"train.log_every={WARMUP_STEPS}", "logging.wandb.mode=disabled",
               f"run.dir={tmp}"]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        metrics = next(Path(tmp).rglob("metrics.jsonl"))
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    return {
        "tokens_per_s": steady_rate(train)[0],  # the first window is warm-up
        "val_loss": evals[-1]["val_loss"],
        "val_step": evals[-1]["step"],
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--text", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "shakespeare.md"))
    args = parser.parse_args()
    command = "python bench/bench_shakespeare.py " + " ".join(sys.argv[1:])
    start = time.perf_counter()
    prepare(Path(args.text))

    rows = []
    for rnd in range(1, args.rounds + 1):
        bare = run_bare()
        print(f"round {rnd} bare: {bare['tokens_per_s']:,.0f} tok/s, val {bare['val_loss']:.4f}")
        runs = {"bare": bare}
        for precision in ("bf16", "fp32"):
            r = run_gobig(precision)
            runs[precision] = r
            print(
                f"round {rnd} gobig {precision}: {r['tokens_per_s']:,.0f} tok/s, "
                f"val {r['val_loss']:.4f} (wall {r['wall_s']:.0f} s)",
                flush=True,
            )
        rows.append(runs)

    def median(key: str, field: str = "tokens_per_s") -> float:
        return statistics.median(r[key][field] for r in rows)

    ratios = [r["bf16"]["tokens_per_s"] / r["bare"]["tokens_per_s"] for r in rows]
    ratios32 = [r["fp32"]["tokens_per_s"] / r["bare"]["tokens_per_s"] for r in rows]
    lines = [
        "# Character-level tiny Shakespeare: gobig against a bare PyTorch loop",
        "",
        f"Command: `{command.strip()}` (from the repository root, in the project venv); "
        f"total {(time.perf_counter() - start) / 60:.1f} min.",
        "",
        f"Machine: {machine_line()}. Load average at the end: {load_line()}.",
        "",
        f"Recipe: `{CONFIG}`, 2000 iterations of batch 12 x 64 characters. tokens/s over "
        f"steps {WARMUP_STEPS + 1}-2000; validation loss over the whole held-out last 10% "
        "after iteration 2000.",
        "",
        "| round | bare fp32 tokens/s | gobig bf16 tokens/s | gobig / bare | "
        "gobig fp32 tokens/s | gobig fp32 / bare | val loss bare | val loss gobig bf16 | "
        "val loss gobig fp32 | wall s bare / gobig bf16 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(rows, 1):
        b, g, f = r["bare"], r["bf16"], r["fp32"]
        lines.append(
            f"| {i} | {b['tokens_per_s']:,.0f} | {g['tokens_per_s']:,.0f} | "
            f"{ratios[i - 1]:.2f} | {f['tokens_per_s']:,.0f} | {ratios32[i - 1]:.2f} | "
            f"{b['val_loss']:.4f} | {g['val_loss']:.4f} | {f['val_loss']:.4f} | "
            f"{b['wall_s']:.0f} / {g['wall_s']:.0f} |"
        )
    lines += [
        f"| median | {median('bare'):,.0f} | {median('bf16'):,.0f} | "
        f"**{statistics.median(ratios):.2f}** | {median('fp32'):,.0f} | "
        f"{statistics.median(ratios32):.2f} | {median('bare', 'val_loss'):.4f} | "
        f"**{median('bf16', 'val_loss'):.4f}** | {median('fp32', 'val_loss'):.4f} | |",
        "",
        "Targets: gobig / bare at least 1.2x; validation loss at iteration 2000 at most 1.89.",
    ]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
