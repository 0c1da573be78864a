"""`gobig train` / `gobig resume` end to end on an embedded local Ray.

Two workers at ZeRO-2, real DeepSpeed on CPU with gloo, real shards.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from tests.cluster.conftest import (
    BASELINE_STEPS,
    ROOT,
    TINY,
    gobig,
    text_overrides,
    train_losses,
    two_workers,
    wait_for,
)  # fmt: skip
from train.checkpoint import list_checkpoints, newest_complete, verify
from train.metrics_log import read_metrics

pytestmark = pytest.mark.timeout(600)


def test_gpt_end_to_end_ontwo_workers(gpt_run):
    losses = train_losses(gpt_run)
    assert sorted(losses) == list(range(1, BASELINE_STEPS + 1))
    assert losses[BASELINE_STEPS] < losses[1]
    workers = [json.loads(p.read_text()) for p in sorted((gpt_run / "workers").glob("*.json"))]
    assert [w["rank"] for w in workers] == [0, 1]
    newest = newest_complete(gpt_run)
    assert newest is not None and newest.name == f"step_{BASELINE_STEPS:08d}"
    assert {p.name for p in newest.glob("rank_*.pt")} == {"rank_00000.pt", "rank_00001.pt"}
    assert (gpt_run / "config.yaml").is_file() and (gpt_run / "wandb").is_dir()


def test_background_checkpoints_in_ray_workers(gpt_run, text_dataset, tmp_path):
    """Ray workers fork their checkpoint writers; training is the reference's, step for
    step, and every checkpoint ends complete."""
    proc = gobig(
        "train", *text_overrides(text_dataset), *two_workers(tmp_path, "async"),
        f"train.max_steps={BASELINE_STEPS}", "checkpoint.asynchronous=true",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "async"
    assert train_losses(run_dir) == train_losses(gpt_run)
    saves = {r["step"]: r["background"] for r in read_metrics(run_dir) if r["kind"] == "checkpoint"}
    assert saves == {2: True, 4: True, 6: True, 8: False}
    assert all(verify(c) is None for c in list_checkpoints(run_dir))


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_bert_and_vit_end_to_end(family, text_dataset, image_dataset, tmp_path):
    if family == "bert":
        overrides = text_overrides(text_dataset, "bert")
    else:
        overrides = ["model.name=vit-tiny", *TINY, f"data.source={image_dataset}",
                     "model.max_seq_len=65", "model.patch_size=8"]  # fmt: skip
    # One save (the final one) rather than one every 2 steps: nothing here is about checkpoints.
    proc = gobig("train", *overrides, *two_workers(tmp_path, family), "train.max_steps=4",
                 "train.checkpoint_every=4")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_metrics(tmp_path / family)
    evals = [r for r in records if r["kind"] == "eval"]
    key = "val_masked_accuracy" if family == "bert" else "val_accuracy"
    assert evals and key in evals[-1] and 0.0 <= evals[-1][key] <= 1.0
    rate_key = "tokens_per_s" if family == "bert" else "samples_per_s"
    assert all(r[rate_key] > 0 for r in records if r["kind"] == "train")


def test_sigkilled_worker_recovers_with_identical_losses(gpt_run, text_dataset, tmp_path):
    run_dir = tmp_path / "killed"
    killed: dict[str, int] = {}

    def kill_rank_one() -> None:
        # After a checkpoint exists (every 2 steps) and before the run ends.
        wait_for(lambda: (run_dir / "metrics.jsonl").is_file()
                 and max(train_losses(run_dir), default=0) >= 3, 300, "step 3")  # fmt: skip
        record = json.loads((run_dir / "workers" / "rank_00001.json").read_text())
        killed["pid"] = record["pid"]
        import os

        os.kill(record["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_rank_one, daemon=True)
    killer.start()
    proc = gobig(
        "train", *text_overrides(text_dataset), *two_workers(tmp_path, "killed"),
        f"train.max_steps={BASELINE_STEPS}", "cluster.max_failures=2",
    )  # fmt: skip
    killer.join(timeout=5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pid" in killed, "the worker was never killed"
    restarted = json.loads((run_dir / "workers" / "rank_00001.json").read_text())
    assert restarted["pid"] != killed["pid"], "rank 1 was not restarted"
    assert train_losses(run_dir) == train_losses(gpt_run)


def test_resume_with_a_different_number_of_workers(gpt_run, tmp_path):
    run_dir = tmp_path / "baseline"
    shutil.copytree(gpt_run, run_dir)
    wandb_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    proc = gobig("resume", str(run_dir), f"train.max_steps={BASELINE_STEPS + 3}",
                 "cluster.num_workers=1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert f"resumed elastically from {run_dir / 'checkpoints'}" in output
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, BASELINE_STEPS + 4))
    # Steps before the resume are the original run's, untouched.
    original = train_losses(gpt_run)
    assert {s: losses[s] for s in original} == original
    assert json.loads((run_dir / "run.json").read_text())["wandb_id"] == wandb_id
    meta = json.loads((newest_complete(run_dir) / "meta.json").read_text())
    assert (meta["step"], meta["world_size"]) == (BASELINE_STEPS + 3, 1)


def test_sigterm_on_the_driver_checkpoints_and_stops(text_dataset, tmp_path):
    run_dir = tmp_path / "stopped"
    driver = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "train", *text_overrides(text_dataset),
         *two_workers(tmp_path, "stopped"), "train.max_steps=1000",
         "train.checkpoint_every=1000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (run_dir / "metrics.jsonl").is_file()
                 and max(train_losses(run_dir), default=0) >= 2, 300, "step 2")  # fmt: skip
        driver.send_signal(signal.SIGTERM)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err[-3000:]
    assert "stopped early" in out
    newest = newest_complete(run_dir)
    assert newest is not None and verify(newest) is None
    last_step = max(train_losses(run_dir))
    assert newest.name == f"step_{last_step:08d}" and last_step < 1000
    assert len(list_checkpoints(run_dir)) == 1  # only the stop checkpoint


def test_uri_run_dir_on_ray(text_dataset, tmp_path):
    # file:// goes through pyarrow.fs like s3:// or gs://: workers stage
    # locally, upload their shards, and rank 0 marks the remote copy complete.
    from train.checkpoint.location import staging_dir

    home = tmp_path / "remote" / "uri"
    uri = f"file://{home}"
    proc = gobig("train", *text_overrides(text_dataset), *two_workers(tmp_path, "x"),
                 f"run.dir=file://{home.parent}", "run.name=uri", "train.max_steps=2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"gobig: run directory {uri}" in proc.stdout
    newest = newest_complete(home)
    assert newest is not None and newest.name == "step_00000002"
    assert {p.name for p in newest.glob("rank_*.pt")} == {"rank_00000.pt", "rank_00001.pt"}
    shutil.rmtree(staging_dir(uri))
    proc = gobig("resume", uri, "train.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout + proc.stderr
    assert sorted(train_losses(home)) == [1, 2, 3, 4]
    assert newest_complete(home).name == "step_00000004"
    assert (home / "wandb").is_dir() and "run finished at step 4" in proc.stdout


def test_unreachable_cluster_address_is_one_line_at_once(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = gobig("train", "configs/gpt-tiny.yaml", "--address", f"127.0.0.1:{port}",
                f"run.dir={tmp_path}", timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"gobig: error: cannot connect to the Ray cluster at 127.0.0.1:{port}: Connection refused"
    )


def test_a_user_error_raised_in_a_worker_is_one_line_exit_2(text_dataset, tmp_path):
    # The driver cannot see this one: only a worker's loader knows the tokenizer's
    # vocabulary is larger than the model's.
    out = gobig("train", *text_overrides(text_dataset), "model.vocab_size=8",
                "cluster.max_failures=0", f"run.dir={tmp_path}", timeout=300)  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("gobig: error: model.vocab_size (8) is smaller than the tokenizer's")
    assert "training failed" not in out.stderr and "Traceback" not in last
