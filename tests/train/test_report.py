"""`gobig report`: plots and one self-contained HTML page of real runs' metrics.jsonl.

The runs are the session's reference runs (tests/train/conftest.py): a straight
one and one stopped halfway and resumed, overlaid in one report. Every series
must hold as many points as metrics.jsonl has records carrying it, on both x
axes (step and tokens seen); bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import ROOT
from train.metrics_log import read_metrics
from train.report import final_history

pytestmark = pytest.mark.timeout(300)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GOBIG = Path(sys.executable).parent / "gobig"


def gobig_report(*args: str | Path) -> subprocess.CompletedProcess:
    """`gobig report ARGS` as a user runs it."""
    cmd = [str(GOBIG)] if GOBIG.is_file() else [sys.executable, "-m", "cluster.cli"]
    return subprocess.run(
        [*cmd, "report", *map(str, args)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def logged_counts(run_dir: Path) -> dict[str, int]:
    """Per metric, how many train or eval records of metrics.jsonl carry it (one per step)."""
    counts: dict[str, int] = {}
    steps: dict[str, set[int]] = {}
    for record in read_metrics(run_dir):
        if record["kind"] not in ("train", "eval"):
            continue
        for key, value in record.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if key in ("kind", "step") or key.endswith("_seen") or not number:
                continue
            counts[key] = counts.get(key, 0) + 1
            steps.setdefault(key, set()).add(record["step"])
    # metrics_log.py rewinds on resume: the log itself holds each step once.
    assert counts == {key: len(s) for key, s in steps.items()}
    return counts


def test_report_overlays_a_straight_and_a_resumed_run(runs, tmp_path):
    straight, resumed = runs.straight(1, 0).run_dir, runs.interrupted(1, 0).run_dir
    out = tmp_path / "report"
    proc = gobig_report(straight, resumed, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    names = [straight.name, resumed.name]
    assert [run["name"] for run in report["runs"]] == names
    expected = {name: logged_counts(d) for name, d in zip(names, (straight, resumed), strict=True)}
    for run in report["runs"]:
        assert run["series"] == expected[run["name"]]
        records = read_metrics(Path(run["metrics"]).parent)
        assert run["checkpoints"] == [r["step"] for r in records if r["kind"] == "checkpoint"]
        assert run["restarts"] == [r["step"] for r in records if r["kind"] == "startup"][1:]
    assert report["runs"][0]["restarts"] == [] and report["runs"][1]["restarts"] == [3]

    # Every metric, on both x axes; each line as many points as records carry it.
    wanted = {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_perplexity"}
    for x in ("step", "tokens_seen"):
        plots = [p for p in report["plots"] if p["x"] == x]
        drawn = {(ln["run"], ln["series"]): ln["points"] for p in plots for ln in p["lines"]}
        assert drawn == {(n, k): c for n, counts in expected.items() for k, c in counts.items()}
        stems = {p["file"].rsplit("-vs-", 1)[0] for p in plots}
        assert wanted <= stems, stems
        loss = next(p for p in plots if p["file"].startswith("loss-"))
        assert {line["run"] for line in loss["lines"]} == set(names)  # overlaid on one axes
        marks = {(m["run"], m["kind"]): m["count"] for m in loss["markers"]}
        assert marks[(resumed.name, "restarts")] == 1
        assert marks[(straight.name, "checkpoints")] == 2
        assert (straight.name, "restarts") not in marks

    # Valid PNGs, each embedded in the one page, which links nothing outside itself.
    from PIL import Image

    html = (out / "report.html").read_text()
    for plot in report["plots"]:
        data = (out / plot["file"]).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(out / plot["file"]) as image:
            image.verify()
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in html
    assert html.count("<img ") == len(report["plots"])
    assert 'src="data:' in html and html.count("src=") == html.count('src="data:image/png')
    assert all(name in html for name in names)


def test_final_history_replaces_what_a_resume_recomputed(runs):
    """A log not yet rewound (an attempt that died past its checkpoint) reads as the log
    metrics_log.py keeps: the resumed attempt's records replace the recomputed steps."""
    records = read_metrics(runs.straight(1, 0).run_dir)
    first = [r for r in records if r["step"] <= 5]  # died after step 5, checkpoint at 3
    resumed = [{"kind": "startup", "step": 3}]
    resumed += [{**r, "loss": r["loss"] + 1} if r["kind"] == "train" else r
                for r in records if r["step"] > 3 and r["kind"] != "startup"]  # fmt: skip
    anomaly = {"kind": "anomaly", "step": 5, "reason": "test", "loss": 1.0, "grad_norm": 1.0,
               "policy": "skip"}  # fmt: skip
    run = final_history("run", "metrics.jsonl", [*first, anomaly, *resumed])
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in run.train] == [r["step"] for r in train]
    losses = [r["loss"] + (r["step"] > 3) for r in train]
    assert [r["loss"] for r in run.train] == losses
    assert run.restarts == [3] and run.anomalies == [5] and run.checkpoints == [3, 6]
    assert [r["step"] for r in run.evals] == [3, 6]


@pytest.mark.parametrize("case", ["no-metrics", "empty", "malformed"])
def test_bad_input_is_one_line_naming_the_file(case, runs, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = run_dir / "metrics.jsonl"
    if case == "empty":
        metrics.write_text("\n")
    elif case == "malformed":
        shutil.copy(runs.straight(1, 0).run_dir / "metrics.jsonl", metrics)
        lines = metrics.read_text().splitlines(keepends=True)
        lines.insert(2, '{"kind": "train", "step": 2, "loss": 6.\n')  # a torn write
        metrics.write_text("".join(lines))
    proc = gobig_report(run_dir, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("gobig: error: ") and str(metrics) in proc.stderr
    if case == "malformed":
        assert "line 3" in proc.stderr
    assert not (tmp_path / "out" / "report.html").exists()


def test_report_needs_neither_torch_nor_matplotlib_for_help(runs, tmp_path):
    """`gobig report --help` imports nothing heavy; a report imports matplotlib, never torch."""
    probe = (
        "import json, sys, cluster.cli\n"
        "code = cluster.cli.main(json.loads(sys.argv[1]))\n"
        "heavy = [m for m in ('torch', 'deepspeed', 'ray', 'wandb', 'matplotlib') "
        "if m in sys.modules]\n"
        "print('PROBE', json.dumps([code, heavy]))\n"
    )
    run_dir = str(runs.straight(1, 0).run_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv, heavy in [(["report", "--help"], []),
                        (["report", run_dir, "--out", str(tmp_path)], ["matplotlib"])]:  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", probe, json.dumps(argv)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout.rpartition("PROBE ")[2]) == [0, heavy]
