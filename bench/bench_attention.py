"""Attention kinds side by side: FAVOR+ approximation error, time and memory against
sequence length, and what each kind reaches on real text.

    .venv/bin/python bench/bench_attention.py [--parts approx scaling quality long]
        [--max-len 16384] [--out bench/results/attention.md]

approx   FAVOR+ against exact softmax attention on the same inputs (B 1, H 4, T 1024,
         Dh 64, q, k, v ~ N(0, 1)): relative error |out - exact| / |exact| for 16 to 1024
         random features, bidirectional and causal, mean over 5 draws.
scaling  forward + backward time (best of up to 3 after a warm-up) and peak memory (the
         process's resident high-water mark over the tensors built before) of one
         causal attention layer (d_model 256, 4 heads) and of a whole small GPT (4 layers,
         d_model 128, 4 heads, rotary) at batch 1, for sequence lengths 256 .. --max-len,
         softmax vs performer vs sparse local vs sparse strided, each measurement in a
         fresh process. Slopes of log time against log length over the lengths >= 2048,
         the crossover length where each kind becomes faster than softmax, and a log-log
         plot (attention_scaling.png beside the report).
quality  configs/shakespeare-char.yaml (context 64) to 2,000 iterations with each kind
         (`python -m train`, fp32): validation loss over 200 batches and tokens/s.
long     the same text at a context of --long-len tokens (batch 1): performer against
         softmax at equal steps: tokens/s and validation loss.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from _report import write_report  # noqa: E402  (bench/ is the script's folder)
from _train_runs import PYTHON, load_line, machine_line, steady_rate  # noqa: E402

KINDS = {
    "softmax": [],
    "performer": ["attention=performer"],
    "sparse-local": ["attention=sparse", "sparse.pattern=local"],
    "sparse-strided": ["attention=sparse", "sparse.pattern=strided"],
}
CHAR_CONFIG = "configs/shakespeare-char.yaml"
# Context 64: blocks of 16 with a window of 2 leave each token 17-32 visible positions.
QUALITY = {
    "softmax": [],
    "performer": ["model.attention=performer"],
    "sparse-strided": [
        "model.attention=sparse",
        "model.sparse.block_size=16",
        "model.sparse.window=2",
        "model.sparse.stride=2",
    ],  # fmt: skip
}


# -- approximation -------------------------------------------------------------------


def approx() -> list[str]:
    import torch
    import torch.nn.functional as F

    from model.performer import default_features, favor_attention, orthogonal_projection

    b, h, t, d = 1, 4, 1024, 64
    counts = [16, 32, 64, 128, 256, 512, 1024]
    # FAVOR+'s variance grows like exp(|q|^2 + |k|^2) / sqrt(d): the error depends on the
    # size of the queries and keys as much as on the features, so three sizes are shown.
    scales = [1.0, 0.5, 0.25]
    rows = []
    for m in counts:
        cells = []
        for scale in scales:
            errors: dict[bool, list[float]] = {False: [], True: []}
            for seed in range(5):
                gen = torch.Generator().manual_seed(seed)
                q, k = (scale * torch.randn(b, h, t, d, generator=gen) for _ in range(2))
                v = torch.randn(b, h, t, d, generator=gen)
                projection = orthogonal_projection(m, d, seed=1000 + seed)
                for causal in (False, True):
                    exact = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    out = favor_attention(q, k, v, projection, causal=causal)
                    errors[causal].append(float((out - exact).norm() / exact.norm()))
            cells += [statistics.fmean(errors[False]), statistics.fmean(errors[True])]
        rows.append((m, cells))
    default = default_features(d)
    head = " | ".join(f"bidir. x{s:g} | causal x{s:g}" for s in scales)
    return [
        "## FAVOR+ against exact softmax attention",
        "",
        f"B 1, H 4, T {t}, head size {d}; q, k ~ N(0, s^2) for s = "
        f"{', '.join(f'{x:g}' for x in scales)} (s = 1: attention logits of standard deviation "
        "1), v ~ N(0, 1); relative error |out - exact| / |exact|, mean of 5 draws of inputs "
        f"and features. The paper's default for this head size is {default} features (d ln d).",
        "",
        f"| features | {head} |",
        "| ---: | " + " | ".join("---:" for _ in range(2 * len(scales))) + " |",
        *(f"| {m} | " + " | ".join(f"{c:.3f}" for c in cells) + " |" for m, cells in rows),
        "",
    ]


# -- scaling ---------------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(kind: str, what: str, length: int) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    from model import build_model
    from model.attention import SelfAttention, build_attention_context
    from train.config.load import parse_overrides

    torch.manual_seed(0)
    options = parse_overrides(KINDS[kind])
    if what == "layer":
        config = build_config(dict(family="gpt", n_layer=1, n_head=4, d_model=256,
                                   max_seq_len=length, position="none", **options))  # fmt: skip
        module = SelfAttention(config, 0)
        x = torch.randn(1, length, 256, requires_grad=True)

        def step() -> None:
            ctx = build_attention_context(
                module_positions(config), length, causal=True, device=x.device,
                dense=config.attention == "softmax",
            )  # fmt: skip
            module(x, ctx).sum().backward()
    else:
        config = build_config(dict(family="gpt", n_layer=4, n_head=4, d_model=128,
                                   max_seq_len=length, vocab_size=256, position="rotary",
                                   **options))  # fmt: skip
        module = build_model(config)
        ids = torch.randint(256, (1, length))
        batch = {"input_ids": ids, "labels": torch.roll(ids, -1, 1)}

        def step() -> None:
            module.compute_loss(batch, accuracy=False).loss.backward()

    base = _rss_kb("VmRSS")
    times = []
    step()  # warm-up; sets the high-water mark
    peak = _rss_kb("VmHWM") - base
    budget = time.perf_counter() + 60
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > budget:
            break
    print(json.dumps({"seconds": min(times), "peak_mib": peak / 1024}))


def build_config(fields: dict):
    from model import ModelConfig

    return ModelConfig(**fields)


def module_positions(config):
    from model.positions import PositionEncoding

    return PositionEncoding.for_model(config)


def measure(kind: str, what: str, length: int, timeout: float) -> dict | None:
    cmd = [PYTHON, __file__, "--child", kind, what, str(length)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        print(f"{kind} {what} {length}: failed\n{proc.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log y against log x."""
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def logged_measurements(log: Path) -> dict[tuple[str, str, int], dict]:
    """Measurements an earlier run printed ("layer softmax 256: {...}" lines)."""
    found = {}
    for line in log.read_text().splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[0] in ("layer", "model") and parts[1] in KINDS:
            got = parts[3].strip()
            if got != "None":
                found[(parts[0], parts[1], int(parts[2].rstrip(":")))] = json.loads(
                    got.replace("'", '"')
                )
    return found


