"""Hung ranks: each rank's progress beacon, its watchdog, and collective timeouts.

A rank that is alive but stuck (a stalled network read, a wedged kernel) or
stopped outright (SIGSTOP, a frozen VM) leaves every other rank waiting in a
collective, by default for the process group's 30 minutes. gobig bounds that
wait by `train.hang_timeout_s` once the first step is done (start-up,
checkpoint saves and loads, and evaluation get `train.slow_phase_timeout_s`):

- the process group's timeout is set to the current allowance, so a rank
  waiting for a missing peer gets an error after it, and the Trainer turns
  that error into `HangError`, one line naming who did not arrive;
- each rank's watchdog thread writes a beacon (step, time of the last
  progress, heartbeat, phase, host, pid, and where the training thread is)
  to RUN_DIR/workers/beacons/ every few
  seconds and ends its own process when the rank itself has made no progress
  past the allowance (a rank stuck outside any collective, or alone), after
  printing where its training thread is stuck;
- a peer whose heartbeat stopped too (a stopped process cannot even run its
  watchdog) is killed when it is on this host, so the group can be torn down
  and restarted (Ray), or the run exits (torchrun, a plain process); a rank
  that has waited past `train.hang_timeout_s` in any phase looks for such a
  peer (silent past that time) and ends the wait at once, so a process stopped
  during a checkpoint or an evaluation costs no more than one stopped mid-step.

Beacons are files in the run directory: on a local or shared run directory
every rank sees every beacon; where a URI run's nodes share no file system a
rank sees only the beacons of its own node and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from data_pipeline.errors import GobigError

EXIT_HUNG = 3
CPU_HANG_TIMEOUT_S = 120.0
GPU_HANG_TIMEOUT_S = 300.0
WORKERS_DIR = "workers"


class HangError(GobigError, RuntimeError):
    """Ranks that made no progress within the allowed time; str() is one line."""


def default_hang_timeout(device_type: str) -> float:
    """`train.hang_timeout_s` when unset: 120 s on CPU, 300 s on an accelerator.

    On a GPU cluster a healthy step takes seconds, but NCCL sets up a new
    communicator lazily (the first eval or checkpoint after a restart) and a
    congested fabric or shared file system can stall a step for tens of
    seconds; 5 minutes keeps false alarms rare and still frees the cluster
    six times sooner than torch's 30-minute default.
    """
    return CPU_HANG_TIMEOUT_S if device_type == "cpu" else GPU_HANG_TIMEOUT_S


def set_collective_timeout(seconds: float) -> None:
    """The timeout of collectives issued from now on, in every process group this
    rank belongs to (DeepSpeed runs ZeRO's reductions in groups of its own)."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    if not dist.is_initialized():
        return
    for group in list(c10d._world.pg_map):
        with contextlib.suppress(ValueError, RuntimeError, AssertionError):
            c10d._set_pg_timeout(timedelta(seconds=seconds), group)


def is_timeout(exc: BaseException) -> bool:
    """Whether `exc` is a collective that gave up waiting (gloo or NCCL wording)."""
    text = str(exc).lower()
    return any(w in text for w in ("timed out", "timeout", "watchdog caught collective"))


def _beacon_path(run_dir: Path, rank: int) -> Path:
    # A folder of their own: RUN_DIR/workers/*.json are the ranks' placement records.
    return Path(run_dir) / WORKERS_DIR / "beacons" / f"rank_{rank:05d}.json"


def read_beacons(run_dir: Path, world_size: int) -> dict[int, dict[str, Any]]:
    """Every rank's latest beacon that is visible from here."""
    found = {}
    for rank in range(world_size):
        with contextlib.suppress(OSError, ValueError):
            found[rank] = json.loads(_beacon_path(run_dir, rank).read_text())
    return found


def _in_collective(where: str) -> bool:
    # A rank whose training thread waits inside a collective is waiting like us.
    return any(part in where for part in ("distributed_c10d", "comm.py", "torch.py"))


def _thread_frame(ident: int | None) -> str:
    frame = sys._current_frames().get(ident)
    if frame is None:
        return "unknown"
    last = traceback.extract_stack(frame)[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


class HangWatch:
    """One rank's beacon, watchdog and collective timeout.

    Args:
        run_dir: the run directory (beacons go to RUN_DIR/workers/beacons/).
        rank: this rank.
        world_size: ranks in the group.
        timeout_s: the allowance between steps once training runs.
        slow_timeout_s: the allowance of start-up, checkpoints and evaluation.
        beat_s: seconds between beacons (default: a tenth of the timeout, 1 to 5 s).
    """

    def __init__(
        self,
        run_dir: Path,
        rank: int,
        world_size: int,
        timeout_s: float,
        slow_timeout_s: float,
        beat_s: float | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.rank, self.world_size = rank, world_size
        self.timeout_s, self.slow_timeout_s = timeout_s, slow_timeout_s
        self.beat_s = beat_s or min(max(timeout_s / 10, 1.0), 5.0)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started = time.time()  # beacons older than this are a previous attempt's
        self.closed = False
        self.step = 0
        self.phase = "start-up"
        self.allowance = slow_timeout_s
        self.last_progress = time.time()
        self.training = False  # a first step finished: the short allowance applies
        # The thread that trains (under Ray not the process's main thread): where
        # it is tells a stuck read from a wait in a collective.
        self.train_thread = threading.get_ident()
        self._stop = threading.Event()
        _beacon_path(self.run_dir, rank).parent.mkdir(parents=True, exist_ok=True)
        set_collective_timeout(self.allowance)
        self._write_beacon()
        self._thread = threading.Thread(target=self._watch, name="gobig-hang-watch", daemon=True)
        self._thread.start()

    # -- the training thread ----------------------------------------------------------

    def progress(self, step: int) -> None:
        """The rank finished `step`."""
        self.step, self.last_progress = step, time.time()
        if not self.training:
            self.training = True
            self.phase, self.allowance = "train", self.timeout_s
            set_collective_timeout(self.timeout_s)

    @contextlib.contextmanager
    def slow_phase(self, name: str) -> Iterator[None]:
        """A phase that may take long on a healthy rank (checkpoint, evaluation)."""
        before = (self.phase, self.allowance)
        self.phase, self.allowance = name, self.slow_timeout_s
        self.last_progress = time.time()
        set_collective_timeout(self.slow_timeout_s)
        try:
            yield
        finally:
            self.phase, self.allowance = before
            self.last_progress = time.time()  # finishing the phase is progress
            set_collective_timeout(self.allowance)

    def close(self) -> None:
        """This rank is done: its last beacon says so, so that no peer still at work
        (a last upload, W&B's finish) takes its silence for a stopped process."""
        self._stop.set()
        self.closed = True
        self._write_beacon()

    # -- diagnosis ----------------------------------------------------------------

    def diagnose(self, waited_s: float | None = None) -> str:
        """One line: which ranks did not arrive at this rank's step, and why it looks so."""
        now = time.time()
        beacons = read_beacons(self.run_dir, self.world_size)
        stale_beat = max(3 * self.beat_s, 10.0)
        culprits = []
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            b = beacons.get(rank)
            if b is None:
                culprits.append(f"rank {rank} (no beacon visible from {self.host})")
                continue
            who = f"rank {rank} (host {b['host']}, pid {b['pid']})"
            silent = now - b["beat_time"]
            idle = now - b["progress_time"]
            if silent > stale_beat and not b.get("closed"):
                culprits.append(f"{who}: silent for {silent:.0f} s (stopped or frozen)")
                self._kill_if_local(b)
            elif b["step"] < self.step or not _in_collective(b.get("at", "")):
                culprits.append(
                    f"{who}: at step {b['step']}, no progress for {idle:.0f} s in "
                    f"{b['phase']}, at {b.get('at', '?')}"
                )
        waited = f" after {waited_s:.0f} s" if waited_s is not None else ""
        if culprits:
            missing = "; ".join(culprits)
            return f"step {self.step + 1}: {self._me()} gave up waiting{waited} for {missing}"
        return self._stuck_here(_thread_frame(self.train_thread))

    def _me(self) -> str:
        return f"rank {self.rank} (host {self.host}, pid {self.pid})"

    def _stuck_here(self, where: str) -> str:
        return (
            f"step {self.step + 1}: {self._me()} made no progress for "
            f"{time.time() - self.last_progress:.0f} s in {self.phase}, stuck at {where}"
        )

    def error(self) -> HangError:
        """The HangError a rank raises when its collective timed out."""
        limit = f"train.hang_timeout_s={self.timeout_s:g}" if self.training else (
            f"train.slow_phase_timeout_s={self.slow_timeout_s:g}"
        )  # fmt: skip
        return HangError(f"{self.diagnose(self.allowance)} ({limit})")

    def silent_peers(self) -> list[dict[str, Any]]:
        """Peers of this attempt whose heartbeat has been silent past `timeout_s`.

        A heartbeat comes from each rank's watchdog thread whatever its training
        thread does, so silence that long means a stopped or frozen process, in any
        phase: a peer stopped during a checkpoint or an evaluation (whose allowance
        is `slow_timeout_s`, half an hour by default) is found as soon as one that
        was stopped mid-step.
        """
        now = time.time()
        return [
            b for rank, b in read_beacons(self.run_dir, self.world_size).items()
            if rank != self.rank and not b.get("closed")
            and b["beat_time"] > self.started  # not a beacon left by a previous attempt
            and now - b["beat_time"] > self.timeout_s
        ]  # fmt: skip

    def _silent_line(self, peers: list[dict[str, Any]]) -> str:
        now = time.time()
        who = "; ".join(
            f"rank {b['rank']} (host {b['host']}, pid {b['pid']}): silent for "
            f"{now - b['beat_time']:.0f} s (stopped or frozen)"
            for b in peers
        )
        return f"step {self.step + 1}: {self._me()} in {self.phase} gave up waiting for {who}"

    def _kill_if_local(self, beacon: dict[str, Any]) -> None:
        # A stopped process cannot act on anything; on this host it can be ended, so
        # that Ray (or torchrun) can tear the group down and start it again.
        if beacon["host"] != self.host or beacon["pid"] == self.pid:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(beacon["pid"]), signal.SIGKILL)

    # -- the watchdog thread --------------------------------------------------------

    def _write_beacon(self) -> None:
        beacon = {
            "rank": self.rank, "host": self.host, "pid": self.pid, "step": self.step,
            "phase": self.phase, "progress_time": self.last_progress, "beat_time": time.time(),
            "at": _thread_frame(self.train_thread), "closed": self.closed,
        }  # fmt: skip
        path = _beacon_path(self.run_dir, self.rank)
        # The watchdog and, at close, the training thread write: one temporary each.
        tmp = path.with_name(f".{path.name}.{self.pid}.{threading.get_ident()}")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(beacon))
            os.replace(tmp, path)

    def _watch(self) -> None:
        # A little past the collective timeout: a rank waiting in a collective gets
        # the timeout error first and raises HangError with the same diagnosis.
        while not self._stop.wait(self.beat_s):
            self._write_beacon()
            idle = time.time() - self.last_progress
            if idle > self.allowance + 2 * self.beat_s:
                # Stuck outside a collective, this rank is the culprit whatever its
                # peers' beacons say (a peer that gave up on it may be mid-exit).
                where = _thread_frame(self.train_thread)
                line = self.diagnose() if _in_collective(where) else self._stuck_here(where)
                self._end(line)
            # Waiting longer than a step may take (a slow phase): a peer that stopped
            # beating is stopped or frozen, and nothing will come of the wait. Peers'
            # beacons are read only here, not at every beat of a healthy run.
            elif idle > self.timeout_s and (peers := self.silent_peers()):
                for beacon in peers:
                    self._kill_if_local(beacon)
                self._end(f"{self._silent_line(peers)} (train.hang_timeout_s={self.timeout_s:g})")

    def _end(self, line: str) -> None:
        # The whole process ends: under Ray that tears the group down for a restart
        # from the newest complete checkpoint; under torchrun the run exits non-zero.
        print(f"gobig: error: hung: {line}", file=sys.stderr, flush=True)
        os._exit(EXIT_HUNG)
