"""`gobig report`: plots of runs' metrics.jsonl, for training offline or without W&B.

    gobig report RUN [RUN ...] --out DIR

Writes into DIR one PNG per metric and x axis (step, and the family's unit
seen: tokens, or images for ViT, so runs of different batch sizes compare),
`report.html` (the PNGs embedded as data URIs: the page stands alone) and
`report.json` (per run and per plotted series, how many points were drawn).
Several runs overlay on the same axes; checkpoints, restarts (each resumed or
restarted attempt) and anomalies are marked. Only metrics a run logged are
plotted. A run directory may be a path or a URI (read through RunStorage).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from data_pipeline.errors import GobigError, error_message, report_error
from train.checkpoint.location import join_run_dir, split_run_dir
from train.checkpoint.storage import RunStorage
from train.metrics_log import METRICS_FILE

# Train keys in the order their panels appear; any other numeric key follows.
TRAIN_ORDER = ("lr", "grad_norm", "tokens_per_s", "samples_per_s", "mfu", "step_time_s",
               "data_wait_frac", "peak_mem_gb")  # fmt: skip
TITLES = {
    "loss": "loss (train, validation)", "lr": "learning rate", "grad_norm": "gradient norm",
    "tokens_per_s": "throughput (tokens/s)", "samples_per_s": "throughput (images/s)",
    "mfu": "MFU", "step_time_s": "step time (s)", "peak_mem_gb": "peak memory (GB)",
    "data_wait_frac": "share of step time waiting for data",
}  # fmt: skip
# Vertical lines in the run's colour: (line style, legend label).
MARKERS = {"checkpoints": (":", "checkpoint"), "restarts": ("--", "restart (resumed attempt)"),
           "anomalies": ("-.", "anomaly (update withheld)")}  # fmt: skip


class ReportError(GobigError, ValueError):
    """A run whose metrics cannot be plotted; str() is one line naming the file."""


@dataclass
class RunHistory:
    """A run's final history: one record per (kind, step), as the log holds it after resumes."""

    name: str
    source: str
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    restarts: list[int] = field(default_factory=list)  # the step each later attempt began at
    anomalies: list[int] = field(default_factory=list)
    samples: dict[str, Any] | None = None  # the latest samples record
    unit_key: str | None = None  # `tokens_seen` or `images_seen`: the family's counter

    def keys(self, kind: str) -> list[str]:
        """The metrics of "train" or "eval" records (val_*: evaluation.py's names)."""
        return self._keys[kind]

    @cached_property
    def _keys(self) -> dict[str, list[str]]:
        found = {}
        for kind, records in (("train", self.train), ("eval", self.evals)):
            seen = {k for r in records for k, v in r.items() if _is_number(v) and k != "step"}
            found[kind] = sorted(k for k in seen if k.startswith("val_") == (kind == "eval")
                                 and not k.endswith("_seen"))  # fmt: skip
        return found

    def points(self, key: str, x: str) -> tuple[list[float], list[float]]:
        """(x, y) of `key` over the records that carry it; x is "step" or a unit key."""
        records = self.evals if key.startswith("val_") else self.train
        rows = [r for r in records if _is_number(r.get(key))]
        if x == "step":
            return [r["step"] for r in rows], [r[key] for r in rows]
        if key.startswith("val_"):  # evaluations carry no counter: the train records' at that step
            return self.units_at([r["step"] for r in rows]), [r[key] for r in rows]
        rows = [r for r in rows if _is_number(r.get(x))]
        return [r[x] for r in rows], [r[key] for r in rows]

    def units_at(self, steps: list[int]) -> list[float]:
        """The unit counter at `steps`, linear between logged steps (0 at step 0)."""
        import numpy as np

        return [float(u) for u in np.interp(steps, *self._unit_curve)]

    @cached_property
    def _unit_curve(self) -> tuple[list[int], list[float]]:
        known = [(r["step"], r[self.unit_key]) for r in self.train if self.unit_key in r]
        return [0] + [step for step, _ in known], [0.0] + [units for _, units in known]


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)  # not bool: True is no metric


