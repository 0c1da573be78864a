"""Checkpoint save and load throughput of gobig's real checkpoint path, against the disk's
sequential write and read bandwidth measured in the same run (issue "Performance", item 5).

    .venv/bin/python bench/bench_checkpoint.py [--rounds 3] [--n-layer 4] [--d-model 768]
        [--dir /tmp] [--out bench/results/checkpoint.md]

One process (world size 1), DeepSpeed ZeRO-2 on CPU, fp32, AdamW: the engine is built by
train.engine.build_engine (as the Trainer builds it), trained for one step (so Adam's
moments exist), then each round alternates, side by side:

  disk write   a file the size of the checkpoint, 16 MiB chunks of random bytes, fsync
  ckpt save    Checkpointer.save(final=True): synchronous
               (engine.save_checkpoint, rank state, fsync_tree, mark_complete, prune),
               after os.sync() so earlier dirty pages do not count
  disk read    that file, page cache dropped first (echo 3 > /proc/sys/vm/drop_caches)
  ckpt load    Checkpointer.locate + restore, page cache dropped first

Throughput = bytes of the checkpoint directory / seconds; the ratios are per round, and
the table gives medians. The split inside each call is the Checkpointer's own record of
its parts (`Checkpointer.timings`); nothing is patched.
"Snapshot" = copying the module and optimizer state dicts into fresh CPU tensors (what
an asynchronous save that copies would stall for); "serialize to memory" = torch.save
of that snapshot into a BytesIO. Both are context, not gobig code paths.

Asynchronous saves (checkpoint.asynchronous=true): per round, STEPS training steps with
no checkpoint, then Checkpointer.save(final=False) (DeepSpeed's save captured, then
fork) followed by the same number of steps, then Checkpointer.commit (wait for the
child, mark complete, prune). The stall is the time training was blocked: the save
call plus the commit call; the slowdown of the steps that ran beside the writing child
(it takes one of the cores) is reported next to it.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.process_env import apply_training_env  # noqa: E402

apply_training_env()  # as in every gobig training process, before torch is imported

import torch  # noqa: E402
from _report import write_report  # noqa: E402  (bench/ is the script's folder)

from train.progress import Progress  # noqa: E402

CHUNK = 16 * 2**20


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def disk_write(path: Path, size: int, buf: bytes) -> float:
    """Seconds to write `size` bytes (buffered, like torch.save) and fsync them."""
    os.sync()
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(left, len(buf))
            fh.write(buf[:n] if n < len(buf) else buf)
            left -= n
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - t0


def disk_read(path: Path) -> float:
    buf = bytearray(CHUNK)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass
    return time.perf_counter() - t0


def dd(args: list[str]) -> str:
    """dd's own summary line (bytes, seconds, rate) for the reference figures."""
    out = subprocess.run(["dd", *args], capture_output=True, text=True)
    return out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "dd failed"


