"""`gobig train` and `gobig resume`: a config in, a Ray Train run out.

The driver resolves the run directory, prepares built-in data once, starts
(or joins) Ray, and runs a TorchTrainer whose workers call train.trainer.fit.
A user error a worker raises (a GobigError: a model that does not fit the
data, a checkpoint that cannot be resumed) ends the run as one line, exit
status 2, as it would in `python -m train`.
Ctrl-C or SIGTERM asks the workers to checkpoint and stop; a second one
aborts. The console shows the workers' own lines; Ray's output goes to
RUN_DIR/ray.log (and to the console too with --verbose: cluster/console.py).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

from data_pipeline.errors import GobigError, report_error
from train.config.schema import ExperimentConfig
from train.control import request_stop
from train.summary import print_summary

ABSOLUTE_PATH_KEYS = ("source", "val_source", "tokenizer")


def absolute_paths(config: ExperimentConfig) -> ExperimentConfig:
    """Local data paths made absolute: workers do not share the driver's cwd."""
    updates: dict[str, Any] = {}
    for key in ABSOLUTE_PATH_KEYS:
        value = getattr(config.data, key)
        if value and Path(value).exists():
            updates[key] = str(Path(value).resolve())
    if not updates:
        return config
    return config.model_copy(update={"data": config.data.model_copy(update=updates)})


def run_training(
    config: ExperimentConfig,
    run_dir: Path | str,
    address: str | None = None,
    resuming: bool = False,
    verbose: bool = False,
) -> int:
    """Run (or continue) `config` in `run_dir` on Ray; returns the exit code.

    Args:
        config: the experiment.
        run_dir: the run directory (created if new): a path or a URI.
        address: Ray cluster address; None for an embedded local Ray.
        resuming: continue from the newest complete checkpoint.
        verbose: print Ray's own output too (it always goes to RUN_DIR/ray.log).
    """
    from cluster.console import RAY_LOG_FILE, RunConsole, failure_line
    from cluster.ray_session import check_reachable, ray_session
    from train.checkpoint.location import is_uri
    from train.checkpoint.storage import RunStorage

    config = absolute_paths(config)
    if not is_uri(run_dir):  # a URI (s3://, gs://, file://) is passed on as it is
        run_dir = Path(run_dir).resolve()
    if address is not None:
        check_reachable(address)  # before seconds of data preparation
    _prepare_data(config)
    print(f"gobig: run directory {run_dir}", flush=True)
    ray_log = RunStorage(run_dir).local / RAY_LOG_FILE  # a URI run's: in its local staging
    with (
        RunConsole(ray_log.parent, address, verbose) as console,
        ray_session(config, address) as session,
    ):
        console.follow_workers()
        print(
            f"gobig: {'resuming' if resuming else 'training'} {config.model.name} with "
            f"{config.cluster.num_workers} worker(s), ZeRO-{config.zero.stage}, "
            f"on {session.where}",
            flush=True,
        )
        error = _fit_on_ray(config, run_dir, loopback=session.embedded)
        console.drain()  # the workers' last lines, before the summary
        if error is not None:
            console.log.write(f"gobig: the run failed: {type(error).__name__}: {error}")
    if error is not None:
        user_error = worker_user_error(error)
        if user_error is not None:
            return report_error("gobig", user_error)
        print(f"gobig: error: training failed: {failure_line(error)}", file=sys.stderr)
        print(f"gobig: Ray's logs of the run: {ray_log}", file=sys.stderr)
        print(f"gobig: continue from the last checkpoint with: gobig resume {run_dir}",
              file=sys.stderr)  # fmt: skip
        return 1
    print_summary(run_dir)
    return 0


def worker_user_error(error: BaseException) -> BaseException | None:
    """The GobigError a worker raised, found inside Ray's failure, else None.

    Ray wraps a worker's exception (a WorkerGroupError holding each rank's
    failure, a RayTaskError whose `cause` is the original); the original is
    what the user should read, as one line.
    """
    from ray.exceptions import RayTaskError

    todo, seen = [error], set()
    while todo:
        exc = todo.pop(0)
        if not isinstance(exc, BaseException) or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, GobigError) and not isinstance(exc, RayTaskError):
            return exc
        todo += [getattr(exc, "cause", None), exc.__cause__, exc.__context__]
        todo += list(getattr(exc, "worker_failures", {}).values())
    return None


def _prepare_data(config: ExperimentConfig) -> None:
    # Built-in corpora are prepared once here, not by every worker at once.
    from data_pipeline import prepare_source

    for source in (config.data.source, config.data.val_source):
        if source:
            prepare_source(source)


def _fit_on_ray(
    config: ExperimentConfig, run_dir: Path | str, loopback: bool
) -> BaseException | None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.loopback import LoopbackTorchConfig
    from cluster.worker import take_final_error, train_worker

    c = config.cluster
    resources = {"CPU": c.cpus_per_worker, **c.resources_per_worker}
    if c.use_gpu:
        resources.setdefault("GPU", 1)
    # One machine (the embedded Ray): the workers build their group on loopback.
    torch_config = (LoopbackTorchConfig if loopback else TorchConfig)(
        backend="nccl" if c.use_gpu else "gloo"
    )
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "config": config.to_dict(),
            "run_dir": str(run_dir),
            "loopback": loopback,
        },
        torch_config=torch_config,
        scaling_config=ScalingConfig(
            num_workers=c.num_workers,
            use_gpu=c.use_gpu,
            resources_per_worker=resources,
            placement_strategy=c.placement_strategy,
        ),
        run_config=RunConfig(
            name="ray",
            storage_path=str(run_dir),  # Ray's storage takes the same paths and URIs
            failure_config=FailureConfig(max_failures=c.max_failures),
        ),
    )
    take_final_error(run_dir)  # one an earlier attempt left is not this attempt's
    with _stop_on_signals(run_dir):
        try:
            result = trainer.fit()
        except Exception as exc:  # Ray raises when the run fails for good
            return exc
    final = take_final_error(run_dir)
    if final:  # the workers stopped on an error a retry would only meet again
        return GobigError(final)
    return result.error


class _stop_on_signals:
    """First Ctrl-C / SIGTERM: ask workers to checkpoint and stop. Second: abort."""

    def __init__(self, run_dir: Path | str):
        from train.checkpoint.storage import RunStorage

        # A URI run's workers poll their staging directory; this reaches the
        # ones on the driver's node (an embedded local Ray: all of them).
        self.run_dir = RunStorage(run_dir).local
        self.previous: dict[int, Any] = {}
        self.asked = False

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread (e.g. gobig driven from a thread)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        request_stop(self.run_dir)
        print(
            "\ngobig: stopping: workers will write a checkpoint and exit "
            "(press Ctrl-C again to abort without one)",
            file=sys.stderr,
            flush=True,
        )
