"""What `gobig train` shows a person, and where Ray's own output goes instead.

Ray forwards every worker's stdout and stderr to the driver, each line behind a
coloured `(RayTrainWorker pid=...)` prefix, together with its controller's and
Ray Train's own lines ("Reporting training result ..." at every checkpoint) and
Ray's warnings. During a run gobig takes that stream over (Ray's handler for
it is swapped for ours, and given back afterwards) and shows:

  - a worker's stdout as it printed it (rank 0's step, evaluation, checkpoint and
    sample lines), less the logs DeepSpeed and torch write there;
  - of a worker's stderr, gobig's own lines ("gobig: ..." guard, fault and warning
    lines, a hung rank's error) and gobig's Python warnings, as "gobig: warning: ...";
  - one line when Ray Train restarts the workers after a failure.

Everything Ray forwards, and the driver's own Ray log, goes to RUN_DIR/ray.log
(under a header naming Ray's session logs). With `--verbose` the console shows
Ray's output as Ray prints it, and ray.log is written all the same.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

RAY_LOG_FILE = "ray.log"
_RAY_HANDLER = "ray_print_logs"  # the name Ray registers its printer under (ray/_private/worker.py)
_OUR_HANDLER = "gobig_console"

GOBIG_PACKAGES = {"cluster", "data_pipeline", "model", "train"}

# Lines a worker writes to stdout that are not gobig's.
_NOT_OURS = re.compile(
    r"^\[\d{4}-\d\d-\d\d [\d:,.]+\] \[[A-Z]+\]"  # DeepSpeed's logger: [date] [WARNING] [file]
    r"|^\[\d{4}-\d\d-\d\d [\d:,.]+ [DIWEF] \d+ \d+\]"  # Ray's C++ log: [date E pid tid] file.cc
    r"|^\d{4}-\d\d-\d\d [\d:,.]+\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL) "  # Ray's Python log
    r"|^DeepSpeed .* built successfully"
    # torch building DeepSpeed's ops the first time (train/extensions.py)
    r"|^(Using .* as PyTorch extensions root|Creating extension directory|Emitting ninja "
    r"build file|Building extension module|Allowing ninja to set|Loading extension module"
    r"|Time to load .* op:|ninja: )"
    r"|^\[\d+/\d+\] "  # ninja's progress
)
# A Python warning: "path/file.py:LINE: SomeWarning: message" (its source line follows).
_WARNING = re.compile(r"^(?P<file>/\S+\.py):\d+: (?P<category>\w*Warning): (?P<message>.*)$")
# Ray Train's failure policy deciding to retry: "[FailurePolicy] RETRY", then "Error count: ...".
_RETRY = re.compile(r"^\[FailurePolicy\] RETRY")
_ERROR_COUNT = re.compile(r"Error count: (\d+) \(max allowed: (-?\d+)\)")
# Ray Train's account of a worker group's failure: a traceback per failed rank.
_SNIPPET = re.compile(r"^\[Rank (\d+) Error Snippet\]:")
_EXCEPTION = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*(?P<name>[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)): (?P<text>.*)$"
)
# The last line of a traceback raised in gobig's own code: "train.guards.hang.HangError: ...".
_OUR_EXCEPTION = re.compile(
    r"^(?:" + "|".join(sorted(GOBIG_PACKAGES)) + r")\.(?:\w+\.)*\w*(?:Error|Exception): "
)
_WRAPPERS = {"WorkerGroupError", "TrainingFailedError", "ControllerError"}  # Ray Train's own


def person_lines(data: dict[str, Any]) -> list[str]:
    """The lines of one batch Ray forwarded (one process, one stream) a person sees.

    Args:
        data: Ray's batch: `lines`, `is_err`, `pid`, `actor_name` (a train worker's is
            RayTrainWorker; Ray Train's controller's TrainController), ...
    """
    actor = data.get("actor_name") or ""
    lines = [line.rstrip("\r\n") for line in data.get("lines", [])]
    if actor.endswith("TrainController"):
        return _restart_line(lines)
    if not actor.endswith("TrainWorker"):
        return []  # Ray's own processes: raylet, dashboard, autoscaler, helper actors
    if not data.get("is_err"):
        return [line for line in lines if line.strip() and not _NOT_OURS.match(line)]
    shown = []
    for line in lines:
        if line.startswith("gobig:"):
            shown.append(line)
        elif (warning := _WARNING.match(line)) and _is_ours(warning["file"]):
            shown.append(f"gobig: warning: {warning['message']}")
        elif _OUR_EXCEPTION.match(line):
            # What a rank ended on (a hung peer named, ...): Ray Train's own account
            # of the failure may name only the rank that was killed.
            exc = _EXCEPTION.match(line)
            shown.append(f"gobig: a worker failed: {exc['name']}: {exc['text']}" if exc else line)
    return shown


def _is_ours(path: str) -> bool:
    # gobig's packages, wherever the workers import them from (a checkout, a job's
    # working directory); not a library's (ray/train/... is in site-packages).
    parts = set(Path(path).parts[:-1])
    return bool(parts & GOBIG_PACKAGES) and not parts & {"site-packages", "dist-packages"}


def _restart_line(lines: list[str]) -> list[str]:
    if not any(_RETRY.match(line) for line in lines):
        return []
    failed = [f"gobig: rank {rank} failed: {error}" for rank, error in rank_failures(lines).items()]
    counts = [m for line in lines if (m := _ERROR_COUNT.search(line))]
    which = f" (failure {counts[0][1]} of at most {counts[0][2]})" if counts else ""
    return [
        *failed,
        f"gobig: the workers failed{which}; Ray Train restarts them from the newest "
        "complete checkpoint",
    ]


def rank_failures(lines: list[str]) -> dict[int, str]:
    """Each failed rank's error in one line, from Ray Train's account of a worker
    group's failure (a "[Rank N Error Snippet]:" section per rank, each told once or twice).

    The exception the rank raised ("HangError: step 5: ..."); for a rank that died
    without one, Ray's first words and why ("A worker health check failed. The actor
    died unexpectedly ...").
    """
    sections: dict[int, list[str]] = {}
    body: list[str] | None = None
    for line in lines:
        if snippet := _SNIPPET.match(line):
            rank = int(snippet[1])
            body = None if rank in sections else sections.setdefault(rank, [])
        elif body is not None:
            body.append(line)
    return {rank: one for rank, body in sections.items() if (one := _one_line(body))}


def _one_line(body: list[str]) -> str:
    raised = [
        f"{exc['name']}: {exc['text']}"
        for line in body
        if (exc := _EXCEPTION.match(line)) and exc["name"] not in _WRAPPERS
    ]
    if raised:
        return raised[-1]  # the one raised last: what the rank ended on
    texts = [line.strip() for line in body if line.strip()]
    died = [text for text in texts if " died" in text]
    return " ".join(dict.fromkeys(texts[:1] + died[:1]))


def failure_line(error: BaseException) -> str:
    """A failed run's error: each failed rank's exception, in one line (Ray's tracebacks
    are in ray.log), or Ray's message as it is when it names no rank."""
    failures = rank_failures(str(error).splitlines())
    if failures:
        return "; ".join(f"rank {rank}: {text}" for rank, text in failures.items())
    return str(error).strip() or type(error).__name__


