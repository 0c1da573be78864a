"""A Ray head on this machine for a while: `ray start --head --block` on 127.0.0.1 with
every port chosen free (so another Ray here cannot clash), stopped at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalHead:
    """Where the head listens."""

    gcs: str  # for `gobig train --address` / ray.init
    dashboard: str  # for `gobig submit|jobs --address`


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_ray_head(num_cpus: int = 2) -> Iterator[LocalHead]:
    """Start the head (returns while it is still starting up); stop it on exit."""
    ray_bin = Path(sys.executable).parent / "ray"  # the ray CLI beside this interpreter
    ray_cmd = str(ray_bin) if ray_bin.is_file() else shutil.which("ray")
    if not ray_cmd:
        raise RuntimeError("the ray command is not installed")
    temp_dir = tempfile.mkdtemp(prefix="gbray", dir="/tmp")  # unix socket paths stay short
    port, dash_port = _free_port(), _free_port()
    head = subprocess.Popen(
        [ray_cmd, "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash_port}", f"--ray-client-server-port={_free_port()}",
         f"--dashboard-agent-listen-port={_free_port()}",
         f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
         f"--runtime-env-agent-port={_free_port()}",
         f"--num-cpus={num_cpus}", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        yield LocalHead(gcs=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dash_port}")
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # whatever of the head is still there
        shutil.rmtree(temp_dir, ignore_errors=True)