def parse_records(text: str, source: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a malformed line is a ReportError naming file and line."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ReportError(f"{source}: line {number} is not JSON ({exc})") from None
        if not isinstance(record, dict) or not (
            isinstance(record.get("kind"), str) and isinstance(record.get("step"), int)
        ):
            raise ReportError(f"{source}: line {number} is not a record with a kind and a step")
        records.append(record)
    if not records:
        raise ReportError(f"{source}: empty: the run logged no records")
    return records


def final_history(name: str, source: str, records: list[dict[str, Any]]) -> RunHistory:
    """The history metrics_log.py keeps: an attempt that starts at step s drops what was logged
    past s (anomalies stay: they happened), and a later record of a step replaces an earlier one."""
    kept: dict[tuple[str, int], dict[str, Any]] = {}
    run = RunHistory(name, source)
    startups = 0
    for record in records:
        kind, step = record.get("kind"), record["step"]
        if kind == "startup":
            startups += 1
            if startups > 1:  # as MetricsLog.rewind_to did when this attempt began
                kept = {key: r for key, r in kept.items() if key[1] <= step}
                run.restarts = [s for s in run.restarts if s <= step] + [step]
        elif kind == "anomaly":
            run.anomalies.append(step)
        elif kind in ("train", "eval", "checkpoint", "samples"):
            kept[(kind, step)] = record
    by_kind = {kind: sorted((r for (k, _), r in kept.items() if k == kind), key=lambda r: r["step"])
               for kind in ("train", "eval", "checkpoint", "samples")}  # fmt: skip
    run.train, run.evals = by_kind["train"], by_kind["eval"]
    run.checkpoints = [r["step"] for r in by_kind["checkpoint"]]
    run.samples = by_kind["samples"][-1] if by_kind["samples"] else None
    units = {k for r in run.train for k in r if k.endswith("_seen")}  # throughput.py's counter
    run.unit_key = min(units) if units else None
    if not run.train and not run.evals:
        raise ReportError(f"{source}: holds no train or eval records to plot")
    return run


def read_run(spec: str, name: str) -> RunHistory:
    """A run directory's (path or URI) final history."""
    source = str(join_run_dir(spec, METRICS_FILE))
    try:
        text = RunStorage(spec).read_text(METRICS_FILE)
    except (ValueError, OSError) as exc:  # a malformed URI, an unreachable store, not UTF-8
        raise ReportError(f"{source}: {error_message(exc)}") from exc
    if text is None:
        raise ReportError(f"{source}: no such file (not a gobig run directory?)")
    return final_history(name, source, parse_records(text, source))


def run_names(specs: list[str]) -> list[str]:
    """Each run's directory name; the whole path where two share a name."""
    names = [split_run_dir(spec)[1] or Path(spec).resolve().name for spec in specs]
    names = [spec if names.count(n) > 1 else n for n, spec in zip(names, specs, strict=True)]
    return [n if names[:i].count(n) == 0 else f"{n} #{names[:i].count(n) + 1}"
            for i, n in enumerate(names)]  # fmt: skip


def panels(runs: list[RunHistory]) -> list[tuple[str, list[str]]]:
    """(panel name, the keys it draws) for every metric some run logged."""
    train = {k for run in runs for k in run.keys("train")}
    evals = {k for run in runs for k in run.keys("eval")}
    found = [("loss", [k for k in ("loss", "val_loss") if k in train | evals])]
    found += [(k, [k]) for k in TRAIN_ORDER if k in train]
    found += [(k, [k]) for k in sorted(train - set(TRAIN_ORDER) - {"loss"})]
    found += [(k, [k]) for k in sorted(evals - {"val_loss"})]
    return [(name, keys) for name, keys in found if keys]


def title(panel: str) -> str:
    """A panel's title: `val_accuracy` reads "validation accuracy"."""
    return TITLES.get(panel) or panel.replace("val_", "validation ", 1).replace("_", " ")


def draw(runs: list[RunHistory], out: Path) -> list[dict[str, Any]]:
    """One PNG per panel and x axis in `out`; what each holds (report.json's "plots")."""
    from matplotlib.figure import Figure

    axes = ["step"] + sorted({run.unit_key for run in runs if run.unit_key})
    shown = panels(runs)
    plots = []
    for x in axes:
        for panel, keys in shown:
            fig = Figure(figsize=(7.5, 3.8), dpi=100, layout="constrained")
            ax = fig.add_subplot()
            lines, markers = _draw_panel(ax, runs, keys, x)
            if not lines:
                continue
            ax.set_title(title(panel))
            ax.set_xlabel(x.replace("_", " "))
            ax.grid(alpha=0.3)
            fig.legend(loc="outside right upper", fontsize="small")
            name = f"{panel}-vs-{x.removesuffix('_seen')}.png"
            fig.savefig(out / name, format="png")
            plots.append({"file": name, "title": title(panel), "x": x, "lines": lines,
                          "markers": markers})  # fmt: skip
    return plots


def _draw_panel(ax: Any, runs: list[RunHistory], keys: list[str], x: str) -> tuple[list, list]:
    lines, markers, values = [], [], []
    for i, run in enumerate(runs):
        if x != "step" and run.unit_key != x:
            continue
        color = f"C{i % 10}"
        for key in keys:
            xs, ys = run.points(key, x)
            if not xs:
                continue
            style = {"ls": "--" if key.startswith("val_") else "-", "ms": 4}
            if len(xs) <= 60:  # few points: each one shown
                style["marker"] = "o" if key.startswith("val_") else "."
            label = run.name if len(keys) == 1 else f"{run.name}: {key}"
            ax.plot(xs, [y if math.isfinite(y) else math.nan for y in ys], color=color,
                    label=label, **style)  # fmt: skip
            values += [y for y in ys if math.isfinite(y)]
            lines.append({"run": run.name, "series": key, "points": len(xs)})
        if not any(line["run"] == run.name for line in lines):
            continue
        for kind, (ls, _) in MARKERS.items():
            steps = sorted(set(getattr(run, kind)))
            where = steps if x == "step" else run.units_at(steps)
            if len(where) > 40:  # a line each would hide the curves: ticks on the bottom edge
                ax.plot(where, [0] * len(where), ls="", marker="|", ms=8, color=color,
                        transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
            for pos in where if len(where) <= 40 else []:
                ax.axvline(pos, color=color, ls=ls, lw=1, alpha=0.7)
            if kind == "anomalies" and where:  # also a red cross on the top edge
                ax.plot(where, [1] * len(where), ls="", marker="x", color="red",
                        transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
            if steps:
                markers.append({"run": run.name, "kind": kind, "count": len(steps)})
    for kind, (ls, label) in MARKERS.items():  # one legend entry per kind of mark
        if any(m["kind"] == kind for m in markers):
            ax.plot([], [], color="grey", ls=ls, lw=1, label=label,
                    marker="x" if kind == "anomalies" else None, mec="red")  # fmt: skip
    if values and min(values) > 0 and max(values) / min(values) > 1e3:
        ax.set_yscale("log")
    return lines, markers


def summary(run: RunHistory) -> dict[str, Any]:
    """A run's entry in report.json: its series' sizes, marks and last values."""
    last = {k: run.points(k, "step")[1][-1] for k in run.keys("train") + run.keys("eval")}
    return {
        "name": run.name,
        "metrics": run.source,
        "unit": run.unit_key,
        "steps": {
            "train": len(run.train),
            "eval": len(run.evals),
            "last": max(r["step"] for r in run.train + run.evals),
        },
        "series": {k: len(run.points(k, "step")[0]) for k in last},
        "last": {k: v if math.isfinite(v) else str(v) for k, v in last.items()},
        "checkpoints": run.checkpoints,
        "restarts": run.restarts,
        "anomalies": run.anomalies,
        "samples": run.samples,
    }


def write_report(specs: list[str], out: Path) -> dict[str, Any]:
    """Read every run, draw, and write the PNGs, report.json and report.html into `out`.

    Args:
        specs: run directories (paths or URIs).
        out: the output directory (created if needed).
    """
    from train.report_html import write_html

    runs = [read_run(spec, name) for spec, name in zip(specs, run_names(specs), strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    report = {"runs": [summary(run) for run in runs], "plots": draw(runs, out)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    write_html(out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    """`gobig report ...`; exit 2 with one line on bad input."""
    parser = argparse.ArgumentParser(prog="gobig report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (path or URI)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the report goes")
    ns = parser.parse_args(argv)
    try:
        report = write_report(ns.runs, Path(ns.out))
    except (GobigError, OSError) as exc:  # ReportError; an unwritable --out
        return report_error("gobig", exc)
    print(f"{Path(ns.out) / 'report.html'}: {len(report['plots'])} plots of "
          f"{len(report['runs'])} run(s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
