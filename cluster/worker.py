"""What each Ray Train worker runs: `train.trainer.fit` with Ray's hooks.

Every rank reports to Ray Train once per checkpoint (the same number of
times on every rank, as Ray requires), through a Trainer callback
(cluster/ray_report.py). Restarts after a failure call this again; `fit`
then resumes from the run directory's newest complete checkpoint.
Ray's preemption notice triggers a just-in-time checkpoint.

An error every rank raises at the same step and that a restart would only
meet again (a `final` GobigError: a diverged run) is reported to the driver
instead of raised, so Ray ends the run rather than retrying it.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

FINAL_ERROR_FILE = "final_error.txt"  # rank 0's one-line final error, for the driver


def train_worker(payload: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point.

    Args:
        payload: {"config": ExperimentConfig.to_dict(), "run_dir": absolute path or URI,
            "loopback": whether the workers build their process group on loopback}.
    """
    import ray.train

    from cluster.ray_report import RayReport
    from data_pipeline.errors import GobigError, error_message
    from train.checkpoint.storage import RunStorage
    from train.config import build_config
    from train.control import Control
    from train.trainer import fit

    config = build_config(payload["config"], origin="config from the driver")
    storage = RunStorage(payload["run_dir"])
    run_dir = storage.local  # a URI run's local staging directory (train/checkpoint/storage.py)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    _record_worker(run_dir, rank)
    if payload.get("loopback"):
        from cluster.loopback import join_group_on_loopback

        join_group_on_loopback()

    control = Control(
        run_dir,
        preemption_probe=lambda: ray.train.get_preemption_info() is not None,
        probe_every=config.train.log_every,
    )
    try:
        fit(config, str(storage), resume=True, callbacks=[RayReport()], control=control)
    except GobigError as exc:
        if not getattr(exc, "final", False):
            raise
        if rank == 0:  # every rank raised it; the driver reads one
            _home_files(storage).write_text(FINAL_ERROR_FILE, error_message(exc) + "\n")


def _home_files(storage: Any) -> Any:
    from train.checkpoint.files import LocalFiles

    return storage.remote or LocalFiles(storage.local)


def take_final_error(run_dir: Path | str) -> str | None:
    """The driver: the final error the workers of this run recorded (then forgotten)."""
    from train.checkpoint.storage import RunStorage

    files = _home_files(RunStorage(run_dir))
    text = files.read_text(FINAL_ERROR_FILE)
    files.remove(FINAL_ERROR_FILE)
    return text.strip() if text else None


def _record_worker(run_dir: Path, rank: int) -> None:
    # Where each rank runs, for operators (and the failure tests): Ray node,
    # host and pid of the latest attempt.
    import ray

    folder = run_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "rank": rank,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
    }
    (folder / f"rank_{rank:05d}.json").write_text(json.dumps(record))
