"""The CIFAR-10 ViT recipe: held-out accuracy against training time, images/s, data wait.

    .venv/bin/python bench/bench_cifar.py [--tar PATH] [--minutes 20]
        [--out bench/results/cifar.md] [overrides...]

Prepares `data/cifar10` with the command the config's header shows if it is missing,
then runs `gobig train configs/cifar10-vit.yaml` (embedded Ray, 1 worker x 2 CPUs)
while watching its metrics.jsonl: each evaluation (the whole 5,000-image validation
split, held out from the training images) is stamped with the minutes of training since
the first step. Reports the accuracy at the last evaluation within `--minutes` and at
the end, the training images/s and the data-wait fraction over every logging window
after the first (warm-up).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report import write_report  # noqa: E402  (bench/ is the script's folder)
from _train_runs import PYTHON, load_line, machine_line, train_stamping_evals  # noqa: E402

CONFIG = "configs/cifar10-vit.yaml"
DATASET = ROOT / "data" / "cifar10"
GOBIG = str(Path(PYTHON).with_name("gobig"))


def prepare(tar: Path) -> None:
    """The config's dataset, written by the command its header shows (skipped if present)."""
    if (DATASET / "manifest.json").is_file():
        return
    if not tar.is_file():
        sys.exit(f"bench_cifar: error: images not found: {tar} (pass --tar)")
    cmd = [GOBIG, "data", "images", "--input", str(tar), "--out", str(DATASET),
           "--val-fraction", "0.1", "--quiet"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True)


def run(overrides: list[str]) -> tuple[list[dict], list[dict], float, list[str]]:
    """(eval records stamped with "minutes", train records, wall seconds, command)."""
    with tempfile.TemporaryDirectory(prefix="gobig-bench-") as tmp:
        cmd = [GOBIG, "train", CONFIG, "logging.wandb.mode=disabled", f"run.dir={tmp}",
               *overrides]  # fmt: skip
        _, records, wall = train_stamping_evals(cmd, Path(tmp))
    evals = [r for r in records if r.get("kind") == "eval"]
    return evals, [r for r in records if r.get("kind") == "train"], wall, cmd


def steady(train: list[dict]) -> tuple[float, float]:
    """(images/s, data-wait fraction) over every logging window after the first."""
    images = seconds = waiting = 0.0
    for before, r in zip(train, train[1:], strict=False):
        t = (r["step"] - before["step"]) * r["step_time_s"]
        images += r["samples_per_s"] * t
        seconds += t
        waiting += r["data_wait_frac"] * t
    return images / seconds, waiting / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tar", type=Path, default=ROOT.parent / "shared/data/cifar10-train.tar")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--out", default="bench/results/cifar.md")
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = parser.parse_args()
    prepare(args.tar)
    evals, train, wall, cmd = run(args.overrides)
    rate, wait = steady(train)
    within = [r for r in evals if r["minutes"] <= args.minutes]
    lines = [
        "# CIFAR-10 ViT recipe",
        "",
        f"Machine: {machine_line()}. Load at the end: {load_line()}.",
        f"Command: `{' '.join(c.replace(str(ROOT) + '/', '') for c in cmd[:3])} "
        f"{' '.join(args.overrides)}` (wall {wall / 60:.1f} min with start-up).",
        "",
        "| step | minutes of training | val accuracy | val loss |",
        "| ---: | ---: | ---: | ---: |",
        *(
            f"| {r['step']} | {r['minutes']:.1f} | {r['val_accuracy']:.4f} | {r['val_loss']:.4f} |"
            for r in evals
        ),
        "",
    ]
    if within:
        best = within[-1]
        lines.append(
            f"**Within {args.minutes:g} minutes: val accuracy {best['val_accuracy']:.4f}** "
            f"(step {best['step']}, {best['minutes']:.1f} min)."
        )
    last = evals[-1]
    lines += [
        f"**At the end: val accuracy {last['val_accuracy']:.4f}** (step {last['step']}, "
        f"{last['minutes']:.1f} min).",
        f"Training: **{rate:.0f} images/s**, data wait **{100 * wait:.2f}%** of step time "
        "(logging windows after the first).",
    ]
    write_report(lines, ROOT / args.out)


if __name__ == "__main__":
    main()
