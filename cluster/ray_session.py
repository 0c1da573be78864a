"""Connecting to Ray: an existing cluster by address, or an embedded local one.

The embedded cluster listens on 127.0.0.1 only (cluster/loopback.py: Ray's
servers, and the workers' process group), keeps its dashboard on loopback, and
is shut down when the command ends. A cluster address comes from `--address`,
then `cluster.address`, then RAY_ADDRESS.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from cluster.errors import ClusterError
from train.config import ConfigError
from train.config.schema import ExperimentConfig
from train.process_env import training_env

# Workers print gobig's own lines once (Ray Train would otherwise also echo
# every print through its logger), and start with the training environment.
WORKER_ENV = {
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "PYTHONWARNINGS": "ignore::FutureWarning",
    **training_env(),
}


def check_reachable(address: str) -> None:
    """Fail fast on a host:port nobody listens on (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", ray:// and the like: Ray resolves them itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {reason}") from None


def _connection_problem(address: str, exc: BaseException) -> str:
    from ray.exceptions import AuthenticationError

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, AuthenticationError):
            return (
                f"the Ray cluster at {address} requires an auth token: set RAY_AUTH_TOKEN "
                "or put the cluster's token in ~/.ray/auth_token"
            )
        cause = cause.__cause__ or cause.__context__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot connect to the Ray cluster at {address}: {first}"


def cluster_address(config: ExperimentConfig, cli_address: str | None = None) -> str | None:
    """The Ray cluster to use, or None for an embedded local one."""
    return cli_address or config.cluster.address or os.environ.get("RAY_ADDRESS") or None


@dataclass(frozen=True)
class RaySession:
    """The Ray a run uses: a description, and whether gobig embedded it here."""

    where: str
    embedded: bool


@contextlib.contextmanager
def ray_session(config: ExperimentConfig, address: str | None) -> Iterator[RaySession]:
    """Ray, connected for the duration of the block.

    An already-initialised Ray is used as it is and left running: a caller's
    own (tests, notebooks), or one an outer `ray_session` block of gobig's
    opened (check-resume runs two trainings on one Ray), which keeps its kind.
    """
    if address is not None:
        from cluster.ray_auth import enable_token_auth_if_available

        enable_token_auth_if_available()  # before Ray is imported: it reads the mode once
    import ray

    if ray.is_initialized():
        if _current is not None:  # gobig's own, opened by an outer block (check-resume)
            yield _current
        else:
            yield RaySession("the current Ray session", embedded=False)
        return
    needed = config.cluster.num_workers * config.cluster.cpus_per_worker
    if address is None:
        cpus = os.cpu_count() or 1
        if needed > cpus:
            raise ConfigError(
                f"cluster.num_workers x cluster.cpus_per_worker needs {needed:g} CPUs; "
                f"this machine has {cpus} (lower them, or pass --address of a cluster)"
            )
        from cluster.loopback import embedded_on_loopback

        with embedded_on_loopback():
            ray.init(
                # "local": a new embedded instance even if `ray start` left one running.
                address="local",
                num_cpus=cpus,
                # Ray Train's bookkeeping queries the state API, which lives in the
                # dashboard process; it listens on loopback only.
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                _node_ip_address="127.0.0.1",
                logging_level=logging.WARNING,
                runtime_env={"env_vars": WORKER_ENV},
            )
            yield from _opened(RaySession("embedded local Ray (127.0.0.1)", embedded=True))
        return
    # A submitted job already carries WORKER_ENV in its own runtime env (and
    # Ray refuses to merge the same keys twice).
    in_job = all(os.environ.get(k) == v for k, v in WORKER_ENV.items())
    runtime_env = None if in_job else {"env_vars": WORKER_ENV}
    try:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
    except ConnectionError as exc:
        raise ClusterError(_connection_problem(address, exc)) from None
    yield from _opened(RaySession(f"Ray cluster at {address}", embedded=False))


_current: RaySession | None = None  # the session gobig opened and has not closed yet


def _opened(session: RaySession) -> Iterator[RaySession]:
    import ray

    global _current
    _current = session
    try:
        yield session
    finally:
        _current = None
        ray.shutdown()