class RayLog:
    """RUN_DIR/ray.log, appended to from Ray's log thread and the driver's Ray logger."""

    def __init__(self, path: Path, header: str):
        self.path = path
        self.header = header  # written first, when the file is (nothing to log: no file)
        self._file: TextIO | None = None
        self._closed = False
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            if self._closed:
                return
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
                self._file.write(self.header + "\n")
            self._file.write(text if text.endswith("\n") else text + "\n")
            self._file.flush()

    def write_batch(self, data: dict[str, Any]) -> None:
        """One batch Ray forwarded, prefixed as Ray prints it (without its colours)."""
        who = data.get("actor_name") or data.get("task_name") or ""
        where = f"{who} pid={data.get('pid')}".strip()
        if data.get("ip") and data.get("ip") != data.get("localhost"):
            where += f", ip={data['ip']}"
        stream = " [stderr]" if data.get("is_err") else ""
        stamp = datetime.now().strftime("%H:%M:%S")
        lines = data.get("lines", [])
        if data.get("pid") == "autoscaler":  # its raw log; Ray prints only the events in it
            lines = _autoscaler_events(lines)
        if lines:
            self.write("".join(f"{stamp} ({where}){stream} {line.rstrip()}\n" for line in lines))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()


class _RayLogHandler(logging.Handler):
    def __init__(self, log: RayLog):
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.write(self.format(record))
        except Exception:  # a log line must never break the run
            self.handleError(record)


