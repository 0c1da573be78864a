"""MFU on this CPU: model FLOP/s of gobig's own worker loop over the measured matmul peak,
for gpt-tiny and a wider GPT, in fp32 and bf16; then a torch.profiler breakdown of where
one configuration's step time goes.

    .venv/bin/python bench/bench_mfu.py [--repeats 3] [--out bench/results/mfu.md]

Each run is `python -m train configs/gpt-tiny.yaml cluster.num_workers=1 zero.stage=0
train.precision=P ...` (one process, torch's default thread count = all cores), read
back from metrics.jsonl; the first logging window is warm-up and skipped. The peak is
train/peak_flops.measure_matmul_flops (1024-square matmul, best of 5 x 0.2 s) in the
same precision and thread count, measured in this process just before each round of
runs and passed to the run as train.peak_tflops, so the run's own `mfu` uses it.
Runs are interleaved (round 1: all configs, round 2: all configs, ...) and the median
over rounds is reported, because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import write_report  # noqa: E402  (bench/ is the script's folder)
from _train_runs import PYTHON, load_line, machine_line, run_train, shell  # noqa: E402

from train.peak_flops import DTYPES, measure_matmul_flops  # noqa: E402

MODELS = {
    # name: (overrides, steps, log_every)
    "gpt-tiny (L4 d128 T128, micro 8)": (["train.micro_batch_size=8"], 30, 10),
    "gpt-wide (L6 d512 H8 T256, micro 4)": (
        [
            "model.n_layer=6",
            "model.d_model=512",
            "model.n_head=8",
            "model.max_seq_len=256",
            "train.micro_batch_size=4",
        ],
        15,
        5,
    ),  # fmt: skip
}
BASE = ["cluster.num_workers=1", "zero.stage=0"]


def flops_per_token(overrides: list[str]) -> float:
    from model.registry import build_model
    from train.config import load_config

    cfg = load_config(str(ROOT / "configs" / "gpt-tiny.yaml"), overrides)
    return build_model(cfg.model).training_flops_per_unit()


# --------------------------------------------------------------------------- profiling

CATEGORIES = [
    "matmul / linear (fwd+bwd)",
    "attention (SDPA fwd+bwd)",
    "optimizer step (AdamW)",
    "grad clip / grad norm / engine step misc",
    "layernorm / gelu / dropout / residual",
    "embedding + cross-entropy",
    "copies / dtype casts",
    "data wait (next(batch))",
    "other aten ops",
    "framework overhead (Python, autograd, DeepSpeed; no aten op running)",
]


def _categorise(name: str, ancestors: list[str]) -> str:
    anc = " | ".join(ancestors)
    if "Optimizer.step" in anc or ("optimizer" in name.lower() and not name.startswith("gobig.")):
        return "optimizer step (AdamW)"
    if "gobig.data" in anc or name == "gobig.data":
        return "data wait (next(batch))"
    if not name.startswith("aten::"):
        return CATEGORIES[-1]
    if any(k in name for k in ("embedding", "nll_loss", "log_softmax", "cross_entropy")):
        return "embedding + cross-entropy"
    if any(k in name for k in ("scaled_dot_product", "flash_attention", "baddbmm")):
        return "attention (SDPA fwd+bwd)"
    if any(k in anc for k in ("scaled_dot_product", "flash_attention")):
        return "attention (SDPA fwd+bwd)"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"):
        return "matmul / linear (fwd+bwd)"
    if "gobig.optimizer" in anc:
        return "grad clip / grad norm / engine step misc"
    if any(k in name for k in ("layer_norm", "gelu", "dropout", "aten::add", "aten::mul")):
        return "layernorm / gelu / dropout / residual"
    if any(k in name for k in ("embedding", "nll_loss", "log_softmax", "cross_entropy")):
        return "embedding + cross-entropy"
    if any(k in name for k in ("aten::to", "aten::_to_copy", "aten::copy_")):
        return "copies / dtype casts"
    if "gobig.grad_norm" in anc:
        return "grad clip / grad norm / engine step misc"
    return "other aten ops"


def profile_worker(overrides: list[str], warmup: int, active: int, out: str) -> None:
    """Runs inside a subprocess: gobig's fit() with its own profiler callback recording
    `active` steps after `warmup`; the Trainer labels each step's parts (gobig.data,
    gobig.forward, gobig.backward, gobig.grad_norm, gobig.optimizer)."""
    from train.callbacks import ProfilerCallback
    from train.config import load_config
    from train.run_dir import default_run_name, new_run_dir
    from train.trainer import fit

    cfg = load_config(str(ROOT / "configs" / "gpt-tiny.yaml"), overrides)
    run_dir = new_run_dir(cfg, default_run_name(cfg))
    profiler = ProfilerCallback(None, wait=0, warmup=warmup, active=active)
    fit(cfg, run_dir, callbacks=[profiler])
    prof = profiler.profiler

    totals: dict[str, float] = defaultdict(float)
    top_ops: dict[str, float] = defaultdict(float)
    steps_us = 0.0
    for ev in prof.events():
        if ev.name.startswith("ProfilerStep"):
            steps_us += ev.cpu_time_total
        ancestors, parent = [], ev.cpu_parent
        while parent is not None:
            ancestors.append(parent.name)
            parent = parent.cpu_parent
        if not any(a.startswith("ProfilerStep") for a in ancestors) and not ev.name.startswith(
            "ProfilerStep#"
        ):
            continue  # outside the profiled steps (e.g. logging between steps)
        cat = _categorise(ev.name, ancestors)
        totals[cat] += ev.self_cpu_time_total
        top_ops[ev.name] += ev.self_cpu_time_total
    Path(out).write_text(
        json.dumps({"steps_us": steps_us, "active": active, "totals": totals, "top": top_ops})
    )


def run_profile(overrides: list[str], warmup: int, active: int) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gobig-prof-") as tmp:
        out = Path(tmp) / "prof.json"
        steps = warmup + active + 2
        args = [
            *overrides, "train.eval_every=100000", "train.checkpoint_every=100000",
            "logging.wandb.mode=disabled", f"train.max_steps={steps}",
            f"train.log_every={steps}", f"run.dir={tmp}",
        ]  # fmt: skip
        cmd = [PYTHON, __file__, "--profile-worker", out.as_posix(), str(warmup), str(active)]
        proc = subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        return json.loads(out.read_text())


# --------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--profile-worker":
        out, warmup, active, *overrides = sys.argv[2:]
        profile_worker(overrides, int(warmup), int(active), out)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of runs (median)")
    parser.add_argument("--profile", default="gpt-tiny:fp32", help="MODEL:PRECISION or none")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "mfu.md"))
    args = parser.parse_args()
    command = "python bench/bench_mfu.py " + " ".join(sys.argv[1:])
    start = time.perf_counter()
    threads = torch.get_num_threads()

    results: dict[tuple[str, str], list[dict]] = defaultdict(list)
    peaks: dict[str, list[float]] = defaultdict(list)
    example_cmds: dict[tuple[str, str], str] = {}
    fpt = {m: flops_per_token(ov) for m, (ov, _, _) in MODELS.items()}
    for rnd in range(args.repeats):
        for model, (ov, steps, log_every) in MODELS.items():
            for prec in ("fp32", "bf16"):
                # The peak is "what the hardware can do": measured before every run and
                # the best of all measurements used, so a neighbour's burst during one
                # measurement cannot inflate MFU.
                cpu = torch.device("cpu")
                peaks[prec].append(
                    measure_matmul_flops(cpu, DTYPES[prec], trials=3, seconds_per_trial=0.2)
                )
                peak = {prec: max(peaks[prec])}
                overrides = [
                    *BASE, *ov, f"train.precision={prec}", f"train.max_steps={steps}",
                    f"train.log_every={log_every}", f"train.peak_tflops={peak[prec] / 1e12:.6f}",
                ]  # fmt: skip
                r = run_train(overrides)
                results[(model, prec)].append(r)
                example_cmds[(model, prec)] = shell(r["cmd"])
                print(
                    f"round {rnd + 1} {model} {prec}: {r['tokens_per_s']:,.0f} tok/s "
                    f"(peak now {peaks[prec][-1] / 1e9:.0f}, best {peak[prec] / 1e9:.0f} GFLOP/s) "
                    f"windows {r['windows']} wall {r['wall_s']:.0f}s",
                    flush=True,
                )

    rows = []
    for (model, prec), rs in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        best = max(peaks[prec])
        mfu = tps * fpt[model] / best
        mfus = ", ".join(f"{r['tokens_per_s'] * fpt[model] / best:.1%}" for r in rs)
        achieved = tps * fpt[model]
        data = statistics.median(r["data_wait_frac"] for r in rs)
        rows.append(
            f"| {model} | {prec} | {fpt[model] / 1e6:.1f} | {tps:,.0f} | "
            f"{achieved / 1e9:.1f} | {best / 1e9:.0f} | "
            f"**{mfu:.1%}** | {mfus} | {data:.1%} |"
        )

    prof_lines: list[str] = []
    if args.profile != "none":
        pmodel, pprec = args.profile.split(":")
        key = next(m for m in MODELS if m.startswith(pmodel))
        ov = [*BASE, *MODELS[key][0], f"train.precision={pprec}", "train.peak_tflops=1"]
        prof = run_profile(ov, warmup=5, active=15)
        step_ms = prof["steps_us"] / prof["active"] / 1e3
        total = sum(prof["totals"].values())
        prof_lines += [
            "",
            f"### Where the time goes: {key}, {pprec}, 1 process x {threads} threads",
            "",
            f"torch.profiler (CPU activity) over {prof['active']} steps after 5 warm-up "
            f"steps of gobig's fit() (step boundaries marked at each micro-batch); self "
            f"CPU time of each op, attributed by op name and enclosing region. Mean "
            f"profiled step {step_ms:.0f} ms (the profiler itself adds some overhead).",
            "",
            "| category | share of step time | ms / step |",
            "| --- | ---: | ---: |",
        ]
        for cat in sorted(prof["totals"], key=lambda c: -prof["totals"][c]):
            v = prof["totals"][cat]
            prof_lines.append(f"| {cat} | {v / total:.1%} | {v / prof['active'] / 1e3:.1f} |")
        prof_lines += ["", "Top ops by self time:", "", "| op | share | ms / step |",
                       "| --- | ---: | ---: |"]  # fmt: skip
        for name, v in sorted(prof["top"].items(), key=lambda kv: -kv[1])[:15]:
            prof_lines.append(f"| `{name}` | {v / total:.1%} | {v / prof['active'] / 1e3:.1f} |")

    elapsed = time.perf_counter() - start
    lines = [
        "# MFU on CPU",
        "",
        f"Command: `{command.strip()}` (from the repository root, in the project venv); "
        f"total {elapsed / 60:.1f} min.",
        "",
        f"Machine: {machine_line()}; {threads} torch threads.",
        "",
        f"Each run (one per round, rounds interleaved; median of {args.repeats} rounds reported):",
        "",
        *[f"- {m}, {p}: `{c}`" for (m, p), c in example_cmds.items()],
        "",
        "| model | precision | MFLOP / token | tokens/s | achieved GFLOP/s | peak GFLOP/s | "
        "MFU | MFU per round | data wait |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        *rows,
        "",
        "Model FLOPs per token are gobig's 6N + 12LdT (model/accounting.py). Peak: "
        "train/peak_flops.measure_matmul_flops, 1024-square matmul, same precision and "
        "thread count, measured (3 x 0.2 s) before every run; the best of all those "
        "measurements is the peak (a neighbour's load can only lower a measurement). "
        "MFU = median tokens/s x FLOPs/token / peak.",
        *prof_lines,
        "",
        f"Load average at the end: {load_line()} (the machine is shared with another "
        "benchmarking job).",
    ]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
