"""The console of `gobig train` / `gobig resume`: gobig's lines for a person; Ray's output
in RUN_DIR/ray.log, and on the console too with --verbose.

One real 2-worker run on an embedded local Ray (4 steps), resumed for one more step
with --verbose; the filters themselves are checked on Ray's batches as Ray 2.60 sends them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cluster.console import RAY_LOG_FILE, failure_line, person_lines, rank_failures
from tests.cluster.conftest import gobig, text_overrides, two_workers
from train.progress import StepClock, format_duration

pytestmark = pytest.mark.timeout(600)

STEPS = 4
STEP_LINE = re.compile(r"^step +(\d+)/(\d+) \| loss .* \| eta (\S+)$")
# Every line a person gets on stdout, by its start: gobig's own lines.
PERSON_LINE = re.compile(r"^(gobig: |step |eval @ |checkpoint @ |sample @ |startup @ |  \S)")
RAY_MARKS = ("pid=", "\x1b[", "TrainingReport(", "Traceback", "[WARNING]")


@pytest.fixture(scope="module")
def console_run(text_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    proc = gobig(
        "train", *text_overrides(text_dataset), *two_workers(root, "console"),
        f"train.max_steps={STEPS}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "console", proc


def test_the_console_holds_gobig_lines_only(console_run):
    run_dir, proc = console_run
    for mark in RAY_MARKS:
        assert mark not in proc.stdout + proc.stderr, f"{mark!r} on the console:\n{proc.stdout}"
    stray = [line for line in proc.stdout.splitlines() if not PERSON_LINE.match(line)]
    assert not stray, f"lines that are not gobig's: {stray}"
    assert proc.stderr.strip() == "", proc.stderr[-3000:]


def test_one_step_line_per_log_step_with_the_time_left(console_run):
    _, proc = console_run
    steps = [STEP_LINE.match(line) for line in proc.stdout.splitlines()]
    steps = [m for m in steps if m]
    assert [(int(m[1]), int(m[2])) for m in steps] == [(s, STEPS) for s in range(1, STEPS + 1)]
    assert all(re.fullmatch(r"[\d.]+s|\d+m\d\ds|\d+h\d\dm|\d+d\d\dh", m[3]) for m in steps)


def test_evaluation_checkpoint_and_summary_lines_in_order(console_run):
    run_dir, proc = console_run
    out = proc.stdout
    marks = ["checkpoint @ step 2:", f"eval @ step {STEPS}:", f"checkpoint @ step {STEPS}:",
             f"gobig: run finished at step {STEPS}"]  # fmt: skip
    where = [out.find(mark) for mark in marks]
    assert -1 not in where and where == sorted(where), out
    assert out.rstrip().endswith(f"checkpoint       {run_dir / 'checkpoints' / 'step_00000004'}")


def test_ray_output_is_kept_in_the_run_directory(console_run):
    run_dir, _ = console_run
    log = (run_dir / RAY_LOG_FILE).read_text()
    assert "(RayTrainWorker pid=" in log and "TrainingReport(" in log
    assert "(TrainController pid=" in log
    assert f"step {STEPS:>6}/{STEPS} | loss" in log  # the workers' lines, raw, too
    session = re.search(r"Ray's session logs \(every process's own files\): (\S+)", log)
    assert session and Path(session[1]).is_dir()


def test_resume_with_verbose_prints_ray_output_as_well(console_run, tmp_path):
    import shutil

    run_dir = tmp_path / "console"
    shutil.copytree(console_run[0], run_dir)
    proc = gobig("resume", str(run_dir), f"train.max_steps={STEPS + 1}", "--verbose")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "(RayTrainWorker pid=" in output and "TrainingReport(" in output
    assert f"step {STEPS + 1:>6}/{STEPS + 1} | loss" in output
    assert f"gobig: run finished at step {STEPS + 1}" in proc.stdout
    log = (run_dir / RAY_LOG_FILE).read_text()
    assert log.count("==== gobig: Ray's output") == 2  # the first attempt's, then the resume's
    assert "(--verbose: on the console too)" in log


# -- the filters, on batches as Ray forwards them --------------------------------------


def _batch(actor: str, is_err: bool, *lines: str) -> dict:
    return {"actor_name": actor, "is_err": is_err, "pid": 1234, "lines": list(lines)}


def test_a_workers_stdout_without_deepspeed_and_torch_logs():
    batch = _batch(
        "RayTrainWorker", False,
        "[2026-12-04 22:35:23,582] [WARNING] [real_accelerator.py:213:get_accelerator] CPU",
        "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
        "Loading extension module deepspeed_shm_comm...",
        "step      1/4 | loss 6.2229 | eta 0.1s",
        "resumed from /runs/x/checkpoints/step_00000002 at step 2",
    )  # fmt: skip
    assert person_lines(batch) == batch["lines"][3:]


def test_a_workers_stderr_only_gobig_lines_and_gobig_warnings():
    batch = _batch(
        "RayTrainWorker", True,
        "Reporting training result 1: TrainingReport(checkpoint=None, metrics={}) from rank 0",
        "gobig: fault injected: hang on rank 1 at step 5",
        "/work/main/train/checkpoint/selection.py:72: UserWarning: skipping checkpoint x: bad",
        "  warnings.warn(f'skipping checkpoint {where}')",
        "/venv/lib/python3.11/site-packages/ray/train/v2/api.py:9: DeprecationWarning: old",
        "Traceback (most recent call last):",
    )  # fmt: skip
    assert person_lines(batch) == [
        "gobig: fault injected: hang on rank 1 at step 5",
        "gobig: warning: skipping checkpoint x: bad",
    ]


def test_the_error_a_worker_ended_on_is_shown_when_it_is_gobigs():
    # Ray Train's own account of a failure may name only the rank it killed (a stopped
    # one); the waiting rank's error, which names the silent peer, must reach the person.
    batch = _batch(
        "RayTrainWorker", True,
        "Traceback (most recent call last):",
        '  File "/work/main/train/trainer.py", line 226, in train',
        "train.guards.hang.HangError: step 4: rank 0 (host vm, pid 7) gave up waiting after "
        "15 s for rank 1 (host vm, pid 9): silent for 16 s (stopped or frozen)",
        "ValueError: a library's own error",
    )  # fmt: skip
    assert person_lines(batch) == [
        "gobig: a worker failed: HangError: step 4: rank 0 (host vm, pid 7) gave up waiting "
        "after 15 s for rank 1 (host vm, pid 9): silent for 16 s (stopped or frozen)"
    ]


def test_ray_processes_other_than_the_workers_are_not_shown():
    assert person_lines(_batch("", True, "A worker died or was killed")) == []
    assert person_lines(_batch("TrainController", True, "Requesting resources: {}")) == []


CONTROLLER_RETRY = """[FailurePolicy] RETRY
  Source: worker group
  Error count: 1 (max allowed: 2)