def snapshot(engine: Any) -> tuple[float, dict[str, Any]]:
    """(seconds, copy) of the module and optimizer state as fresh CPU tensors."""

    def copy(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.detach().to("cpu", copy=True)
        if isinstance(obj, dict):
            return {k: copy(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return type(obj)(copy(v) for v in obj)
        return obj

    t0 = time.perf_counter()
    snap = {
        "module": copy(engine.module_state_dict()),
        "optimizer": copy(engine.optimizer.state_dict()),
    }
    return time.perf_counter() - t0, snap


def build(args: argparse.Namespace, run_dir: Path):
    """Config, dist, engine (one trained step), loader, checkpointer: through the same
    public builders the Trainer uses (train.engine.build_engine, train.data.build_loaders)."""
    from train.checkpoint.checkpointer import Checkpointer
    from train.checkpoint.storage import RunStorage
    from train.config.load import load_config
    from train.data import build_loaders
    from train.distributed import init_distributed
    from train.engine import build_engine

    config = load_config(
        ROOT / "configs" / "gpt-tiny.yaml",
        [
            f"model.n_layer={args.n_layer}",
            f"model.d_model={args.d_model}",
            f"model.n_head={args.d_model // 64}",
            "train.precision=fp32",
            "zero.stage=2",
            "train.micro_batch_size=1",
            "train.grad_accum_steps=1",
            "cluster.num_workers=1",
            "checkpoint.keep=1",
            # Periodic saves go to the background; `final=True` saves are synchronous.
            "checkpoint.asynchronous=true",
        ],
    )
    dist = init_distributed()
    train_loader, _ = build_loaders(config, dist)
    engine = build_engine(config, dist)
    train_steps(engine, iter(train_loader), dist, 1)  # so Adam's moments exist
    n_params = sum(p.numel() for p in engine.module.parameters())
    checkpointer = Checkpointer(RunStorage(run_dir), config, dist, unit="tokens")
    return config, dist, engine, train_loader, checkpointer, n_params


def train_steps(engine: Any, batches: Any, dist: Any, n: int) -> list[float]:
    """Seconds of each of `n` training steps (forward, backward, optimizer step)."""
    from train.task import to_device

    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = engine(to_device(next(batches), dist.device))
        engine.backward(out.loss)
        engine.step()
        times.append(time.perf_counter() - t0)
    return times


def async_round(engine, loader, checkpointer, dist, step: int, n: int) -> dict[str, float]:
    """One asynchronous save measured against the steps around it (see the docstring)."""
    batches = iter(loader)
    before = train_steps(engine, batches, dist, n)
    os.sync()
    t0 = time.perf_counter()
    committed = checkpointer.save(engine, loader, Progress(step=step), final=False)
    t_start = time.perf_counter() - t0
    assert not committed and checkpointer.pending.write is not None, "expected a background save"
    t_fork = checkpointer.timings["fork"]
    beside = train_steps(engine, batches, dist, n)
    writing_done = checkpointer.pending.write.done()
    t0 = time.perf_counter()
    saved = checkpointer.commit()
    t_finish = time.perf_counter() - t0
    return {
        "start": t_start,
        "fork": t_fork,
        "finish": t_finish,
        "stall": t_start + t_finish,
        "write": saved.write_s,
        "step_before": statistics.median(before),
        "step_beside": statistics.median(beside),
        "done_within": float(writing_done),
    }


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--dir", default="/tmp", help="where the run and test file go")
    parser.add_argument(
        "--async-steps", type=int, default=8, help="training steps beside each async save"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "checkpoint.md"))
    args = parser.parse_args()
    command = "python bench/bench_checkpoint.py " + " ".join(sys.argv[1:])
    t_begin = time.perf_counter()

    work = Path(tempfile.mkdtemp(prefix="gobig-bench-ckpt-", dir=args.dir))
    run_dir = work / "run"
    try:
        config, dist, engine, loader, checkpointer, n_params = build(args, run_dir)
        buf = os.urandom(CHUNK)
        test_file = work / "disk_test.bin"
        can_drop = drop_caches()

        rows: dict[str, list[float]] = defaultdict(list)
        split_save: dict[str, list[float]] = defaultdict(list)
        split_load: dict[str, list[float]] = defaultdict(list)
        size = 0
        for rnd in range(args.rounds + 1):  # round 0 is a warm-up, not reported
            # --- save (real path) ---
            os.sync()
            t0 = time.perf_counter()
            (saved,) = checkpointer.save(engine, loader, Progress(step=1000 + rnd), final=True)
            t_save = time.perf_counter() - t0
            ckpt = saved.path
            save_parts = dict(checkpointer.timings)
            size = tree_bytes(ckpt)
            # --- disk write, same size ---
            t_write = disk_write(test_file, size, buf)
            # --- disk read, cold ---
            drop_caches()
            t_read = disk_read(test_file)
            # --- load (real path), cold ---
            drop_caches()
            t0 = time.perf_counter()
            checkpointer.locate()
            t_locate = time.perf_counter() - t0
            checkpointer.restore(engine, loader)
            t_load = time.perf_counter() - t0
            load_parts = {"locate (newest_complete + read_meta)": t_locate, **checkpointer.timings}
            # --- load again, warm page cache (context) ---
            t0 = time.perf_counter()
            checkpointer.restore(engine, loader)
            t_load_warm = time.perf_counter() - t0
            test_file.unlink()
            print(
                f"round {rnd}: size {size / 1e6:.0f} MB  save {t_save:.2f}s  write {t_write:.2f}s"
                f"  read {t_read:.2f}s  load {t_load:.2f}s (warm {t_load_warm:.2f}s)",
                flush=True,
            )
            if rnd == 0:
                continue
            rows["save"].append(t_save)
            rows["write"].append(t_write)
            rows["read"].append(t_read)
            rows["load"].append(t_load)
            rows["load_warm"].append(t_load_warm)
            rows["save_ratio"].append(t_write / t_save)
            rows["save_np"].append(t_save - save_parts.get("prune", 0.0))
            rows["save_np_ratio"].append(t_write / rows["save_np"][-1])
            rows["load_ratio"].append(t_read / t_load)
            for k, v in save_parts.items():
                split_save[k].append(v)
            for k, v in load_parts.items():
                split_load[k].append(v)

        # --- async prediction: snapshot into CPU memory, serialization alone ---
        snaps, sers = [], []
        for _ in range(args.rounds):
            t_snap, snap = snapshot(engine)
            snaps.append(t_snap)
            t0 = time.perf_counter()
            bio = io.BytesIO()
            torch.save(snap, bio)
            sers.append(time.perf_counter() - t0)
            del snap, bio
        # Fork-based snapshot (copy-on-write): the parent's stall is fork() itself; the
        # copying is deferred to page faults when the next optimizer step writes.
        forks = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            forks.append(time.perf_counter() - t0)
            os.waitpid(pid, 0)
        # --- asynchronous saves (gobig's code path) ---
        arows: dict[str, list[float]] = defaultdict(list)
        for rnd in range(args.rounds + 1):  # round 0 is a warm-up
            r = async_round(engine, loader, checkpointer, dist, 2000 + rnd, args.async_steps)
            print(
                f"async round {rnd}: stall {r['stall'] * 1e3:.1f} ms (start "
                f"{r['start'] * 1e3:.1f} of which fork {r['fork'] * 1e3:.1f}, finish "
                f"{r['finish'] * 1e3:.1f}), child wrote in "
                f"{r['write']:.2f}s, step {r['step_before'] * 1e3:.0f} ms before, "
                f"{r['step_beside'] * 1e3:.0f} ms beside the writer",
                flush=True,
            )
            if rnd:
                for k, v in r.items():
                    arows[k].append(v)
        rss_pages = int(Path("/proc/self/statm").read_text().split()[1])
        rss_gb = rss_pages * os.sysconf("SC_PAGE_SIZE") / 1e9

        # --- dd reference figures (not used in the ratios) ---
        dd_file = work / "dd_test.bin"
        count = max(1, size // (4 * 2**20))
        dd_w = dd(["if=/dev/zero", f"of={dd_file}", "bs=4M", f"count={count}",
                   "oflag=direct", "conv=fsync"])  # fmt: skip
        drop_caches()
        dd_r = dd([f"if={dd_file}", "of=/dev/null", "bs=4M", "iflag=direct"])
        dd_file.unlink()
        files = sorted(
            (str(p.relative_to(ckpt)), p.stat().st_size) for p in ckpt.rglob("*") if p.is_file()
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_avg = os.getloadavg()
    mb = size / 1e6
    m = {k: median(v) for k, v in rows.items()}
    save_s = m["save"]

    def rate(seconds: float) -> str:
        return f"{mb / seconds:,.0f} MB/s"

    def split_table(parts: dict[str, list[float]], total: float) -> list[str]:
        out = []
        for k, v in parts.items():
            med = median(v)
            out.append(f"| {k} | {med:.3f} s | {100 * med / total:.0f}% |")
        return out

    ds_version = __import__("deepspeed").__version__
    df = subprocess.run(["df", "-h", args.dir], capture_output=True, text=True).stdout.strip()
    mnt = subprocess.run(
        ["findmnt", "-no", "SOURCE,FSTYPE", "-T", args.dir], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# Checkpoint save and load throughput",
        "",
        f"Command: `{command.strip()}` (from the repository root, in the project venv, "
        f"as root so the page cache can be dropped); {args.rounds} measured rounds after one "
        f"warm-up round, medians; whole run {time.perf_counter() - t_begin:.0f} s.",
        "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, deepspeed {ds_version}. "
        f"Checkpoint and test files in `{args.dir}` ({mnt}):",
        "",
        "```",
        df,
        "```",
        "",
        f"Model: GPT, n_layer {args.n_layer}, d_model {args.d_model}, vocab "
        f"{config.model.vocab_size}, {n_params / 1e6:.1f}M parameters, fp32, AdamW, ZeRO-2, "
        f"world size 1, one process. Checkpoint directory: **{mb:,.0f} MB**:",
        "",
        *[f"- `{name}`: {nbytes / 1e6:,.1f} MB" for name, nbytes in files],
        "",
        f"Page cache dropped before each read and load: "
        f"{'yes' if can_drop else 'NO (not permitted; read figures may be cached)'}.",
        "",
        "| measurement | median time | throughput |",
        "| --- | ---: | ---: |",
        f"| disk write (Python, 16 MiB chunks, fsync) | {m['write']:.3f} s | {rate(m['write'])} |",
        f"| checkpoint save (synchronous) | {m['save']:.3f} s | {rate(m['save'])} |",
        f"| checkpoint save without prune (same calls, prune time subtracted) "
        f"| {m['save_np']:.3f} s | {rate(m['save_np'])} |",
        f"| disk read (cold cache) | {m['read']:.3f} s | {rate(m['read'])} |",
        f"| checkpoint load (locate + restore, cold) | {m['load']:.3f} s | {rate(m['load'])} |",
        f"| checkpoint load (restore, warm cache) | {m['load_warm']:.3f} s "
        f"| {rate(m['load_warm'])} |",
        f"| snapshot state into CPU memory (async stall estimate) | {median(snaps):.3f} s "
        f"| {rate(median(snaps))} |",
        f"| torch.save of the snapshot to memory (serialization alone) | {median(sers):.3f} s "
        f"| {rate(median(sers))} |",
        "",
        f"**Save throughput / disk write bandwidth: {median(rows['save_ratio']):.2f}** "
        f"(per round: {', '.join(f'{r:.2f}' for r in rows['save_ratio'])}; target >= 0.5).",
        "",
        f"**Load throughput / disk read bandwidth: {median(rows['load_ratio']):.2f}** "
        f"(per round: {', '.join(f'{r:.2f}' for r in rows['load_ratio'])}; target >= 0.5).",
        "",
        f"Save without prune / disk write bandwidth: {median(rows['save_np_ratio']):.2f} "
        f"(per round: {', '.join(f'{r:.2f}' for r in rows['save_np_ratio'])}): prune deletes "
        "the previous checkpoint (checkpoint.keep=1 here; at any keep, every save in steady "
        "state deletes one checkpoint of the same size).",
        "",
        "## Asynchronous save (checkpoint.asynchronous=true)",
        "",
        f"{args.rounds} rounds after a warm-up, each: {args.async_steps} training steps, "
        f"then Checkpointer.save (background), {args.async_steps} steps beside the "
        "writing child, then Checkpointer.commit. Medians:",
        "",
        "| measurement | median |",
        "| --- | ---: |",
        f"| training blocked: start (capture DeepSpeed's save + fork) "
        f"| {1e3 * median(arows['start']):.1f} ms |",
        f"| of which fork() | {1e3 * median(arows['fork']):.1f} ms |",
        f"| training blocked: finish (wait for the child, mark complete, prune) "
        f"| {1e3 * median(arows['finish']):.1f} ms |",
        f"| **stall (start + finish)** | **{1e3 * median(arows['stall']):.1f} ms** |",
        f"| the child's write (torch.save of every file + fsync) "
        f"| {median(arows['write']):.3f} s |",
        f"| training step without a writer / beside the writer "
        f"| {1e3 * median(arows['step_before']):.0f} ms / "
        f"{1e3 * median(arows['step_beside']):.0f} ms |",
        f"| writes finished within the {args.async_steps} steps "
        f"| {int(sum(arows['done_within']))} of {args.rounds} |",
        "",
        f"**Async stall / synchronous save: {median(arows['stall']) / m['save']:.3f}** "
        f"(per round: {', '.join(f'{x / save_s:.3f}' for x in arows['stall'])}; "
        "target <= 0.10). For comparison, snapshotting by copying the state "
        f"would stall {median(snaps) / m['save']:.2f} of a save; fork() alone took "
        f"{1e3 * median(forks):.1f} ms at {rss_gb:.1f} GB resident.",
        "",
        "Where the save goes (medians, the Checkpointer's own timings):",
        "",
        "| part | time | share of save |",
        "| --- | ---: | ---: |",
        *split_table(split_save, m["save"]),
        "",
        "Where the cold load goes:",
        "",
        "| part | time | share of load |",
        "| --- | ---: | ---: |",
        *split_table(split_load, m["load"]),
        "",
        f"dd reference (not in the ratios; zeros, O_DIRECT): write `{dd_w}`; read, cold `{dd_r}`.",
        "",
        f"Load average at the end: {load_avg[0]:.1f} / {load_avg[1]:.1f} / {load_avg[2]:.1f} "
        f"(1/5/15 min) on {os.cpu_count()} cores (the machine is shared).",
    ]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
