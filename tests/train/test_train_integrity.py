"""Silent corruption and failing storage (issue 12): checksums taken while writing and
checked on resume, `gobig verify`, non-finite weights refused, and a full disk (a real
tmpfs) failing a save on every rank as one line, the previous checkpoint kept."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cluster import cli
from tests.train.conftest import HALF, ROOT, STEPS, base_env, copy_run, gpt_args, run_train
from train.checkpoint import MARKER, CheckpointError, mark_complete, rank_file, step_dir, verify
from train.checkpoint.background import BackgroundWrite
from train.checkpoint.catalog import local_catalog, share_of
from train.checkpoint.checksum import HASH, hash_local_file
from train.checkpoint.finite import first_non_finite
from train.checkpoint.layout import rank_file_name, step_name
from train.checkpoint.selection import newest_intact
from train.checkpoint.storage import RunStorage
from train.checkpoint.write_errors import describe_write_error
from train.checkpoint.writer import CheckpointWriter
from train.distributed import DistInfo

pytestmark = pytest.mark.timeout(600)

# One file of each kind in a 2-rank ZeRO-2 checkpoint.
KINDS = {
    "model-states": "deepspeed/mp_rank_00_model_states.pt",
    "optimizer-states": "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt",
    "rank-state": "rank_00001.pt",
}


def flip_bytes(path: Path) -> None:
    """Invert 8 bytes in the middle of a file: its size, all a size check sees, stays."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


