"""Requests from outside the training loop: checkpoint now, or checkpoint and stop.

Sources: SIGTERM / SIGINT in a plain process, a STOP file in the run
directory (how the `gobig` driver asks workers anywhere to stop), and an
optional preemption probe (the Ray orchestrator passes Ray Train's preemption
notice). Every rank polls at the same steps and the loop takes the strongest
request of any rank, so all ranks act at the same step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

CONTINUE, CHECKPOINT, STOP = 0, 1, 2
STOP_FILE = "STOP"


def request_stop(run_dir: Path) -> None:
    """Ask the workers of the run in `run_dir` to checkpoint and stop."""
    (Path(run_dir) / STOP_FILE).touch()


def clear_stop(run_dir: Path) -> None:
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)


class Control:
    """What the loop should do after a step.

    Args:
        run_dir: where a STOP file means "checkpoint and stop".
        preemption_probe: returns True once this worker's node is about to be
            preempted (means "checkpoint now, keep going"); called on every
            rank at the same steps, every `probe_every` steps.
        probe_every: steps between probes (a probe may be a collective).
    """

    def __init__(
        self,
        run_dir: Path | None = None,
        preemption_probe: Callable[[], bool] | None = None,
        probe_every: int = 10,
    ):
        self.stop_file = Path(run_dir) / STOP_FILE if run_dir is not None else None
        self.preemption_probe = preemption_probe
        self.probe_every = probe_every
        self._stop = threading.Event()
        self._preempt_handled = False

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread; callers use the STOP file
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())

    def poll(self, step: int) -> int:
        """CONTINUE, CHECKPOINT or STOP for the step just finished."""
        if self._stop.is_set() or (self.stop_file is not None and self.stop_file.exists()):
            return STOP
        probe_now = self.preemption_probe is not None and step % self.probe_every == 0
        if probe_now and self.preemption_probe() and not self._preempt_handled:
            self._preempt_handled = True  # one just-in-time checkpoint per notice
            return CHECKPOINT
        return CONTINUE
