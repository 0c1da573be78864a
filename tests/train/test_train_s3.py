"""A run directory on S3 (train/checkpoint/storage.py through pyarrow.fs), against a local
S3 server: moto's, bound to 127.0.0.1, with fake credentials.

End to end: N steps into `s3://bucket/runs/<name>?endpoint_override=...&scheme=http`,
the local staging directory thrown away, then `--resume URI` to 2N: the bucket
holds the run's files and checkpoints, and the losses after N equal the
straight run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import moto.server  # noqa: F401  (the dev extra: its absence must fail, not skip)
import pyarrow.fs as pafs
import pytest

from tests.train.conftest import HALF, STEPS, base_env, gpt_args, run_train
from train.checkpoint.location import join_run_dir, staging_dir
from train.checkpoint.storage import RunStorage

pytestmark = pytest.mark.timeout(600)

BUCKET = "bucket"
# Fake credentials for the local server; never real ones.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _aws_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with every AWS_* setting replaced by the fake ones."""
    return {**{k: v for k, v in env.items() if not k.startswith("AWS_")}, **AWS_ENV}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint "127.0.0.1:PORT", S3FileSystem) of a moto server holding `bucket`."""
    port = _free_port()
    endpoint = f"127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    env = _aws_env(dict(os.environ))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto server exited {proc.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"moto server not answering on {endpoint}:\n{log_path.read_text()}")
            time.sleep(0.1)
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint, scheme="http", access_key="test",
            secret_key="test", region="us-east-1", allow_bucket_creation=True,
        )  # fmt: skip
        fs.create_dir(BUCKET)
        with pytest.MonkeyPatch.context() as mp:
            for key in [k for k in os.environ if k.startswith("AWS_")]:
                mp.delenv(key)
            for key, value in AWS_ENV.items():
                mp.setenv(key, value)
            yield endpoint, fs
    finally:
        _stop(proc)


def _remote_text(fs, path: str) -> str:
    with fs.open_input_stream(path) as fh:
        return fh.read().decode()


def _remote_losses(fs, home: str) -> dict[int, float]:
    records = map(json.loads, filter(None, _remote_text(fs, f"{home}/metrics.jsonl").splitlines()))
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def test_s3_run_dir_trains_uploads_and_resumes_exactly(s3, runs, text_dataset, tmp_path):
    endpoint, fs = s3
    straight = runs.straight(1, 0)
    parent = f"s3://{BUCKET}/runs?endpoint_override={endpoint}&scheme=http"
    uri = str(join_run_dir(parent, "s3-run"))
    home = f"{BUCKET}/runs/s3-run"
    env = _aws_env(base_env(tmp_path))
    args = gpt_args(text_dataset, 1, 0, f"train.max_steps={HALF}", "logging.wandb.mode=offline")
    first = run_train(args, uri, env=env, timeout=120).check()

    assert f"run directory    {uri}" in first.stdout
    listed = {
        info.path[len(home) + 1 :]
        for info in fs.get_file_info(pafs.FileSelector(home, recursive=True))
        if info.type == pafs.FileType.File
    }
    assert {
        f"checkpoints/step_{HALF:08d}/COMPLETE", "metrics.jsonl", "config.yaml", "run.json",
    } <= listed  # fmt: skip
    assert RunStorage(uri).newest_complete() == f"step_{HALF:08d}"  # sizes match remotely
    wandb_id = json.loads(_remote_text(fs, f"{home}/run.json"))["wandb_id"]

    # A new machine: nothing local survives, the URI alone carries the run.
    local = staging_dir(uri)
    assert local.is_dir() and Path(os.environ["GOBIG_CACHE"]) in local.parents
    shutil.rmtree(local)
    second = run_train([f"train.max_steps={STEPS}"], uri, resume=True, env=env, timeout=120)
    second.check()
    checkpoint_uri = join_run_dir(uri, f"checkpoints/step_{HALF:08d}")
    assert f"resumed from {checkpoint_uri} at step {HALF}" in second.stdout

    want, got = straight.losses(), _remote_losses(fs, home)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s] for s in range(HALF + 1, STEPS + 1)] == [
        want[s] for s in range(HALF + 1, STEPS + 1)
    ]
    assert RunStorage(uri).newest_complete() == f"step_{STEPS:08d}"
    assert json.loads(_remote_text(fs, f"{home}/run.json"))["wandb_id"] == wandb_id