@contextlib.contextmanager
def tmpfs(path: Path, size: int):
    """A real, small file system at `path` (root only; the test is skipped otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    proc = subprocess.run(mount, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize(path: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def error_lines(run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("gobig: error:")]


def checkpoint_bytes(run_dir: Path, step: int) -> int:
    return local_catalog(run_dir).total_bytes(step_name(step))


# -- the writer, the marker, verify -----------------------------------------------------


def test_checksums_are_of_the_bytes_as_written(tmp_path):
    writer = CheckpointWriter(tmp_path, rank=3)
    state = {"w": torch.randn(10_000), "step": 7}
    target = tmp_path / "deepspeed" / "a.pt"
    writer.save(state, target)
    assert writer.finish() is None
    sums = json.loads((tmp_path / "sums_rank_00003.json").read_text())
    assert sums == {
        "hash": HASH,
        "files": {"deepspeed/a.pt": {"size": target.stat().st_size, HASH: hash_local_file(target)}},
    }
    assert torch.equal(torch.load(target, weights_only=True)["w"], state["w"])


def test_the_marker_folds_the_sums_and_checksums_catch_what_sizes_miss(tmp_path):
    ckpt = step_dir(tmp_path, 1)
    writer = CheckpointWriter(ckpt, rank=0)
    writer.save({"w": torch.randn(10_000)}, ckpt / "deepspeed" / "m.pt")
    writer.save({"data": {"index": 1}, "rng": {"torch": torch.ones(3)}}, rank_file(ckpt, 0))
    assert writer.finish() is None
    mark_complete(ckpt, {"step": 1}, world_size=1)
    marker = json.loads((ckpt / MARKER).read_text())
    assert marker["hash"] == HASH and set(marker["checksums"]) == set(marker["files"])
    assert set(marker["files"]) == {"deepspeed/m.pt", "rank_00000.pt", "meta.json",
                                    "sums_rank_00000.json"}  # fmt: skip
    assert marker["checksums"]["deepspeed/m.pt"] == writer.sums["deepspeed/m.pt"][HASH]
    assert verify(ckpt, checksums=True) is None
    flip_bytes(ckpt / "deepspeed" / "m.pt")
    assert verify(ckpt) is None  # the size is unchanged
    assert verify(ckpt, checksums=True) == "deepspeed/m.pt checksum mismatch (corrupt)"


def test_markers_without_checksums_are_still_checked_by_size(tmp_path):
    ckpt = step_dir(tmp_path, 1)
    (ckpt / "deepspeed").mkdir(parents=True)
    (ckpt / "deepspeed" / "m.pt").write_bytes(b"x" * 100)
    (ckpt / MARKER).write_text(json.dumps({"files": {"deepspeed/m.pt": 100}}))  # an old marker
    flip_bytes(ckpt / "deepspeed" / "m.pt")
    assert verify(ckpt, checksums=True) is None  # nothing to compare against
    (ckpt / "deepspeed" / "m.pt").write_bytes(b"x" * 50)
    assert "truncated" in verify(ckpt, checksums=True)


def test_reading_the_catalog_while_another_rank_unmarks_a_checkpoint(tmp_path):
    # A resumed run rewrites a checkpoint it skipped: one rank removes the old marker
    # and sums (`begin`) while rank 0 sizes the newest checkpoint. Reads that look
    # before they read failed here once in CI; a read must take "gone" as an answer.
    for step in (1, 2):
        ckpt = step_dir(tmp_path, step)
        writer = CheckpointWriter(ckpt, rank=0)
        writer.save({"w": torch.randn(1000)}, rank_file(ckpt, 0))
        assert writer.finish() is None
        mark_complete(ckpt, {"step": step}, world_size=1)
    newest = step_dir(tmp_path, 2)
    saved = {p.name: p.read_bytes() for p in (newest / MARKER, *newest.glob("sums_*"))}
    catalog, done = local_catalog(tmp_path), threading.Event()

    def unmark_and_remark() -> None:
        while not done.is_set():
            catalog.begin(newest.name)
            for name, data in saved.items():
                (newest / name).write_bytes(data)

    other_rank = threading.Thread(target=unmark_and_remark, daemon=True)
    other_rank.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert catalog.newest_bytes() > 0  # step 1 is always there to size
            assert catalog.newest_complete(warn=False) in (step_name(1), step_name(2))
            assert rank_file_name(0) in catalog.files.tree(newest.name)
    finally:
        done.set()
        other_rank.join(5)


def test_ranks_share_the_files_by_size_and_together_check_them_all():
    sizes = {"big.pt": 900, "mid.pt": 500, "a.pt": 400, "meta.json": 10, "rank_00000.pt": 90}
    shares = [share_of(sizes, (rank, 2)) for rank in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(sizes)  # every file, once
    loads = [sum(sizes[f] for f in share) for share in shares]
    assert loads == [990, 910]  # largest first, each to the lighter rank: about even
    assert share_of(sizes, (0, 1)) == sorted(sizes)


def test_a_failed_write_is_kept_as_one_line_and_stops_the_writer(tmp_path):
    seen = []

    def full_disk_at_b(path: str) -> None:  # the fault hook, simulating a full disk
        seen.append(Path(path).name)
        if path.endswith("b.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer = CheckpointWriter(tmp_path, 0, before_write=full_disk_at_b, expected_bytes=5_000_000)
    for name in ("a.pt", "b.pt", "c.pt"):
        writer.save({"x": torch.ones(3)}, tmp_path / name)  # never raises
    error = writer.finish()
    assert error.startswith("b.pt: no space left on device (the checkpoint needs about 5.0 MB")
    assert " free)" in error and "\n" not in error
    assert seen == ["a.pt", "b.pt"]  # nothing after the failure, not even the hook
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "sums_rank_00000.json").exists()


def test_torch_and_os_errors_are_named_by_their_cause(tmp_path):
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # what torch's serializer makes of an error from write(): no errno
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904
    except RuntimeError as exn:
        message = describe_write_error(exn, tmp_path / "x.pt", None, 1234)
    assert message.startswith(f"{tmp_path / 'x.pt'}: no space left on device (1.2 KB written")
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x.pt"))
    message = describe_write_error(denied, tmp_path / "x.pt", None, 0, shown="x.pt")
    assert message == "x.pt: Permission denied"


def test_non_finite_tensors_are_refused_before_anything_is_written(tmp_path):
    state = {
        "module": {"w": torch.ones(4)},
        "optimizer": {"state": {0: {"exp_avg": torch.tensor([1.0, float("nan")])}}},
    }
    writer = CheckpointWriter(tmp_path, 0)
    writer.save(state, tmp_path / "m.pt")
    assert writer.finish() == "m.pt: non-finite values (inf or NaN) in optimizer.state.0.exp_avg"
    assert not (tmp_path / "m.pt").exists()
    assert first_non_finite({"x": torch.full((8,), 3e38)}) is None  # the sum overflows; no alarm
    assert first_non_finite({"x": torch.tensor([1.0, float("inf")], dtype=torch.bfloat16)}) == "x"
    assert first_non_finite({"ids": torch.arange(4), "lr": float("inf")}) is None  # tensors only


# -- background writes: the child hashes, fails as one line -----------------------------


def test_the_background_child_hashes_the_files_and_runs_the_hook(tmp_path):
    ckpt, pids = tmp_path / "ckpt", tmp_path / "hook-pids"

    def record_pid(path: str) -> None:
        with open(pids, "a") as fh:
            fh.write(f"{os.getpid()} {Path(path).name}\n")

    writer = CheckpointWriter(ckpt, rank=1, before_write=record_pid)
    weights = torch.randn(200_000)
    write = BackgroundWrite([(str(ckpt / "deepspeed" / "m.pt"), {"w": weights})], ckpt, writer)
    assert writer.sums == {}  # the parent's copy of the writer never wrote
    write.wait()
    target = ckpt / "deepspeed" / "m.pt"
    sums = json.loads((ckpt / "sums_rank_00001.json").read_text())["files"]
    assert sums["deepspeed/m.pt"] == {"size": target.stat().st_size, HASH: hash_local_file(target)}
    assert pids.read_text().split() == [str(write.pid), "m.pt"]  # in the child
    assert write.pid != os.getpid()


def test_background_failures_reach_the_parent_as_the_writers_line(tmp_path):
    files = [(str(tmp_path / "deepspeed" / "m.pt"), {"w": torch.ones(10)})]

    def full_disk(path: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    write = BackgroundWrite(files, tmp_path, CheckpointWriter(tmp_path, 0, full_disk, 2_000_000))
    with pytest.raises(CheckpointError, match=r"^deepspeed/m.pt: no space left on device \("):
        write.wait()

    def crash(path: str) -> None:  # a crash in the middle of a save
        os.kill(os.getpid(), signal.SIGKILL)

    write = BackgroundWrite(files, tmp_path, CheckpointWriter(tmp_path, 0, crash))
    with pytest.raises(CheckpointError, match="writer died .killed by signal 9"):
        write.wait()


def test_a_background_write_onto_a_real_full_disk(tmp_path):
    with tmpfs(tmp_path / "disk", 1 << 20) as disk:
        ckpt = disk / "ckpt"
        files = [(str(ckpt / "deepspeed" / "m.pt"), {"w": torch.randn(1_000_000)})]  # 4 MB
        write = BackgroundWrite(files, ckpt, CheckpointWriter(ckpt, 0))
        with pytest.raises(CheckpointError, match=r"^deepspeed/m.pt: no space left on device"):
            write.wait()


# -- resume and `gobig verify` on real checkpoints ----------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_flipped_bytes_in_each_kind_of_file_are_caught(runs, tmp_path, kind):
    run_dir = copy_run(runs.straight(2, 2), tmp_path / kind)
    newest = step_dir(run_dir, STEPS)
    assert verify(newest, checksums=True) is None
    flip_bytes(newest / KINDS[kind])
    assert verify(newest) is None  # same size
    assert verify(newest, checksums=True) == f"{KINDS[kind]} checksum mismatch (corrupt)"


def test_resume_falls_back_past_corrupt_files_and_trains_like_the_straight_run(runs, tmp_path):
    straight = runs.straight(2, 2)
    run_dir = copy_run(straight, tmp_path / "corrupt")
    newest = step_dir(run_dir, STEPS)
    for rel in KINDS.values():  # one of each kind; the two ranks check a share each
        flip_bytes(newest / rel)
    resumed = run_train([], run_dir, nproc=2, resume=True).check()
    warnings = [line for line in resumed.stderr.splitlines() if "skipping checkpoint" in line]
    assert len(warnings) == 1, resumed.stderr[-3000:]  # rank 0's
    assert f"skipping checkpoint {newest}: " in warnings[0]
    assert warnings[0].endswith(f"; falling back to {step_name(HALF)}")
    for rel in KINDS.values():
        assert f"{rel} checksum mismatch (corrupt)" in warnings[0]
    assert f"resumed from {step_dir(run_dir, HALF)} at step {HALF}" in resumed.stdout
    want, got = straight.losses(), resumed.losses()
    assert [got[s] for s in range(HALF + 1, STEPS + 1)] == [
        want[s] for s in range(HALF + 1, STEPS + 1)
    ]
    assert verify(newest, checksums=True) is None  # written again, whole


def test_locate_before_a_step_checks_every_checksum_first(runs, tmp_path):
    # What a rollback in a live process calls: only older checkpoints, fully checked.
    run_dir = copy_run(runs.straight(2, 2), tmp_path / "rollback")
    storage, one_rank = RunStorage(run_dir), DistInfo(0, 1, 0, torch.device("cpu"))
    assert newest_intact(storage, one_rank, before_step=STEPS) == step_dir(run_dir, HALF)
    flip_bytes(step_dir(run_dir, HALF) / KINDS["rank-state"])
    with pytest.warns(UserWarning, match=r"rank_00001.pt checksum mismatch.*no intact checkpoint"):
        assert newest_intact(storage, one_rank, before_step=STEPS) is None
    assert newest_intact(storage, one_rank) == step_dir(run_dir, STEPS)


def test_gobig_verify_names_what_is_wrong_and_what_to_resume_from(runs, tmp_path, capsys):
    straight = runs.straight(2, 2)
    assert cli.main(["verify", str(straight.run_dir)]) == 0
    out = capsys.readouterr().out
    for step in (HALF, STEPS):
        # 3 engine files, 2 rank states, 2 sums, meta.json, DeepSpeed's 2 recovery scripts
        assert f"{step_name(step)}  intact      10 files," in out
    assert out.count("sizes and checksums match") == 2
    assert f"the newest checkpoint, {step_name(STEPS)}, is intact" in out
    assert cli.main(["verify", f"file://{straight.run_dir}"]) == 0  # a URI, through pyarrow.fs
    assert capsys.readouterr().out.count("sizes and checksums match") == 2

    corrupt = copy_run(straight, tmp_path / "corrupt")
    flip_bytes(step_dir(corrupt, STEPS) / KINDS["optimizer-states"])
    assert cli.main(["verify", str(corrupt)]) == 1
    out = capsys.readouterr().out
    assert f"{step_name(STEPS)}  corrupt     {KINDS['optimizer-states']} checksum mismatch" in out
    assert f"resume from {step_name(HALF)} instead" in out

    incomplete = copy_run(straight, tmp_path / "incomplete")
    (step_dir(incomplete, STEPS) / MARKER).unlink()
    assert cli.main(["verify", str(incomplete)]) == 1
    out = capsys.readouterr().out
    assert f"{step_name(STEPS)}  incomplete  not marked complete" in out
    assert f"{step_name(STEPS)}, is incomplete: resume from {step_name(HALF)} instead" in out


def test_gobig_verify_of_a_missing_run_is_one_line(tmp_path):
    missing = tmp_path / "no-such-run"
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "verify", str(missing)], cwd=ROOT,
        env=base_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == f"gobig: error: {missing}: no such run directory\n"


# -- non-finite weights and full disks in real runs ---------------------------------------


def test_non_finite_weights_are_never_marked_complete(runs, tmp_path):
    run_dir = copy_run(runs.straight(1, 0), tmp_path / "diverged")
    shutil.rmtree(step_dir(run_dir, STEPS))
    # An infinite learning rate: the update after step N makes every weight inf or NaN.
    overrides = ["optim.lr=inf", "train.checkpoint_every=1"]
    run = run_train(overrides, run_dir, resume=True, env=base_env(tmp_path))
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    (error,) = error_lines(run)
    bad = step_dir(run_dir, HALF + 1)
    assert error.startswith(f"gobig: error: checkpoint {bad} (step {HALF + 1}) not saved: ")
    assert "mp_rank_00_model_states.pt: non-finite values (inf or NaN) in module." in error
    assert error.endswith(f"; the newest complete checkpoint is {step_dir(run_dir, HALF)}")
    assert not bad.exists()
    assert verify(step_dir(run_dir, HALF), checksums=True) is None


def test_a_full_disk_fails_the_save_as_one_line_and_the_run_resumes_exactly(runs, tmp_path):
    straight = runs.straight(1, 0)
    needed = checkpoint_bytes(straight.run_dir, HALF)
    # Room for the run's small files and one checkpoint and a half: step N fits, step 2N
    # (written beside it, before prune) does not.
    with tmpfs(tmp_path / "disk", int(1.5 * needed) + (256 << 10)) as disk:
        run_dir = disk / "run"
        run = run_train(gpt_args(runs.text, 1, 0), run_dir, env=base_env(tmp_path))
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
        (error,) = error_lines(run)
        lost = step_dir(run_dir, STEPS)
        assert error.startswith(f"gobig: error: checkpoint {lost} (step {STEPS}) not saved: ")
        assert "deepspeed/mp_rank_00_model_states.pt: no space left on device" in error
        assert "the checkpoint needs about" in error and " free)" in error
        assert error.endswith(f"; the newest complete checkpoint is {step_dir(run_dir, HALF)}")
        (warning,) = [line for line in run.stderr.splitlines() if "gobig: warning:" in line]
        assert "less than twice the last checkpoint's" in warning  # before the failing save
        assert not lost.exists()
        assert verify(step_dir(run_dir, HALF), checksums=True) is None

        resize(disk, 64 << 20)  # room again
        resumed = run_train([], run_dir, resume=True, env=base_env(tmp_path)).check()
        assert f"resumed from {step_dir(run_dir, HALF)} at step {HALF}" in resumed.stdout
        want, got = straight.losses(), resumed.losses()
        assert [got[s] for s in range(HALF + 1, STEPS + 1)] == [
            want[s] for s in range(HALF + 1, STEPS + 1)
        ]
        assert verify(lost, checksums=True) is None


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "background"])
def test_every_rank_fails_at_the_same_step_on_a_full_disk(runs, tmp_path, asynchronous):
    needed = checkpoint_bytes(runs.straight(2, 2).run_dir, HALF)
    with tmpfs(tmp_path / "disk", needed // 2) as disk:  # not even the first checkpoint fits
        run_dir = disk / "run"
        # A background write fails in the child; the ranks hear of it at the next step.
        args = gpt_args(runs.text, 2, 2, f"checkpoint.asynchronous={str(asynchronous).lower()}")
        run = run_train(args, run_dir, nproc=2, env=base_env(tmp_path), timeout=180)
        assert run.returncode != 0
        # One line per rank (two processes share the pipe: find each, wherever it starts).
        lines = [
            "gobig: error: " + part.split("\n")[0]
            for part in run.stderr.split("gobig: error: ")[1:]
        ]
        assert len(lines) == 2 and lines[0] == lines[1], run.stderr[-3000:]
        first = step_dir(run_dir, HALF)
        assert lines[0].startswith(f"gobig: error: checkpoint {first} (step {HALF}) not saved: ")
        assert "no space left on device" in lines[0]
        assert lines[0].endswith("; there is no complete checkpoint yet")
        assert not first.exists()
