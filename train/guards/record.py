"""The run's guard record, RUN_DIR/guards.json: anomalies, skipped updates, skipped data.

An anomaly withholds an update; a rollback also skips the batches that led to
it. Both change what a later attempt must do at those steps to reproduce the
run, so they are written down here (rank 0, atomically) and every attempt
(a restart, a resume, `gobig resume`) reads them back:

    {"anomalies": [{"step", "reason", "loss", "grad_norm", "policy"}, ...],
     "skipped_updates": [step, ...],
     "skipped_batches": [{"step", "micro_batches", "from", "to"}, ...]}

`skipped_batches` entry: before step `step` draws its batches, `micro_batches`
micro-batches are drawn and dropped; `from` and `to` are the data loader's
positions around them (the skipped sample range), filled in when it happens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GUARDS_FILE = "guards.json"


class GuardRecord:
    """Rank 0 writes it; every rank reads it at start, from the run's home (a URI
    run's ranks on other nodes have no staging copy of it).

    Args:
        storage: the run's RunStorage (train/checkpoint/storage.py).
        is_main: whether this rank writes.
    """

    def __init__(self, storage: Any, is_main: bool):
        self.storage = storage
        self.path = Path(storage.local) / GUARDS_FILE
        self.is_main = is_main
        text = storage.read_text(GUARDS_FILE)
        data: dict[str, Any] = json.loads(text) if text else {}
        self.anomalies: list[dict[str, Any]] = data.get("anomalies", [])
        self.skipped_updates: list[int] = data.get("skipped_updates", [])
        self.skipped_batches: list[dict[str, Any]] = data.get("skipped_batches", [])

    def save(self) -> None:
        if not self.is_main:
            return
        data = {
            "anomalies": self.anomalies,
            "skipped_updates": sorted(set(self.skipped_updates)),
            "skipped_batches": sorted(self.skipped_batches, key=lambda s: s["step"]),
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self.path)
        if self.storage.remote is not None:  # small, and every later attempt needs it
            self.storage.remote.upload(self.path, GUARDS_FILE)

    def add_anomaly(self, anomaly: dict[str, Any]) -> None:
        self.anomalies.append(anomaly)
        self.save()

    def skip_update(self, step: int) -> None:
        if step not in self.skipped_updates:
            self.skipped_updates.append(step)
            self.save()

    def update_skipped(self, step: int) -> bool:
        return step in self.skipped_updates

    def skip_batches(self, step: int, micro_batches: int) -> None:
        """Before step `step`, drop `micro_batches` micro-batches (once per step)."""
        if any(s["step"] == step for s in self.skipped_batches):
            return
        self.skipped_batches.append({"step": step, "micro_batches": micro_batches})
        self.save()

    def batches_to_skip(self, step: int) -> dict[str, Any] | None:
        return next((s for s in self.skipped_batches if s["step"] == step), None)

    def recent_anomalies(self, step: int, window: int) -> list[dict[str, Any]]:
        """Anomalies at steps in (step - window, step]."""
        return [a for a in self.anomalies if step - window < a["step"] <= step]
