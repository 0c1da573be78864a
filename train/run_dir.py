"""The run directory's identity files: config snapshot and run.json.

    RUN_DIR/config.yaml     the resolved config of the latest attempt
    RUN_DIR/run.json        run name and W&B run id, stable across attempts
    RUN_DIR/metrics.jsonl   see train/metrics_log.py
    RUN_DIR/checkpoints/    see train/checkpoint/
    RUN_DIR/wandb/          W&B's own files

Only rank 0 writes here (other ranks may not even share the file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from train.callbacks.wandb_log import new_run_id
from train.config.schema import ExperimentConfig
from train.control import clear_stop
from train.distributed import DistInfo

CONFIG_SNAPSHOT = "config.yaml"
TOKENIZER_COPY = "tokenizer.model"
RUN_INFO = "run.json"


@dataclass(frozen=True)
class RunInfo:
    name: str
    wandb_id: str


def prepare_run_dir(
    run_dir: Path,
    config: ExperimentConfig,
    dist: DistInfo,
    meta: dict[str, Any] | None,
    name: str | None = None,
) -> RunInfo:
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


def keep_tokenizer(run_dir: Path, loader: Any) -> None:
    """Rank 0: a copy of the run's tokenizer model in the run directory, so
    export, generate and eval decode with it after the dataset has moved."""
    tokenizer = getattr(loader, "tokenizer", None)
    if tokenizer is None:
        return
    copy = run_dir / TOKENIZER_COPY
    if not copy.is_file() or copy.read_bytes() != Path(tokenizer.path).read_bytes():
        tmp = copy.with_suffix(".tmp")
        shutil.copyfile(tokenizer.path, tmp)
        os.replace(tmp, copy)


def default_run_name(config: ExperimentConfig) -> str:
    """`run.name`, or the model name and the current time."""
    import time

    return config.run.name or f"{config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def new_run_dir(config: ExperimentConfig, name: str) -> Path | str:
    """The directory (a path, or a URI) for a fresh run; refuses one holding checkpoints."""
    from train.checkpoint.location import join_run_dir
    from train.checkpoint.storage import RunStorage
    from train.config import ConfigError

    run_dir = join_run_dir(config.run.dir, name)
    if RunStorage(run_dir).list_checkpoints():
        raise ConfigError(
            f"run.name: {run_dir} already holds checkpoints; continue it with "
            f"`gobig resume {run_dir}` or choose another run.name"
        )
    return run_dir


def load_run_config(run_dir: Path | str, overrides: list[str]) -> ExperimentConfig:
    """The config a run (a path, or a URI) was started with, plus `overrides` (for resuming)."""
    from train.checkpoint.location import split_run_dir
    from train.checkpoint.storage import RunStorage
    from train.config import ConfigError, load_config

    storage = RunStorage(run_dir)
    text = storage.read_text(CONFIG_SNAPSHOT)
    if text is None:
        raise ConfigError(f"{run_dir}: not a gobig run directory (no {CONFIG_SNAPSHOT})")
    if storage.newest_complete() is None:
        raise ConfigError(f"{run_dir}: no complete checkpoint to resume from")
    with _snapshot_file(storage, text) as snapshot:
        config = load_config(snapshot, overrides)
    parent, name = split_run_dir(run_dir)
    # The run keeps its place: resuming never moves it elsewhere.
    return config.model_copy(
        update={"run": config.run.model_copy(update={"dir": parent, "name": name})}
    )


@contextlib.contextmanager
def _snapshot_file(storage: Any, text: str) -> Iterator[Path]:
    # load_config reads files (and names them in its errors): a local run's own
    # snapshot, or a remote one's copied into a temporary file.
    if not storage.is_remote:
        yield storage.local / CONFIG_SNAPSHOT
        return
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / CONFIG_SNAPSHOT
        snapshot.write_text(text)
        yield snapshot
