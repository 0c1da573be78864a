"""Data parallel on a fixed machine: 2 workers x 1 thread against 1 worker x 2 threads at
the same global batch, gpt-tiny, through gobig's own worker loop.

    .venv/bin/python bench/bench_scaling.py [--rounds 3] [--stages 2,0]
        [--out bench/results/scaling.md]

A (data parallel): OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m train
    configs/gpt-tiny.yaml cluster.num_workers=2 train.micro_batch_size=8 zero.stage=S ...
B (threads):       OMP_NUM_THREADS=2 python -m train configs/gpt-tiny.yaml
    cluster.num_workers=1 train.micro_batch_size=16 zero.stage=S ...

Both use a global batch of 16 x 128 tokens per optimizer step. gobig sets no thread
count itself (torch's default is all cores; torchrun sets OMP_NUM_THREADS=1 per rank
when unset), so OMP_NUM_THREADS is set explicitly for both. tokens/s is gobig's own
metric (all ranks' tokens over the window's wall time), skipping the first logging
window as warm-up. Runs alternate A B A B ... to cancel drift; the ratio A/B is taken
per pair and the median over pairs is reported (target: at least 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report import write_report  # noqa: E402  (bench/ is the script's folder)
from _train_runs import load_line, machine_line, run_train, shell  # noqa: E402

STEPS, LOG_EVERY = 30, 10


def configs(stage: int) -> dict[str, tuple[list[str], int, int]]:
    common = [f"zero.stage={stage}", "train.precision=fp32", f"train.max_steps={STEPS}",
              f"train.log_every={LOG_EVERY}", "train.peak_tflops=1"]  # fmt: skip
    return {
        "A: 2 workers x 1 thread (micro 8)": (
            [*common, "cluster.num_workers=2", "train.micro_batch_size=8"], 2, 1,
        ),
        "B: 1 worker x 2 threads (micro 16)": (
            [*common, "cluster.num_workers=1", "train.micro_batch_size=16"], 1, 2,
        ),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="A B pairs per ZeRO stage")
    parser.add_argument("--stages", default="2,0", help="ZeRO stages, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scaling.md"))
    args = parser.parse_args()
    command = "python bench/bench_scaling.py " + " ".join(sys.argv[1:])
    stages = [int(s) for s in args.stages.split(",")]
    start = time.perf_counter()

    runs: dict[int, list[tuple[str, dict]]] = {s: [] for s in stages}
    cmds: dict[tuple[int, str], str] = {}
    for rnd in range(args.rounds):
        for stage in stages:  # stages interleaved too, so both see the same drift
            for name, (ov, nproc, threads) in configs(stage).items():
                r = run_train(ov, nproc=nproc, threads=threads)
                runs[stage].append((name, r))
                cmds[(stage, name)] = shell(r["cmd"], threads)
                print(
                    f"round {rnd + 1} ZeRO-{stage} {name}: {r['tokens_per_s']:,.0f} tok/s "
                    f"({r['step_time_s'] * 1e3:.0f} ms/step, windows {r['windows']}, "
                    f"wall {r['wall_s']:.0f}s)",
                    flush=True,
                )

    lines = [
        "# Data parallel on a fixed machine",
        "",
        f"Command: `{command.strip()}` (from the repository root, in the project venv); "
        f"total {(time.perf_counter() - start) / 60:.1f} min.",
        "",
        f"Machine: {machine_line()}.",
        "",
        "Runs (gpt-tiny, fp32, global batch 16 x 128 tokens, "
        f"{STEPS} steps, first {LOG_EVERY}-step window skipped as warm-up):",
        "",
        *[f"- ZeRO-{s}, {n}: `{c}`" for (s, n), c in cmds.items()],
        "",
    ]
    summary = []
    for stage in stages:
        pairs = [runs[stage][i : i + 2] for i in range(0, len(runs[stage]), 2)]
        lines += [
            f"## ZeRO-{stage}",
            "",
            "| pair | A tokens/s | B tokens/s | A / B | A ms/step | B ms/step |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        ratios = []
        for i, ((_, a), (_, b)) in enumerate(pairs, 1):
            ratio = a["tokens_per_s"] / b["tokens_per_s"]
            ratios.append(ratio)
            lines.append(
                f"| {i} | {a['tokens_per_s']:,.0f} | {b['tokens_per_s']:,.0f} | {ratio:.3f} | "
                f"{a['step_time_s'] * 1e3:.0f} | {b['step_time_s'] * 1e3:.0f} |"
            )
        med = statistics.median(ratios)
        med_a = statistics.median(a["tokens_per_s"] for (_, a), _ in pairs)
        med_b = statistics.median(b["tokens_per_s"] for _, (_, b) in pairs)
        lines += [
            f"| median | {med_a:,.0f} | {med_b:,.0f} | **{med:.3f}** | | |",
            "",
        ]
        summary.append(
            f"ZeRO-{stage}: 2 workers x 1 thread / 1 worker x 2 threads = **{med:.3f}x** "
            f"(median of {len(ratios)} pairs; target at least 0.95x)"
        )
    lines += [*[f"- {s}" for s in summary], "", f"Load average at the end: {load_line()} "
              "(the machine is shared with another benchmarking job)."]  # fmt: skip
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