Error: Training failed due to worker errors:
[Rank 0 Error Snippet]:
Traceback (most recent call last):
  File "/work/main/train/trainer.py", line 224, in train
    raise self.hang_watch.error() from None
train.guards.hang.HangError: step 5: rank 0 (host vm, pid 1) gave up waiting for rank 1
[Rank 1 Error Snippet]:
A worker health check failed.
Worker info: Worker(
)
The actor died unexpectedly before finishing this task.
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
Traceback (most recent call last):
train.guards.hang.HangError: step 5: rank 0 (host vm, pid 1) gave up waiting for rank 1
"""


def test_a_restart_is_one_line_per_failed_rank_and_one_for_the_restart():
    lines = person_lines(_batch("TrainController", True, *CONTROLLER_RETRY.splitlines()))
    assert lines == [
        "gobig: rank 0 failed: HangError: step 5: rank 0 (host vm, pid 1) gave up waiting "
        "for rank 1",
        "gobig: rank 1 failed: A worker health check failed. The actor died unexpectedly "
        "before finishing this task.",
        "gobig: the workers failed (failure 1 of at most 2); Ray Train restarts them from "
        "the newest complete checkpoint",
    ]


def test_a_failed_runs_error_in_one_line():
    error = RuntimeError(CONTROLLER_RETRY.split("Error: ", 1)[1])
    assert failure_line(error).startswith("rank 0: HangError: step 5: rank 0 (host vm")
    assert set(rank_failures(str(error).splitlines())) == {0, 1}
    assert failure_line(RuntimeError("something else\nentirely")) == "something else\nentirely"


def test_the_step_clock_smooths_the_wall_time_per_step():
    now = [0.0]
    clock = StepClock(smoothing=0.5, clock=lambda: now[0])
    assert clock.eta_s(0, 10) is None
    assert clock.tick(1, step_time_s=2.0) == 2.0  # no window yet: the step's own time
    now[0] = 1.0
    assert clock.tick(2) == 1.5  # a 1 s step moves the estimate halfway
    now[0] = 3.0
    assert clock.tick(4) == pytest.approx(1.0 + 0.5 * 0.25)  # two 1 s steps: 3/4 of the way
    assert clock.eta_s(4, 10) == pytest.approx(6 * clock.seconds_per_step)
    assert clock.tick(2, step_time_s=5.0) == pytest.approx(1.125 + 0.5 * 3.875)  # rewound
    assert [format_duration(s) for s in (0.04, 42, 185, 7620, 100800)] == [
        "0.0s", "42s", "3m05s", "2h07m", "1d04h",
    ]  # fmt: skip
