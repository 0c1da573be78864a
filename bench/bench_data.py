"""Data pipeline throughput: loader tokens/s and images/s, sentencepiece tokens/s, and the
tokens/s a gpt-tiny training step consumes, for the "loader >= 50x training" check.

    .venv/bin/python bench/bench_data.py [--seconds 5] [--out bench/results/data.md]

Loader figures with 0 workers run in one process on one core ("per core"); with N
workers the figure is the total and per-core divides by N. The GPT loader reads the
built-in `builtin:stdlib` corpus (prepared on first use); the ViT loader reads a 5,000
image subset of ../shared/data/cifar10-train.tar written to a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _report import write_report  # noqa: E402  (bench/ is the script's folder)

from data_pipeline import Tokenizer, build_loader, prepare_source, write_image_shards  # noqa: E402
from data_pipeline.builtin import BUILTINS, stdlib_files  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10-train.tar"


def timed_batches(loader, seconds: float, count) -> tuple[float, float]:
    """(units per second, elapsed) iterating `loader` for about `seconds` (first batch
    excluded: it includes starting workers and filling the first shuffle block)."""
    it = iter(loader)
    next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += count(next(it))
    elapsed = time.perf_counter() - start
    return n / elapsed, elapsed


def bench_gpt_loader(dataset: str, seconds: float, workers: int) -> float:
    loader = build_loader("gpt", dataset, batch_size=16, seq_len=128, num_workers=workers)
    rate, _ = timed_batches(loader, seconds, lambda b: b["input_ids"].numel())
    return rate


def bench_vit_loader(dataset: str, seconds: float, workers: int) -> float:
    loader = build_loader("vit", dataset, batch_size=64, num_workers=workers)
    rate, _ = timed_batches(loader, seconds, lambda b: len(b["labels"]))
    return rate


def bench_sentencepiece(tokenizer: Tokenizer, seconds: float) -> float:
    texts = [p.read_text(errors="replace") for p in stdlib_files(BUILTINS["stdlib"].max_bytes)]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for text in texts[:100]:
            n += len(tokenizer.encode(text))
    return n / (time.perf_counter() - start)


def bench_gpt_tiny_step(seconds: float, bf16: bool, batch: int = 16) -> float | None:
    """Tokens/s of plain forward + backward + AdamW steps of gpt-tiny (all cores)."""
    try:
        from model.registry import build_model
    except ImportError as exn:
        print(f"model package not importable ({exn}); skipping the training step", file=sys.stderr)
        return None
    model = build_model("gpt-tiny")
    seq = model.config.max_seq_len
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq + 1))
    data = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.compute_loss(data).loss
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += batch * seq
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "data.md"))
    args = parser.parse_args()
    command = "python bench/bench_data.py " + " ".join(sys.argv[1:])

    start = time.perf_counter()
    dataset = prepare_source("builtin:stdlib")
    prep = time.perf_counter() - start
    tok = Tokenizer(Path(dataset) / "tokenizer.model")
    rows: list[tuple[str, str, str]] = []
    gpt0 = bench_gpt_loader(dataset, args.seconds, 0)
    rows.append(("GPT loader, 16x128, 0 workers", f"{gpt0:,.0f} tokens/s", f"{gpt0:,.0f}"))
    gpt2 = bench_gpt_loader(dataset, args.seconds, 2)
    rows.append(("GPT loader, 16x128, 2 workers", f"{gpt2:,.0f} tokens/s", f"{gpt2 / 2:,.0f}"))
    with tempfile.TemporaryDirectory() as tmp:
        write_image_shards(CIFAR, tmp, max_per_class=500, progress=False, shard_size="16MB")
        for workers in (0, 2):
            rate = bench_vit_loader(tmp, args.seconds, workers)
            per_core = rate / max(workers, 1)
            rows.append(
                (
                    f"ViT loader, 64x3x32x32 augmented, {workers} workers",
                    f"{rate:,.0f} images/s",
                    f"{per_core:,.0f}",
                )
            )
    spm_rate = bench_sentencepiece(tok, args.seconds)
    rows.append(
        ("sentencepiece encode (stdlib sources)", f"{spm_rate:,.0f} tokens/s", f"{spm_rate:,.0f}")
    )
    train = {prec: bench_gpt_tiny_step(args.seconds, prec == "bf16") for prec in ("fp32", "bf16")}
    load = os.getloadavg()[0]
    lines = [
        "# Data pipeline throughput",
        "",
        f"Command: `{command.strip()}` (from the repository root, in the project venv)",
        "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}. Built-in corpus "
        f"ready in {prep:.1f} s (cold preparation takes about 3 s).",
        "",
        "| measurement | total | per core |",
        "| --- | ---: | ---: |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]
    if None not in train.values():
        fastest = max(train.values())
        threads = torch.get_num_threads()
        lines += [
            *[
                f"| gpt-tiny training step ({prec}, AdamW, 16x128, {threads} threads)"
                f" | {rate:,.0f} tokens/s | |"
                for prec, rate in train.items()
            ],
            "",
            f"Loader (0 workers, one core) / fastest gpt-tiny training consumption: "
            f"**{gpt0 / fastest:,.0f}x** (target: at least 50x).",
        ]
    lines += [
        "",
        f"1-minute load average at the end: {load:.1f} on {os.cpu_count()} cores (the machine "
        "is shared; figures taken under load are lower, the training step most of all).",
    ]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