def scaling(max_len: int, out_dir: Path, timeout: float, log: Path | None) -> list[str]:
    lengths = [256 * 2**i for i in range(20) if 256 * 2**i <= max_len]
    logged = logged_measurements(log) if log else None
    results: dict[tuple[str, str], dict[int, dict]] = {}
    for what in ("layer", "model"):
        for kind in KINDS:
            series = results.setdefault((what, kind), {})
            for length in lengths:
                if logged is not None:
                    got = logged.get((what, kind, length))
                else:
                    got = measure(kind, what, length, timeout)
                print(f"{what} {kind} {length}: {got}", file=sys.stderr)
                if got is None:
                    break  # longer ones would not finish either
                series[length] = got
    lines = ["## Time and memory against sequence length", ""]
    titles = {
        "layer": "One causal attention layer (d_model 256, 4 heads)",
        "model": "A whole small GPT (4 layers, d_model 128, 4 heads)",
    }
    for what, title in titles.items():
        lines += [f"### {title}: forward + backward, batch 1", "",
                  "| length | " + " | ".join(f"{k} ms / MiB" for k in KINDS) + " |",
                  "| ---: | " + " | ".join("---:" for _ in KINDS) + " |"]  # fmt: skip
        for length in lengths:
            cells = []
            for kind in KINDS:
                got = results[(what, kind)].get(length)
                cells.append("—" if got is None else
                             f"{1000 * got['seconds']:,.0f} / {got['peak_mib']:,.0f}")  # fmt: skip
            lines.append(f"| {length:,} | " + " | ".join(cells) + " |")
        lines.append("")
        soft = results[(what, "softmax")]
        for kind in KINDS:
            series = results[(what, kind)]
            tail = [(n, r["seconds"]) for n, r in series.items() if n >= 2048]
            mem = [(n, max(r["peak_mib"], 1e-3)) for n, r in series.items() if n >= 2048]
            s = f"{slope(tail):.2f}" if len(tail) >= 2 else "n/a"
            sm = f"{slope(mem):.2f}" if len(mem) >= 2 else "n/a"
            # The crossover: the shortest length from which it stays faster to the end.
            faster = None
            for n in reversed([n for n in lengths if n in series and n in soft]):
                if series[n]["seconds"] >= soft[n]["seconds"]:
                    break
                faster = n
            cross = "" if kind == "softmax" else (
                f"; faster than softmax from {faster:,} tokens on" if faster
                else "; not faster than softmax at the longest length")  # fmt: skip
            lines.append(f"- {kind}: time slope {s}, memory slope {sm} (log-log, >= 2,048){cross}.")
        lines.append("")
    plot(results, lengths, out_dir / "attention_scaling.png")
    lines.append("Plot: `bench/results/attention_scaling.png` (log-log, time per length).")
    lines.append("")
    return lines


