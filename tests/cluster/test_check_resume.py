"""`gobig check-resume` on an embedded local Ray: a short horizon straight and with
workers killed at seeded steps, every loss compared."""

from __future__ import annotations

import json
import shutil

import pytest

from cluster.check_resume import compare_losses, kill_schedule, verdict
from tests.cluster.conftest import gobig, text_overrides

pytestmark = pytest.mark.timeout(600)


def test_check_resume_finds_an_exact_resume_exact(text_dataset, tmp_path):
    keep = tmp_path / "check"
    proc = gobig(
        "check-resume", *text_overrides(text_dataset), "cluster.num_workers=2", "zero.stage=2",
        "--steps", "6", "--kills", "2", "--seed", "3", "--keep", str(keep), timeout=540,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "check-resume: exact: all 6 losses match bit for bit after 2 kill(s)" in proc.stdout
    fired = sorted((keep / "killed" / "faults").glob("fault_*"))
    assert len(fired) == 2  # both workers' deaths really happened
    starts = [json.loads(line) for line in (keep / "killed" / "metrics.jsonl").open()]
    assert len([r for r in starts if r["kind"] == "startup"]) == 3  # two restarts


def test_check_resume_reports_a_run_whose_losses_differ(gpt_run, tmp_path):
    """The comparison on a real run and a copy whose step-5 loss is off by one ulp."""
    broken = tmp_path / "broken"
    shutil.copytree(gpt_run, broken)
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for r in records:
        if r["kind"] == "train" and r["step"] == 5:
            r["loss"] = r["loss"] + r["loss"] * 2**-52
    (broken / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert compare_losses(gpt_run, gpt_run).ok
    result = compare_losses(gpt_run, broken)
    assert [s for s, _, _ in result.mismatched] == [5]
    schedule = kill_schedule(8, 2, 2, seed=0)
    assert "NOT exact: 1 of 8 losses differ" in verdict(result, schedule)
    assert compare_losses(gpt_run, broken, tolerance=1e-5).ok  # the GPU tolerance allows it
