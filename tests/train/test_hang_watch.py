"""The hang watch between real processes: each rank's watchdog thread beats, one
rank is stopped with SIGSTOP while its peer sits in a slow phase (a checkpoint,
whose allowance is far longer than `train.hang_timeout_s`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from train.guards.hang import EXIT_HUNG, read_beacons

pytestmark = pytest.mark.timeout(120)
TIMEOUT_S = 3.0
BEAT_S = 0.5

# One rank: a HangWatch with a short allowance between steps and a long one for
# slow phases; rank 0 waits in a checkpoint, rank 1 (optionally) finishes at once.
RANK = textwrap.dedent(
    """
    import sys, time
    from train.guards.hang import HangWatch
    run_dir, rank, then = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    watch = HangWatch(run_dir, rank, 2, timeout_s={timeout}, slow_timeout_s=600, beat_s={beat})
    watch.progress(1)
    if then == "close":
        watch.close()
        sys.exit(0)
    with watch.slow_phase("checkpoint"):
        time.sleep(600)
    """
).format(timeout=TIMEOUT_S, beat=BEAT_S)
ROOT = Path(__file__).resolve().parents[2]


def _rank(run_dir: Path, rank: int, then: str = "wait") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RANK, str(run_dir), str(rank), then],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def _wait_for_beacons(run_dir: Path, ranks: int) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        beacons = read_beacons(run_dir, 2)
        if len(beacons) >= ranks:
            return beacons
        time.sleep(0.1)
    pytest.fail("no beacons")


def test_a_peer_stopped_during_a_slow_phase_ends_the_wait_after_the_hang_timeout(tmp_path):
    stopped = _rank(tmp_path, 1)
    waiting = _rank(tmp_path, 0)
    try:
        _wait_for_beacons(tmp_path, 2)
        time.sleep(1.0)  # both beat, rank 0 is in its checkpoint
        os.kill(stopped.pid, signal.SIGSTOP)
        at = time.monotonic()
        _, err = waiting.communicate(timeout=60)
        took = time.monotonic() - at
    finally:
        for proc in (stopped, waiting):
            proc.kill()
    assert waiting.returncode == EXIT_HUNG, err
    # Far sooner than the checkpoint's allowance (600 s): the hang timeout and a few beats,
    # counted from the stopped rank's last beat (up to one beat before the stop).
    assert TIMEOUT_S - BEAT_S <= took < TIMEOUT_S + 30, took
    assert f"rank 1 (host {os.uname().nodename}, pid {stopped.pid}): silent for" in err
    assert "in checkpoint gave up waiting" in err and f"train.hang_timeout_s={TIMEOUT_S:g}" in err
    assert stopped.wait(timeout=10) == -signal.SIGKILL  # the stopped process was ended


def test_a_peer_that_finished_or_a_beacon_of_an_earlier_attempt_is_not_a_hang(tmp_path):
    beacons = tmp_path / "workers" / "beacons"
    beacons.mkdir(parents=True)
    # rank 1 of an earlier attempt: silent for a minute, its pid long gone
    old = {"rank": 1, "host": os.uname().nodename, "pid": 999999, "step": 4, "phase": "train",
           "progress_time": time.time() - 60, "beat_time": time.time() - 60, "at": "?"}  # fmt: skip
    (beacons / "rank_00001.json").write_text(json.dumps(old))
    waiting = _rank(tmp_path, 0)
    try:
        _wait_for_beacons(tmp_path, 2)
        time.sleep(TIMEOUT_S + 2)
        assert waiting.poll() is None, waiting.communicate()[1]  # the old beacon is ignored
        finished = _rank(tmp_path, 1, "close")
        assert finished.wait(timeout=60) == 0
        assert read_beacons(tmp_path, 2)[1]["closed"] is True
        time.sleep(TIMEOUT_S + 2)
        assert waiting.poll() is None, waiting.communicate()[1]  # a finished peer is silent
    finally:
        waiting.kill()
