"""An embedded run listens on loopback only: every listening TCP socket of the driver
and its descendants (Ray's servers, the train workers' rendezvous store and gloo) is
read from /proc while the run goes on, and any that is not on 127.0.0.0/8 or ::1 fails
the test. A single `python -m train` process is held to the same rule. (On this kind
of machine Ray, left to itself, takes the external address as its node's and listens
on every interface, so the test fails without cluster/loopback.py.)"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import ROOT, text_overrides

pytestmark = pytest.mark.timeout(300)


def _listening_inodes() -> dict[int, str]:
    """socket inode -> "address:port" of every listening TCP socket (/proc/net/tcp{,6})."""
    found = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = f"{socket.inet_ntop(family, raw)}:{int(hex_port, 16)}"
    return found


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rfind(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def _listeners(root: int) -> set[tuple[str, str]]:
    """(process command line, "address:port") of every socket the tree listens on."""
    inodes = _listening_inodes()
    seen = set()
    for pid in _descendants(root):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # the process ended meanwhile
        for link in links:
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                seen.add((command.strip(), inodes[int(link[8:-1])]))
    return seen


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _watch(cmd: list[str], timeout: float) -> tuple[int, set[tuple[str, str]], str]:
    """Run `cmd`, sampling its process tree's listeners until it exits."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= _listeners(proc.pid)
            time.sleep(0.3)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stderr = proc.communicate()[1]
    return proc.returncode, seen, stderr


def test_embedded_run_listens_on_loopback_only(text_dataset, tmp_path):
    cmd = [sys.executable, "-m", "cluster.cli", "train", *text_overrides(text_dataset),
           "cluster.num_workers=2", "zero.stage=2", "train.max_steps=24",
           "train.checkpoint_every=12", f"run.dir={tmp_path}"]  # fmt: skip
    code, seen, stderr = _watch(cmd, timeout=240)
    assert code == 0, stderr[-3000:]
    commands = " ".join(command for command, _ in seen)
    # the sample saw the whole stack: Ray's own servers and both training workers
    assert "gcs_server" in commands and "raylet" in commands
    assert sum(command.startswith("ray::RayTrainWorker") for command, _ in seen) >= 2
    exposed = sorted(f"{address} ({command[:100]})" for command, address in seen
                     if not _is_loopback(address))  # fmt: skip
    assert not exposed, "listening beyond loopback:\n" + "\n".join(exposed)


def test_single_process_run_listens_on_loopback_only(text_dataset, tmp_path):
    # 40 steps keep the process sampled for a while; a checkpoint in the middle and
    # one at the end (not every 2 steps, which doubled the run's time).
    cmd = [sys.executable, "-m", "train", "configs/gpt-tiny.yaml",
           *text_overrides(text_dataset), "train.max_steps=40", "train.checkpoint_every=20",
           f"run.dir={tmp_path}"]  # fmt: skip
    code, seen, stderr = _watch(cmd, timeout=180)
    assert code == 0, stderr[-3000:]
    assert seen, "the rendezvous store was never seen listening"
    exposed = sorted(address for _, address in seen if not _is_loopback(address))
    assert not exposed, f"listening beyond loopback: {exposed}"
