"""Ray Jobs: submit gobig runs to a cluster and manage them.

The project directory is shipped as the job's working directory (without
local environments, runs and caches) together with its Python requirements;
the job's entrypoint is `python -m cluster.cli train ...` on the cluster.

Token authentication: when the cluster has it on, the client needs
RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN, or Ray's token file).
gobig turns the mode on whenever a token is available (cluster/ray_auth.py)
and never prints it.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import tomllib

from cluster.errors import ClusterError, UsageError
from cluster.ray_auth import TOKEN_FILE, enable_token_auth_if_available

SHIP_EXCLUDES = [
    ".venv", ".git", "runs", "wandb", "data", "*.egg-info", "__pycache__",
    ".pytest_cache", ".ruff_cache", "bench/results",
]  # fmt: skip
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
STOP_GRACE_S = 300


class JobsError(ClusterError):
    """The cluster could not be reached or refused the request (one-line message)."""


def job_client(address: str) -> Any:
    # The mode must be set before Ray is imported: Ray reads it once.
    enable_token_auth_if_available()
    # Ray's packaging chatter (one INFO line per ignored file) is noise here.
    logging.getLogger("ray").setLevel(logging.WARNING)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise JobsError(
            f"{address} requires a Ray auth token: set RAY_AUTH_TOKEN or put the "
            f"cluster's token in {TOKEN_FILE}"
        ) from None
    except ConnectionError as exc:
        raise JobsError(f"cannot reach the Ray dashboard at {address}: {exc}") from None


def project_requirements(repo_root: Path) -> list[str]:
    """The project's runtime dependencies, as pyproject.toml lists them."""
    data = tomllib.loads((repo_root / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def build_runtime_env(repo_root: Path, with_requirements: bool = True) -> dict[str, Any]:
    from cluster.ray_session import WORKER_ENV

    env: dict[str, Any] = {
        "working_dir": str(repo_root),
        "excludes": SHIP_EXCLUDES,
        # `gobig jobs stop` sends SIGTERM; give the run time to write its final
        # checkpoint before Ray escalates to SIGKILL (its default wait is 3 s).
        "env_vars": {**WORKER_ENV, "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)},
    }
    if with_requirements:
        env["pip"] = project_requirements(repo_root)
    return env


def entrypoint(config_path: Path | None, overrides: list[str], repo_root: Path) -> str:
    """The job's command: `gobig train` on the cluster, against the cluster itself."""
    args = ["python", "-m", "cluster.cli", "train"]
    if config_path is not None:
        path = Path(config_path).resolve()
        # Configs inside the project travel with it; name them relative to it.
        try:
            args.append(str(path.relative_to(repo_root)))
        except ValueError:
            args.append(str(path))
    args += overrides
    args += ["--address", "auto"]
    return shlex.join(args)


def submit(
    address: str, config_path: Path | None, overrides: list[str], wait: bool, repo_root: Path,
    with_requirements: bool = True,
) -> int:  # fmt: skip
    """Submit a training job; print its id; follow its logs unless `wait` is False."""
    _warn_if_run_dir_is_ephemeral(overrides, config_path)
    client = job_client(address)
    job_id = _submit_when_ready(
        client,
        entrypoint=entrypoint(config_path, overrides, repo_root),
        runtime_env=build_runtime_env(repo_root, with_requirements),
        metadata={"submitted_by": "gobig"},
    )
    print(f"gobig: submitted job {job_id} to {address}", flush=True)
    if not wait:
        print(f"gobig: follow it with: gobig jobs logs {job_id} --address {address}")
        return 0
    return follow(client, job_id)


def _submit_when_ready(client: Any, timeout_s: float = 120.0, **job: Any) -> str:
    # A freshly started head answers before its job agent is up; Ray then
    # refuses submissions for a few seconds. Waiting beats failing the user.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise JobsError(f"the cluster refused the job: {exc}") from None
            time.sleep(2.0)


def follow(client: Any, job_id: str) -> int:
    """Stream a job's logs until it ends; exit code 0 only if it succeeded."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())
    status = wait_for_end(client, job_id)
    print(f"gobig: job {job_id} {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def wait_for_end(client: Any, job_id: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def jobs_command(address: str, args: list[str]) -> int:
    """`gobig jobs list | status ID | logs ID | stop ID`."""
    if not args or args[0] not in ("list", "status", "logs", "stop"):
        raise UsageError("usage: gobig jobs list|status|logs|stop [JOB_ID] --address ADDR")
    action, rest = args[0], args[1:]
    client = job_client(address)
    if action == "list":
        for job in client.list_jobs():
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime((job.start_time or 0) / 1000))
            print(f"{job.submission_id or job.job_id}  {job.status.value:<9}  {started}  "
                  f"{job.entrypoint}")  # fmt: skip
        return 0
    if len(rest) != 1:
        raise UsageError(f"usage: gobig jobs {action} JOB_ID --address ADDR")
    job_id = rest[0]
    if action == "status":
        print(client.get_job_status(job_id).value)
    elif action == "logs":
        return follow(client, job_id)
    else:
        stopped = client.stop_job(job_id)
        print(f"gobig: {'stopping' if stopped else 'not running:'} job {job_id}")
    return 0


def _warn_if_run_dir_is_ephemeral(overrides: list[str], config_path: Path | None) -> None:
    from train.config import load_config

    run_dir = load_config(config_path, overrides, check_paths=False).run.dir
    if "://" not in run_dir and not Path(run_dir).is_absolute():
        print(
            f"gobig: warning: run.dir {run_dir!r} is relative; on the cluster it lands in the "
            "job's temporary working directory. Set run.dir to a shared path or an "
            "s3:// / gs:// URI to keep checkpoints.",
            file=sys.stderr,
        )
