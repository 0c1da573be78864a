"""The run directory's identity files: config snapshot and run.json.

    RUN_DIR/config.yaml     the resolved config of the latest attempt
    RUN_DIR/run.json        run name and W&B run id, stable across attempts
    RUN_DIR/metrics.jsonl   see train/metrics_log.py
    RUN_DIR/checkpoints/    see train/checkpoint.py
    RUN_DIR/wandb/          W&B's own files

Only rank 0 writes here (other ranks may not even share the file system).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from train.config.schema import ExperimentConfig
from train.control import clear_stop
from train.distributed import DistInfo
from train.wandb_run import new_run_id

CONFIG_SNAPSHOT = "config.yaml"
RUN_INFO = "run.json"


@dataclass(frozen=True)
class RunInfo:
    name: str
    wandb_id: str


def prepare_run_dir(
    run_dir: Path, config: ExperimentConfig, dist: DistInfo, meta: dict[str, Any] | None,
    name: str | None = None,
) -> RunInfo:  # fmt: skip
    """Create the run directory (rank 0) and settle the run's name and W&B id.

    The W&B id comes from the checkpoint being resumed, else from run.json,
    else it is new; it is written back so every later attempt finds it.

    Args:
        run_dir: the local directory ranks write to.
        config: the experiment (snapshotted as config.yaml).
        dist: this rank.
        meta: the resumed checkpoint's meta, if any.
        name: the run's name when it is not `run_dir`'s (a URI run's staging dir).
    """
    name = name or run_dir.name
    if not dist.is_main:
        return RunInfo(name=name, wandb_id="")
    run_dir.mkdir(parents=True, exist_ok=True)
    clear_stop(run_dir)  # a stop request belongs to the attempt that received it
    info_path = run_dir / RUN_INFO
    saved = json.loads(info_path.read_text()) if info_path.is_file() else {}
    wandb_id = (meta or {}).get("wandb_run_id") or saved.get("wandb_id") or new_run_id()
    info = RunInfo(name=saved.get("name", name), wandb_id=wandb_id)
    info_path.write_text(json.dumps({"name": info.name, "wandb_id": info.wandb_id}, indent=1))
    (run_dir / CONFIG_SNAPSHOT).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return info


def default_run_name(config: ExperimentConfig) -> str:
    """`run.name`, or the model name and the current time."""
    import time

    return config.run.name or f"{config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def new_run_dir(config: ExperimentConfig, name: str) -> Path | str:
    """The directory (a path, or a URI) for a fresh run; refuses one holding checkpoints."""
    from train.checkpoint import list_checkpoints
    from train.config import ConfigError
    from train.storage import RunStorage, is_uri, join_run_dir

    run_dir = join_run_dir(config.run.dir, name)
    if is_uri(run_dir):
        taken = bool(RunStorage(run_dir).list_checkpoints())
    else:
        taken = bool(list_checkpoints(run_dir))
    if taken:
        raise ConfigError(
            f"run.name: {run_dir} already holds checkpoints; continue it with "
            f"`gobig resume {run_dir}` or choose another run.name"
        )
    return run_dir


def load_run_config(run_dir: Path | str, overrides: list[str]) -> ExperimentConfig:
    """The config a run (a path, or a URI) was started with, plus `overrides` (for resuming)."""
    from train.checkpoint import newest_complete
    from train.config import ConfigError, load_config
    from train.storage import is_uri, split_run_dir

    if is_uri(run_dir):
        config = _load_remote_run_config(str(run_dir), overrides)
    else:
        snapshot = Path(run_dir) / CONFIG_SNAPSHOT
        if not snapshot.is_file():
            raise ConfigError(f"{run_dir}: not a gobig run directory (no {CONFIG_SNAPSHOT})")
        if newest_complete(Path(run_dir)) is None:
            raise ConfigError(f"{run_dir}: no complete checkpoint to resume from")
        config = load_config(snapshot, overrides)
    parent, name = split_run_dir(run_dir)
    # The run keeps its place: resuming never moves it elsewhere.
    return config.model_copy(
        update={"run": config.run.model_copy(update={"dir": parent, "name": name})}
    )


def _load_remote_run_config(uri: str, overrides: list[str]) -> ExperimentConfig:
    # The snapshot is read through pyarrow.fs into a temporary file, since
    # load_config reads files; the checkpoint is checked where it lives.
    import tempfile

    from train.config import ConfigError, load_config
    from train.storage import RunStorage

    storage = RunStorage(uri)
    text = storage.read_text(CONFIG_SNAPSHOT)
    if text is None:
        raise ConfigError(f"{uri}: not a gobig run directory (no {CONFIG_SNAPSHOT})")
    if storage.newest_complete() is None:
        raise ConfigError(f"{uri}: no complete checkpoint to resume from")
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / CONFIG_SNAPSHOT
        snapshot.write_text(text)
        return load_config(snapshot, overrides)
