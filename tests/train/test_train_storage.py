"""A run directory named by URI (train/checkpoint/storage.py), here `file://`: the same code
path as `s3://` or `gs://` (pyarrow.fs), with the remote side on local disk.

End to end: N steps into the URI, the local staging directory thrown away,
then `--resume URI` to 2N: the losses after N equal the straight run's, the
W&B id is kept, and the URI holds everything a run directory holds.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.train.conftest import HALF, STEPS, base_env, gpt_args, run_train
from train.checkpoint import MARKER, step_dir, verify
from train.checkpoint.location import join_run_dir, split_run_dir, staging_dir
from train.checkpoint.storage import RunStorage
from train.config import ConfigError, load_config
from train.metrics_log import read_metrics
from train.run_dir import load_run_config, new_run_dir

pytestmark = pytest.mark.timeout(600)


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def test_uri_run_dir_trains_uploads_and_resumes_exactly(runs, text_dataset, tmp_path):
    straight = runs.straight(1, 0)
    home = tmp_path / "remote" / "uri-run"
    uri = f"file://{home}"
    env = base_env(tmp_path)
    args = gpt_args(text_dataset, 1, 0, f"train.max_steps={HALF}", "logging.wandb.mode=offline")
    first = run_train(args, uri, env=env).check()

    assert f"run directory    {uri}" in first.stdout
    assert verify(step_dir(home, HALF)) is None  # COMPLETE, written last, sizes match
    assert {"config.yaml", "run.json", "metrics.jsonl", "result.json"} <= {
        p.name for p in home.iterdir()
    }
    assert list((home / "wandb").glob("offline-run-*"))
    wandb_id = json.loads((home / "run.json").read_text())["wandb_id"]

    # A new machine: nothing local survives, the URI alone carries the run.
    shutil.rmtree(staging_dir(uri))
    second = run_train([f"train.max_steps={STEPS}"], uri, resume=True, env=env).check()
    checkpoint_uri = join_run_dir(uri, f"checkpoints/step_{HALF:08d}")
    assert f"resumed from {checkpoint_uri} at step {HALF}" in second.stdout
    want, got = straight.losses(), _losses(home)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s] for s in range(HALF + 1, STEPS + 1)] == [
        want[s] for s in range(HALF + 1, STEPS + 1)
    ]
    assert verify(step_dir(home, STEPS)) is None
    assert json.loads((home / "run.json").read_text())["wandb_id"] == wandb_id
    meta = json.loads((step_dir(home, STEPS) / "meta.json").read_text())
    assert meta["wandb_run_id"] == wandb_id
    attempts = sorted((home / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(p.name.endswith(wandb_id) for p in attempts)


def _fake_checkpoint(home, step: int, payload: bytes = b"weights") -> None:
    ckpt = step_dir(home, step)
    (ckpt / "deepspeed").mkdir(parents=True)
    (ckpt / "deepspeed" / "model.pt").write_bytes(payload)
    (ckpt / "meta.json").write_text("{}")
    sizes = {"deepspeed/model.pt": len(payload), "meta.json": 2}
    (ckpt / MARKER).write_text(json.dumps({"files": sizes}))


def test_remote_checks_skip_a_truncated_checkpoint(tmp_path):
    home = tmp_path / "runs" / "r"
    uri = f"file://{home}"
    _fake_checkpoint(home, 1)
    _fake_checkpoint(home, 2)
    (step_dir(home, 2) / "deepspeed" / "model.pt").write_bytes(b"we")
    storage = RunStorage(uri)
    assert storage.list_checkpoints() == ["step_00000001", "step_00000002"]
    assert "truncated" in storage.verify("step_00000002")
    with pytest.warns(UserWarning, match=f"{uri}/checkpoints/step_00000002.*model.pt"):
        assert storage.newest_complete() == "step_00000001"


def test_uri_run_config_keeps_the_run_in_place(tmp_path):
    query = "?scheme=file"  # a query (e.g. an S3 endpoint) stays on the URI
    parent = f"file://{tmp_path}/runs{query}"
    config = load_config(None, ["model.name=gpt-tiny", f"run.dir={parent}"])
    uri = new_run_dir(config, "r")
    assert uri == f"file://{tmp_path}/runs/r{query}"
    assert split_run_dir(uri) == (parent, "r")
    with pytest.raises(ConfigError, match="no config.yaml"):
        load_run_config(uri, [])
    home = tmp_path / "runs" / "r"
    _fake_checkpoint(home, 1)
    (home / "config.yaml").write_text("model:\n  name: gpt-tiny\n")
    resumed = load_run_config(uri, ["train.max_steps=9"])
    assert (resumed.run.dir, resumed.run.name, resumed.train.max_steps) == (parent, "r", 9)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        new_run_dir(config, "r")