def plot(results: dict, lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, what in zip(axes, ("layer", "model"), strict=True):
        for kind in KINDS:
            series = results[(what, kind)]
            xs = [n for n in lengths if n in series]
            ax.loglog(xs, [series[n]["seconds"] for n in xs], marker="o", label=kind, base=2)
        ax.set_title(f"{what}: forward + backward")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("seconds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# -- training runs ------------------------------------------------------------------------


def train(overrides: list[str], timeout: float = 3600) -> dict:
    """`python -m train` on the char config with overrides: final eval and tokens/s."""
    with tempfile.TemporaryDirectory(prefix="gobig-bench-") as tmp:
        cmd = [PYTHON, "-m", "train", CHAR_CONFIG, "logging.wandb.mode=disabled",
               "train.precision=fp32", f"run.dir={tmp}", *overrides]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        records = [json.loads(x) for x in next(Path(tmp).rglob("metrics.jsonl")).read_text()
                   .splitlines() if x.strip()]  # fmt: skip
    trains = [r for r in records if r["kind"] == "train"]
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    rate, _ = steady_rate(trains) if len(trains) > 1 else (trains[-1]["tokens_per_s"], 0)
    return {"val_loss": last_eval["val_loss"], "step": last_eval["step"], "tokens_per_s": rate,
            "wall_s": wall}  # fmt: skip


def prepare_text() -> None:
    """The char config's dataset, as bench_shakespeare.py prepares it (skipped if present)."""
    from bench_shakespeare import prepare

    prepare(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")


def quality() -> list[str]:
    lines = ["## Shakespeare (characters, context 64) to 2,000 iterations", "",
             f"`python -m train {CHAR_CONFIG} train.precision=fp32` plus each kind's options; "
             "validation loss over 200 batches at iteration 2,000.", "",
             "| kind | options | val loss | tokens/s | wall s |",
             "| --- | --- | ---: | ---: | ---: |"]  # fmt: skip
    for kind, options in QUALITY.items():
        got = train(options)
        shown = " ".join(options) or "(as shipped)"
        lines.append(f"| {kind} | `{shown}` | {got['val_loss']:.4f} | "
                     f"{got['tokens_per_s']:,.0f} | {got['wall_s']:.0f} |")  # fmt: skip
    return [*lines, ""]


def long_context(length: int, steps: int) -> list[str]:
    common = [f"model.max_seq_len={length}", "train.micro_batch_size=1", "model.position=rotary",
              f"train.max_steps={steps}", f"optim.decay_steps={steps}", "train.log_every=10",
              f"train.eval_every={steps}", "train.eval_batches=4",
              f"train.checkpoint_every={steps}", "data.shuffle_buffer=64"]  # fmt: skip
    lines = [f"## Long context: {length:,} characters a sequence, {steps} steps", "",
             f"`python -m train {CHAR_CONFIG} train.precision=fp32 {' '.join(common)}` plus "
             "the kind; validation loss over 4 sequences at the last step.", "",
             "| kind | val loss | tokens/s | wall s |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for kind in ("softmax", "performer"):
        got = train([*common, *QUALITY[kind]])
        lines.append(f"| {kind} | {got['val_loss']:.4f} | {got['tokens_per_s']:,.0f} | "
                     f"{got['wall_s']:.0f} |")  # fmt: skip
    return [*lines, ""]


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["approx", "scaling", "quality", "long"])
    parser.add_argument("--max-len", type=int, default=16384)
    parser.add_argument("--timeout", type=float, default=240, help="per scaling measurement")
    parser.add_argument("--long-len", type=int, default=8192)
    parser.add_argument("--long-steps", type=int, default=100)
    parser.add_argument("--out", default="bench/results/attention.md")
    parser.add_argument(
        "--scaling-log",
        type=Path,
        help="render the scaling part from the measurements an earlier run printed to stderr",
    )
    args = parser.parse_args()
    out = ROOT / args.out
    lines = ["# Attention kinds", "", f"Machine: {machine_line()}."]
    lines += [f"Command: `.venv/bin/python bench/bench_attention.py {' '.join(sys.argv[1:])}`", ""]
    parts = {
        "approx": approx,
        "scaling": lambda: scaling(args.max_len, out.parent, args.timeout, args.scaling_log),
        "quality": lambda: (prepare_text(), quality())[1],
        "long": lambda: (prepare_text(), long_context(args.long_len, args.long_steps))[1],
    }
    os.makedirs(out.parent, exist_ok=True)
    for name in args.parts:
        lines += parts[name]()
        # Written after every part: a later part that fails loses nothing measured.
        write_report([*lines, f"Load after {name}: {load_line()}."], out)


if __name__ == "__main__":
    main()
