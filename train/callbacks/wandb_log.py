"""The W&B run of a gobig run and its callback: offline by default, resumable by id.

The run id lives in the run directory and in every checkpoint, so a resumed
or restarted run continues the same W&B run. The config sent to W&B is the
experiment config, which by construction holds no secrets; the API key is
read by wandb itself from WANDB_API_KEY and never passes through gobig.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from train.callbacks.base import Callback
from train.config.load import ConfigError
from train.config.schema import ExperimentConfig


def new_run_id() -> str:
    return secrets.token_hex(4)


def start_wandb(config: ExperimentConfig, run_dir: Path, run_id: str, run_name: str) -> Any:
    """A W&B run, or None when logging.wandb.mode is disabled.

    Args:
        config: the experiment (sent as the run's config).
        run_dir: W&B files go under RUN_DIR/wandb.
        run_id: stable id shared by every attempt of this run.
        run_name: display name.
    """
    settings = config.logging.wandb
    if settings.mode == "disabled":
        return None
    if settings.mode == "online" and not os.environ.get("WANDB_API_KEY"):
        raise ConfigError("logging.wandb.mode=online needs WANDB_API_KEY in the environment")
    import wandb

    return wandb.init(
        project=settings.project,
        entity=settings.entity,
        name=run_name,
        id=run_id,
        resume="allow",
        mode=settings.mode,
        dir=str(run_dir),
        tags=settings.tags or None,
        config=config.to_dict(),
        # gobig prints its own lines; W&B need not capture the console.
        settings=wandb.Settings(console="off", silent=True),
    )


class WandbCallback(Callback):
    """Mirrors train and eval records to a W&B run (rank 0), and finishes it.

    Args:
        run: the W&B run (start_wandb).
        skip_through: the highest step W&B already has (an earlier attempt sent
            it); records up to it are not sent again, so no step is logged twice.
    """

    def __init__(self, run: Any, skip_through: int = -1):
        self.run = run
        self.skip_through = skip_through

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        # Checkpoint records are written at a later step than their own and startup
        # records are per attempt: W&B's history is steps and evaluations.
        if record["kind"] not in ("train", "eval") or record["step"] <= self.skip_through:
            return
        payload = {
            f"{record['kind']}/{k}": v
            for k, v in record.items()
            if k not in ("kind", "step") and isinstance(v, int | float)
        }
        self.run.log(payload, step=record["step"])

    def on_close(self, trainer: Any, result: Any) -> None:
        self.run.finish()
