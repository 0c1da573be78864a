"""SST-2 sentiment with bert-tiny: trained from scratch against fine-tuned after masked-LM
pretraining of the same model on unlabelled text.

    .venv/bin/python bench/bench_sst2.py [--pretrain-steps 2000] [--seeds 0 1]
        [--work DIR] [--pretrained RUN] [--out bench/results/sst2.md] [overrides...]

1. Data: `builtin:sst2`, prepared on first use from ../shared/data/sst2 (a 4096-piece BPE
   tokenizer trained on train.tsv; classification shards, dev.tsv the validation split).
2. Pretraining corpus, with that same tokenizer (`gobig data text --split-docs line`, one
   sentence a document, 2% held out): the 6,920 SST-2 training sentences without their
   labels, plus the 29,000 English training captions of Multi30k, lower-cased and with
   punctuation split off as SST-2's text is. Never the dev sentences.
3. pretrain: `gobig train configs/bert-tiny.yaml` on that corpus (masked LM, 1 worker,
   fp32, batch 32 x 128 tokens, `--pretrain-steps` steps).
4. per seed: (a) `gobig train configs/sst2-bert-tiny.yaml train.seed=S` from scratch;
   (b) the same plus `model.init_from=<the pretraining run>` (encoder loaded, the pooler
   and classifier start fresh).
Every run goes through the embedded Ray (1 worker x 2 CPUs). Reports each run's dev
accuracy (its last evaluation: all 872 dev sentences) and wall time, and the
pretraining's wall time and masked-token accuracy. `overrides` go to both fine-tunings.
The runs live in `--work` (default: a temporary directory, removed at the end);
`--pretrained RUN` fine-tunes from an earlier pretraining run instead of making one.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report import write_report  # noqa: E402  (bench/ is the script's folder)
from _train_runs import PYTHON, load_line, machine_line  # noqa: E402

from data_pipeline import load_manifest, prepare_source  # noqa: E402

CONFIG = "configs/sst2-bert-tiny.yaml"
SHARED = ROOT.parent / "shared" / "data"
CORPUS = ROOT / "data" / "sst2-mlm"
GOBIG = str(Path(PYTHON).with_name("gobig"))
PRETRAIN = [
    "data.source=" + str(CORPUS), "cluster.num_workers=1", "cluster.cpus_per_worker=2",
    "zero.stage=0", "train.precision=fp32", "model.dropout=0.1", "train.micro_batch_size=32",
    "train.log_every=100", "train.eval_batches=20", "optim.lr=1e-3", "optim.min_lr=1e-4",
    "optim.warmup_steps=100", "optim.weight_decay=0.01",
]  # fmt: skip
_PUNCT = re.compile(r"([.,!?;:()\"])")


def sst_style(line: str) -> str:
    """A caption as SST-2's sentences are written: lower case, punctuation split off."""
    return " ".join(_PUNCT.sub(r" \1 ", line.lower()).split())