class RunConsole:
    """The console of one run: enter before Ray starts, `follow_workers()` once it has.

    Args:
        log_dir: where ray.log goes (the run directory, or a URI run's local staging).
        address: the Ray cluster's address (None: an embedded Ray).
        verbose: also print everything Ray prints, as Ray prints it.
        out, err: the console's streams (default: sys.stdout, sys.stderr at the time).
    """

    QUIET_S = 0.5  # drain(): no lines for this long means the workers' last are in
    DRAIN_MAX_S = 3.0

    def __init__(self, log_dir: Path, address: str | None = None, verbose: bool = False,
                 out: TextIO | None = None, err: TextIO | None = None):  # fmt: skip
        self.address = address
        self.verbose = verbose
        mode = " (--verbose: on the console too)" if verbose else ""
        header = f"==== gobig: Ray's output, run started {datetime.now():%Y-%m-%d %H:%M:%S}{mode}"
        self.log = RayLog(Path(log_dir) / RAY_LOG_FILE, header)
        self.out, self.err = out, err
        self._ray_logger = logging.getLogger("ray")
        self._saved_handlers: list[logging.Handler] = []
        self._saved_propagate = True
        self._log_handler = _RayLogHandler(self.log)
        self._ray_printer: Any = None  # Ray's own handler, while ours replaces it
        self._dispatcher: Any = None
        self._ray_worker: Any = None  # ray._private.worker, while its error printer is ours
        self._print_error: Any = None
        self._last_batch = time.monotonic()

    def __enter__(self) -> RunConsole:
        if self.address is not None:
            from cluster.ray_auth import enable_token_auth_if_available

            enable_token_auth_if_available()  # before Ray is imported: it reads the mode once
        import ray  # noqa: F401  (its import gives the "ray" logger its console handler)

        # The driver's own Ray log ("ray" logger): warnings at ray.init and after.
        self._saved_handlers = list(self._ray_logger.handlers)
        self._saved_propagate = self._ray_logger.propagate
        if not self.verbose:
            for handler in self._saved_handlers:
                self._ray_logger.removeHandler(handler)
            self._ray_logger.propagate = False
        self._ray_logger.addHandler(self._log_handler)
        return self

    def follow_workers(self) -> None:
        """Take over the workers' output Ray forwards, and Ray's error messages (Ray is up).

        Both through Ray internals (ray/_private, Ray 2.60): the dispatcher its log
        thread hands each batch of a process's lines to, and the function its error
        thread prints with. A Ray without them prints as it always does.
        """
        from ray._private import ray_logging
        from ray._private import worker as ray_worker

        self.log.write(f"Ray's session logs (every process's own files): {_session_logs()}")
        dispatcher = getattr(ray_logging, "global_worker_stdstream_dispatcher", None)
        print_error = getattr(ray_worker, "print_to_stdstream", None)
        if dispatcher is None or print_error is None:
            self.log.write("gobig: this Ray's output cannot be followed; it is printed as it is")
            return
        self._dispatcher = dispatcher
        if not self.verbose:
            printers = [h for name, h in list(dispatcher.handlers) if name == _RAY_HANDLER]
            self._ray_printer = printers[0] if printers else None
            dispatcher.remove_handler(_RAY_HANDLER)
        dispatcher.add_handler(_OUR_HANDLER, self._handle)
        self._ray_worker, self._print_error = ray_worker, print_error
        ray_worker.print_to_stdstream = self._handle_error

    def _handle(self, data: dict[str, Any]) -> None:
        if "Train" in (data.get("actor_name") or ""):  # a worker's or the controller's
            self._last_batch = time.monotonic()
        try:
            self.log.write_batch(data)
            if self.verbose:
                return
            stream = (self.err or sys.stderr) if data.get("is_err") else (self.out or sys.stdout)
            lines = person_lines(data)
            if lines:
                stream.write("".join(line + "\n" for line in lines))
                stream.flush()
        except Exception as exc:  # Ray's log thread must keep running
            self.log.write(f"gobig: console: {type(exc).__name__}: {exc}")

    def _handle_error(self, data: dict[str, Any], ignore_prefix: bool = False) -> None:
        self.log.write_batch(data)
        if self.verbose:
            self._print_error(data, ignore_prefix)

    def drain(self) -> None:
        """Wait (briefly) for worker lines still on their way to the driver: until none
        has come for QUIET_S (Ray's log monitor reads the workers' files every 0.1 s)."""
        if self._dispatcher is None:
            return
        start = time.monotonic()
        while time.monotonic() - start < self.DRAIN_MAX_S:
            if time.monotonic() - max(self._last_batch, start) >= self.QUIET_S:
                return
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._ray_worker is not None:
            self._ray_worker.print_to_stdstream = self._print_error
        if self._dispatcher is not None:
            self._dispatcher.remove_handler(_OUR_HANDLER)
            # Ray still up (an outer session, as in check-resume): its printer returns.
            if self._ray_printer is not None and ray.is_initialized():
                self._dispatcher.add_handler(_RAY_HANDLER, self._ray_printer)
        self._ray_logger.removeHandler(self._log_handler)
        self._ray_logger.propagate = self._saved_propagate
        for handler in self._saved_handlers:
            if handler not in self._ray_logger.handlers:
                self._ray_logger.addHandler(handler)
        self.log.close()


def _autoscaler_events(lines: list[str]) -> list[str]:
    try:
        from ray._private.worker import filter_autoscaler_events

        return list(filter_autoscaler_events(lines))
    except Exception:  # another Ray: its autoscaler's status is in the session logs
        return []


def _session_logs() -> str:
    with contextlib.suppress(Exception):
        from ray._private import worker

        return worker._global_node.get_logs_dir_path()
    return "unknown (see `ray status` on the cluster's head)"
