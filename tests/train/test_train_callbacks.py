"""The Trainer's hooks, seen from a callback a user passes to `fit`, and the optional
torch.profiler callback: one short real run (DeepSpeed on CPU, real shards)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.train.conftest import ROOT, base_env, gpt_args

pytestmark = pytest.mark.timeout(300)

PROBE = """
from train.process_env import apply_training_env
apply_training_env()
import json, sys
from train.callbacks import Callback
from train.config import load_config
from train.trainer import fit

class Recorder(Callback):
    def __init__(self):
        self.events = []
    def on_train_start(self, trainer):
        self.events.append(["start", trainer.progress.step])
    def on_step_end(self, trainer, step):
        self.events.append(["step", step.step, step.units])
    def on_log(self, trainer, record):
        self.events.append(["log", record["kind"], record["step"], sorted(record)])
        record["seen_by_probe"] = True  # a callback may add keys before the write
    def on_checkpoint(self, trainer, saved):
        self.events.append(["checkpoint", saved.step, saved.path.name])
    def on_close(self, trainer, result):
        self.events.append(["close", result.step])

out, run_dir, *overrides = sys.argv[1:]
recorder = Recorder()
fit(load_config(None, overrides), run_dir, resume=False, callbacks=[recorder])
open(out, "w").write(json.dumps(recorder.events))
"""

STEPS = 6


def test_callbacks_see_every_hook_in_order_and_the_profiler_writes_a_trace(text_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = gpt_args(text_dataset, 1, 0, f"train.max_steps={STEPS}", "train.log_every=2",
                    "train.eval_every=3", "train.checkpoint_every=3",
                    "logging.profile.enabled=true", "logging.profile.wait=1",
                    "logging.profile.warmup=1", "logging.profile.active=2")  # fmt: skip
    out = tmp_path / "events.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), str(run_dir), *args],
        cwd=ROOT, env=base_env(tmp_path), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = json.loads(out.read_text())

    assert events[0] == ["start", 0] and events[-1] == ["close", STEPS]
    steps = [e for e in events if e[0] == "step"]
    assert [e[1] for e in steps] == list(range(1, STEPS + 1))
    assert all(e[2] > 0 for e in steps)  # units (tokens) over all ranks
    # Checkpoints: every 3 steps; each committed one is announced once.
    assert [e[1:] for e in events if e[0] == "checkpoint"] == [
        [3, "step_00000003"], [6, "step_00000006"],
    ]  # fmt: skip
    # A train record reaches user callbacks with the throughput callback's keys in it.
    train_logs = [e for e in events if e[:2] == ["log", "train"]]
    assert [e[2] for e in train_logs] == [2, 4, 6]
    assert all({"loss", "mfu", "tokens_per_s", "tokens_seen"} <= set(e[3]) for e in train_logs)
    # Hooks come in loop order: step 3's step end, then its eval log, then its checkpoint.
    kinds_at_3 = [e[0] if e[0] != "log" else e[1] for e in events if e[1] == 3 or e[2:3] == [3]]
    assert kinds_at_3.index("step") < kinds_at_3.index("eval") < kinds_at_3.index("checkpoint")
    # What a callback adds to a record is written with it.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r.get("seen_by_probe") for r in records)

    trace = run_dir / "profile" / "rank_00000.json"
    assert trace.is_file(), proc.stdout[-2000:]
    text = trace.read_text()
    for label in ("gobig.data", "gobig.forward", "gobig.backward", "gobig.optimizer"):
        assert label in text
    assert "profile of steps" in proc.stdout