def prepare(work: Path) -> Path:
    """builtin:sst2 (its directory) and the pretraining corpus with its tokenizer."""
    dataset = Path(prepare_source("builtin:sst2"))
    tokenizer = load_manifest(str(dataset / "manifest.json")).tokenizer["hash"]
    corpus = CORPUS / "manifest.json"
    if corpus.is_file() and load_manifest(str(corpus)).tokenizer["hash"] == tokenizer:
        return dataset  # written earlier, with the same tokenizer
    sentences = work / "sst2-train-sentences.txt"
    lines = (SHARED / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    sentences.write_text("".join(x.rsplit("\t", 1)[0] + "\n" for x in lines if x.strip()))
    captions = work / "multi30k-train-en.txt"
    lines = (SHARED / "multi30k" / "train.en").read_text(encoding="utf-8").splitlines()
    captions.write_text("".join(sst_style(x) + "\n" for x in lines if x.strip()))
    cmd = [GOBIG, "data", "text", "--input", str(sentences), str(captions), "--tokenizer",
           str(dataset / "tokenizer.model"), "--out", str(CORPUS), "--split-docs", "line",
           "--val-fraction", "0.02", "--overwrite", "--quiet"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True)
    return dataset


def train(args: list[str], run_dir: Path) -> dict:
    """One `gobig train` run: its records, wall seconds and command."""
    cmd = [GOBIG, *args, "logging.wandb.mode=disabled", f"run.dir={run_dir.parent}",
           f"run.name={run_dir.name}"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    init = [line for line in proc.stdout.splitlines() if "init_from" in line]
    return {**records_of(run_dir, wall), "cmd": cmd, "init": init[:1]}


def records_of(run_dir: Path, wall: float) -> dict:
    """A run's evaluation records (and the wall time it took)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {"evals": [r for r in records if r["kind"] == "eval"], "wall_s": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work", default=None, help="keep the runs here")
    parser.add_argument("--pretrained", default=None, help="an earlier pretraining run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sst2.md"))
    parser.add_argument("overrides", nargs="*", help="key=value for both fine-tunings")
    args = parser.parse_args()
    command = "python bench/bench_sst2.py " + " ".join(sys.argv[1:])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gobig-bench-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        dataset = prepare(work)
        prep_s = time.perf_counter() - t0
        steps = args.pretrain_steps
        if args.pretrained:
            pretrained = Path(args.pretrained)
            pre = records_of(pretrained, wall=float("nan"))
        else:
            pretrained = work / "pretrain"
            pre = train(["train", "configs/bert-tiny.yaml", *PRETRAIN, f"train.max_steps={steps}",
                         f"train.eval_every={steps}", f"train.checkpoint_every={steps}"],
                        pretrained)  # fmt: skip
        mlm = pre["evals"][-1]
        print(f"pretraining: {steps} steps, {pre['wall_s']:.0f} s, val masked accuracy "
              f"{mlm['val_masked_accuracy']:.4f}", flush=True)  # fmt: skip
        rows = []
        for seed in args.seeds:
            row = {"seed": seed}
            for name, extra in (
                ("scratch", []),
                ("pretrained", [f"model.init_from={pretrained}"]),
            ):
                r = train(["train", CONFIG, f"train.seed={seed}", *extra, *args.overrides],
                          work / f"{name}-{seed}")  # fmt: skip
                row[name] = r
                final = r["evals"][-1]
                print(f"seed {seed} {name}: dev accuracy {final['val_accuracy']:.4f} "
                      f"(best {max(e['val_accuracy'] for e in r['evals']):.4f}), "
                      f"wall {r['wall_s']:.0f} s", flush=True)  # fmt: skip
            rows.append(row)
    lines = report(args, command, rows, pre, prep_s, dataset, time.perf_counter() - start)
    write_report(lines, args.out)
    return 0


def report(args, command, rows, pre, prep_s, dataset, total_s) -> list[str]:
    def acc(r: dict) -> float:
        return r["evals"][-1]["val_accuracy"]

    def best(r: dict) -> float:
        return max(e["val_accuracy"] for e in r["evals"])

    mlm = pre["evals"][-1]
    lines = [
        "# SST-2 with bert-tiny: from scratch and after masked-LM pretraining",
        "",
        f"Command: `{command.strip()}` (from the repository root, in the project venv); "
        f"total {total_s / 60:.1f} min.",
        "",
        f"Machine: {machine_line()}. Load average at the end: {load_line()}.",
        "",
        f"Data: builtin:sst2 ({dataset}), prepared and the pretraining corpus written in "
        f"{prep_s:.0f} s. Recipe `{CONFIG}`: {rows[0]['scratch']['evals'][-1]['step']} steps "
        "of batch 32 (216 make an epoch), evaluations over all 872 dev sentences.",
        "",
        f"Pretraining: {args.pretrain_steps} steps of masked LM (batch 32 x 128 tokens) on the "
        "SST-2 training sentences and Multi30k's English training captions: "
        + (
            f"**{pre['wall_s'] / 60:.1f} min** wall"
            if pre["wall_s"] == pre["wall_s"]
            else f"an earlier run, {args.pretrained}"
        )
        + ", held-out masked-token accuracy "
        f"{mlm['val_masked_accuracy']:.4f} (val loss {mlm['val_loss']:.3f}). Fine-tuning from "
        f"it: `{''.join(rows[0]['pretrained']['init']).strip()}`",
        "",
        "| seed | dev accuracy, scratch | dev accuracy, pretrained | best eval, scratch | "
        "best eval, pretrained | wall s, scratch | wall s, pretrained |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        a, b = row["scratch"], row["pretrained"]
        lines.append(
            f"| {row['seed']} | {acc(a):.4f} | {acc(b):.4f} | {best(a):.4f} | {best(b):.4f} | "
            f"{a['wall_s']:.0f} | {b['wall_s']:.0f} |"
        )

    def mean(name: str, fn) -> float:
        return statistics.fmean(fn(r[name]) for r in rows)

    lines += [
        f"| mean | **{mean('scratch', acc):.4f}** | **{mean('pretrained', acc):.4f}** | "
        f"{mean('scratch', best):.4f} | {mean('pretrained', best):.4f} | "
        f"{mean('scratch', lambda r: r['wall_s']):.0f} | "
        f"{mean('pretrained', lambda r: r['wall_s']):.0f} |",
        "",
        "Per evaluation (step: dev accuracy, scratch / pretrained, seed "
        f"{rows[0]['seed']}): "
        + ", ".join(
            f"{x['step']}: {x['val_accuracy']:.3f} / {y['val_accuracy']:.3f}"
            for x, y in zip(
                rows[0]["scratch"]["evals"], rows[0]["pretrained"]["evals"], strict=True
            )  # fmt: skip
        ),
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
