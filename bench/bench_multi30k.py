"""The Multi30k English -> German recipe: validation BLEU against training time.

    .venv/bin/python bench/bench_multi30k.py [--minutes 60] [--work DIR]
        [--out bench/results/multi30k.md] [overrides...]

Runs `gobig train configs/multi30k-en-de.yaml` (embedded Ray, 1 worker x 2 CPUs; the data
is `builtin:multi30k-en-de`, prepared from ../shared/data/multi30k on first use) while
watching its metrics.jsonl: each evaluation (validation loss over 12 batches, BLEU of
beam-search translations of 200 validation sentences) is stamped with the minutes of
training since the first step. Then `gobig eval RUN --data builtin:multi30k-en-de` scores
the final checkpoint on all 1,014 validation pairs (loss, token accuracy, corpus BLEU with
sacreBLEU's default 13a tokenization on detokenized text), and `gobig translate` shows a
few sentences. Reports the shape, the training tokens/s and every figure with its time.
The run lives in `--work` (default: a temporary directory, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report import write_report  # noqa: E402  (bench/ is the script's folder)
from _train_runs import PYTHON, load_line, machine_line, train_stamping_evals  # noqa: E402

CONFIG = "configs/multi30k-en-de.yaml"
DATA = "builtin:multi30k-en-de"
GOBIG = str(Path(PYTHON).with_name("gobig"))
VAL = ROOT.parent / "shared" / "data" / "multi30k" / "val"
SHOWN = 3  # validation sentences translated at the end, shown with their references


def train(work: Path, overrides: list[str]) -> tuple[Path, list[dict], float, list[str]]:
    """(run directory, its metrics records with evals stamped in "minutes", wall, command)."""
    cmd = [GOBIG, "train", CONFIG, "logging.wandb.mode=disabled", f"run.dir={work}",
           *overrides]  # fmt: skip
    metrics, records, wall = train_stamping_evals(cmd, work)
    return metrics.parent, records, wall, cmd


def score(run: Path, work: Path) -> tuple[dict, float]:
    """`gobig eval` over the whole validation split: (its metrics, seconds)."""
    out = work / "eval.json"
    start = time.time()
    subprocess.run([GOBIG, "eval", str(run), "--data", DATA, "--json", str(out)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return json.loads(out.read_text()), time.time() - start


def translate(run: Path) -> list[tuple[str, str, str]]:
    """(source, gobig translate's output, reference) for the first validation pairs."""
    sources = VAL.with_suffix(".en").read_text(encoding="utf-8").splitlines()[:SHOWN]
    refs = VAL.with_suffix(".de").read_text(encoding="utf-8").splitlines()[:SHOWN]
    text = "\n".join(sources) + "\n"
    proc = subprocess.run([GOBIG, "translate", str(run)], cwd=ROOT, check=True, input=text,
                          capture_output=True, text=True)  # fmt: skip
    return list(zip(sources, proc.stdout.splitlines(), refs, strict=False))


def shape(run: Path) -> str:
    """The model's shape from the run's resolved config, with its parameter count."""
    from model import build_model
    from train.config.load import load_config

    model = load_config(run / "config.yaml", check_paths=False).model
    params = sum(p.numel() for p in build_model(model).parameters())
    return (
        f"{model.name}: {model.n_layer} encoder + {model.n_decoder_layer} decoder layers "
        f"({model.norm}-LN), d_model {model.d_model}, {model.n_head} heads, FFN "
        f"{model.d_model * model.mlp_ratio}, {model.position} positions, vocabulary "
        f"{model.vocab_size} (shared embeddings: {model.share_embeddings}), dropout "
        f"{model.dropout}, label smoothing {model.label_smoothing}; {params:,} parameters"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", default="bench/results/multi30k.md")
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gobig-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run, records, wall, cmd = train(work, args.overrides)
        full, eval_s = score(run, work)
        shown = translate(run)
        described = shape(run)
    evals = [r for r in records if r.get("kind") == "eval"]
    trains = [r for r in records if r.get("kind") == "train"]
    steady = trains[1:] or trains
    tok_s = sum(r["tokens_per_s"] for r in steady) / len(steady)
    within = [r for r in evals if r["minutes"] <= args.minutes]
    lines = [
        "# Multi30k English -> German recipe",
        "",
        f"Machine: {machine_line()}. Load at the end: {load_line()}.",
        f"Command: `.venv/bin/python bench/bench_multi30k.py {' '.join(args.overrides)}` "
        f"(runs `gobig train {CONFIG}`; wall {wall / 60:.1f} min with start-up).",
        f"Shape: {described}.",
        "",
        "| step | minutes of training | val loss (12 batches) | BLEU (200 sentences) |",
        "| ---: | ---: | ---: | ---: |",
        *(
            f"| {r['step']} | {r['minutes']:.1f} | {r['val_loss']:.4f} | {r['val_bleu']:.2f} |"
            for r in evals
        ),
        "",
    ]
    if within:
        best = within[-1]
        lines.append(
            f"Within {args.minutes:g} minutes of training: BLEU {best['val_bleu']:.2f} on 200 "
            f"sentences (step {best['step']}, {best['minutes']:.1f} min)."
        )
    last = evals[-1]
    lines += [
        f"**Final checkpoint (step {last['step']}, {last['minutes']:.1f} min of training), all "
        f"1,014 validation pairs (`gobig eval`, {eval_s:.0f} s): BLEU {full['bleu']:.2f}**, "
        f"val loss {full['loss']:.4f}, token accuracy {full['token_accuracy']:.4f}.",
        f"Training throughput: {tok_s:,.0f} tokens/s (logging windows after the first).",
        "",
        f"`gobig translate` of the first {SHOWN} validation sentences (source / output / "
        "reference):",
        "",
        *(f"- {src}<br>{out}<br>{ref}" for src, out, ref in shown),
    ]
    write_report(lines, ROOT / args.out)


if __name__ == "__main__":
    main()
