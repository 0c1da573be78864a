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
        # Per kind, the highest step W&B has: a rollback replays steps already sent.
        self.sent = {"train": skip_through, "eval": skip_through}
        self.anomalies = 0

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        kind = record["kind"]
        if kind == "anomaly":
            self._anomaly(record)
            return
        if kind == "samples":
            self._samples(record)
            return
        # Checkpoint records are written at a later step than their own and startup
        # records are per attempt: W&B's history is steps and evaluations.
        if kind not in self.sent or record["step"] <= self.sent[kind]:
            return
        self.sent[kind] = record["step"]
        payload = {
            f"{kind}/{k}": v
            for k, v in record.items()
            if k not in ("kind", "step") and isinstance(v, int | float)
        }
        self.run.log(payload, step=record["step"])

    def _samples(self, record: dict[str, Any]) -> None:
        # Logged at the evaluation's step, once (a replayed step is not sent again).
        if record["step"] <= self.sent["eval"]:
            return
        import wandb

        columns = ["step", "prompt", "text"]
        if any("reference" in s for s in record["samples"]):  # translations
            columns.append("reference")
        rows = [[record["step"], *(s.get(c, "") for c in columns[1:])] for s in record["samples"]]
        table = wandb.Table(columns=columns, data=rows)
        self.run.log({"samples": table}, step=record["step"])

    def _anomaly(self, record: dict[str, Any]) -> None:
        # Not a history row (a rollback would log a step out of order): the
        # run's summary keeps the count and the latest, and an online run alerts.
        self.anomalies += 1
        text = f"step {record['step']}: {record['reason']} (policy {record['policy']})"
        self.run.summary["anomalies"] = self.anomalies
        self.run.summary["last_anomaly"] = text
        if getattr(self.run.settings, "mode", "offline") == "online":
            self.run.alert(title="gobig: training anomaly", text=text)

    def on_close(self, trainer: Any, result: Any) -> None:
        self.run.finish()
