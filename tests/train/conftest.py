"""Drive the worker (`python -m train`, alone or under torchrun) in subprocesses.

Every run trains the same small GPT on the session's Shakespeare shards
(tests/conftest.py), so runs are comparable step by step. Runs that several
tests read (the straight reference runs) are made once per session by
`TrainRuns` and reused; a test that changes a run copies it first.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from train.checkpoint.location import split_run_dir

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6  # a straight run: 2N steps
HALF = 3  # N: where interrupted runs stop and checkpoints are
# A fake secret: it must never be written anywhere by a run that sees it.
SECRET = "gobig-test-secret-8c1f0e7d2b9a4653"

GPT = [
    "model.name=gpt-tiny", "model.n_layer=2", "model.n_head=2", "model.d_model=64",
    "model.max_seq_len=32", "model.dropout=0.1",
    "train.micro_batch_size=4", f"train.max_steps={STEPS}", "train.log_every=1",
    f"train.eval_every={HALF}", "train.eval_batches=2", f"train.checkpoint_every={HALF}",
    "optim.lr=2e-3", "optim.warmup_steps=2", f"optim.decay_steps={STEPS}",
    "logging.wandb.mode=disabled",
]  # fmt: skip


@dataclass
class Run:
    """A finished `python -m train` invocation."""

    run_dir: Path
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Run:
        assert self.returncode == 0, f"exit {self.returncode}\n{self.failure()}"
        return self

    def failure(self) -> str:
        """The first rank's traceback (what failed first) and the tail of stderr: the
        tail alone is mostly torchrun's report and the other ranks' broken pipes."""
        lines = self.stderr.splitlines()
        first = next((i for i, line in enumerate(lines) if "Traceback" in line), len(lines))
        return "\n".join(lines[first : first + 40]) + "\n...\n" + self.stderr[-2500:]

    def records(self, kind: str = "train") -> list[dict]:
        lines = (self.run_dir / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, filter(None, lines)) if r["kind"] == kind]

    def losses(self) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in self.records()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(tmp: Path, secret: bool = False) -> dict[str, str]:
    """The environment of a run: W&B's own files in `tmp`, no real API key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    for name in ("CONFIG", "CACHE", "DATA", "ARTIFACT"):
        env[f"WANDB_{name}_DIR"] = str(tmp / f"wandb-{name.lower()}")
    env["WANDB_SILENT"] = "true"
    env["PYTHONPATH"] = str(ROOT)
    if secret:
        env["WANDB_API_KEY"] = SECRET
    return env


def run_train(
    args: list[str], run_dir: Path | str, *, nproc: int = 1, resume: bool = False,
    env: dict[str, str] | None = None, timeout: float = 240,
) -> Run:  # fmt: skip
    """`python -m train` (nproc 1) or torchrun; kills the whole process group on timeout.

    Args:
        args: config overrides (run.dir/run.name are added for fresh runs).
        run_dir: the run directory (created by the run, or resumed): a path or a URI.
        nproc: processes (torchrun when > 1).
        resume: `--resume run_dir` instead of a fresh run.
        env: the environment (default: `base_env`).
        timeout: seconds before the run is killed and the test fails.
    """
    if nproc == 1:
        cmd = [sys.executable, "-m", "train"]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "train",
        ]  # fmt: skip
    if resume:
        cmd += ["--resume", str(run_dir), *args]
    else:
        parent, name = split_run_dir(run_dir)
        cmd += [*args, f"run.dir={parent}", f"run.name={name}"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env or base_env(run_dir.parent), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout}s\n{err[-3000:]}")
    finally:
        # torchrun's workers live in the same session: never leave one behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return Run(run_dir, proc.returncode, out, err)


@functools.cache
def vocab_size(dataset: Path) -> int:
    """The vocabulary of a text dataset's own tokenizer."""
    from data_pipeline import Tokenizer

    return Tokenizer(dataset / "tokenizer.model").vocab_size


def gpt_args(dataset: Path, nproc: int, stage: int, *extra: str) -> list[str]:
    return [*GPT, f"data.source={dataset}", f"model.vocab_size={vocab_size(dataset)}",
            f"cluster.num_workers={nproc}", f"zero.stage={stage}", *extra]  # fmt: skip


class TrainRuns:
    """Session-wide, made-once runs that several tests compare against."""

    def __init__(self, root: Path, text: Path):
        self.root = root
        self.text = text
        self._done: dict[str, Run] = {}

    def _once(self, key: str, make) -> Run:
        if key not in self._done:
            self._done[key] = make(self.root / key)
        return self._done[key]

    def straight(self, nproc: int, stage: int, dropout: float = 0.1) -> Run:
        """2N steps in one go; 1-process ZeRO-0 runs log to W&B offline with a secret set."""
        wandb = nproc == 1 and stage == 0

        def make(run_dir: Path) -> Run:
            extra = [f"model.dropout={dropout}"]
            if wandb:
                extra.append("logging.wandb.mode=offline")
            args = gpt_args(self.text, nproc, stage, *extra)
            return run_train(args, run_dir, nproc=nproc, env=base_env(self.root, wandb)).check()

        return self._once(f"straight-p{nproc}-z{stage}-d{dropout}", make)

    def interrupted(self, nproc: int, stage: int) -> Run:
        """N steps, stop, then `--resume` to 2N in the same run directory (the resumed run)."""
        wandb = nproc == 1 and stage == 0
        env = base_env(self.root, wandb)

        def make(run_dir: Path) -> Run:
            extra = [f"train.max_steps={HALF}"]
            if wandb:
                extra.append("logging.wandb.mode=offline")
            args = gpt_args(self.text, nproc, stage, *extra)
            first = run_train(args, run_dir, nproc=nproc, env=env).check()
            args = [f"train.max_steps={STEPS}"]
            second = run_train(args, run_dir, nproc=nproc, resume=True, env=env).check()
            # Both attempts' output (the resumed one's "resumed from" line included).
            second.stdout, second.stderr = (
                first.stdout + second.stdout,
                first.stderr + second.stderr,
            )
            return second

        return self._once(f"interrupted-p{nproc}-z{stage}", make)


@pytest.fixture(scope="session")
def runs(tmp_path_factory, text_dataset) -> TrainRuns:
    return TrainRuns(tmp_path_factory.mktemp("train-runs"), text_dataset)


def copy_run(run: Run, dest: Path) -> Path:
    """A copy of a run directory (for tests that alter checkpoints)."""
    shutil.copytree(run.run_dir, dest, symlinks=True)
    return dest


def wandb_records(run_dir: Path) -> list[tuple[str, object]]:
    """(offline run directory name, protobuf Record) of every W&B attempt of a run."""
    from wandb.proto import wandb_internal_pb2

    found = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for payload in _leveldb_log_records(path.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            found.append((path.parent.name, record))
    return found


def _leveldb_log_records(data: bytes):
    # W&B's transaction log: a 7-byte header, then LevelDB-log framed records
    # (crc32 u32, length u16, type u8) in 32 KiB blocks; types 1 full, 2 first,
    # 3 middle, 4 last.
    import struct

    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left  # zero padding to the end of the block
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def wandb_history_steps(run_dir: Path) -> list[int]:
    """Every step W&B was sent, over all attempts, in order (duplicates kept)."""
    return [
        rec.history.step.num
        for _, rec in wandb_records(run_dir)
        if rec.WhichOneof("record_type") == "history"
    ]
