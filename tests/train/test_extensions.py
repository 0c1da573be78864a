"""DeepSpeed's compiled ops get a folder per Python environment, and a lock left by a
builder that died is cleared instead of waited on forever."""

from __future__ import annotations

import os
import time

from train.extensions import STALE_LOCK_S, extensions_dir, prepare_extensions_dir


def test_each_environment_builds_in_its_own_folder_and_the_user_wins(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    mine = extensions_dir()
    monkeypatch.setattr("sys.prefix", str(tmp_path / "another-venv"))
    assert extensions_dir() != mine and extensions_dir().parent == mine.parent
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "users"))
    assert extensions_dir() == tmp_path / "users"


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, fresh = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "cpu_adam" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir()
        lock.touch()
    old = time.time() - STALE_LOCK_S - 60
    os.utime(stale, (old, old))
    assert prepare_extensions_dir() == tmp_path
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path)
    assert not stale.exists() and fresh.exists()  # a build may still be running
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"gobig: warning: removed {stale}, a build lock left 11 min ago")
