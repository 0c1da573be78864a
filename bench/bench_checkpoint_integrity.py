"""What checkpoint integrity costs: save and load with and without checksums and the
finiteness check, side by side in one run (issue 12, "Silent corruption").

    .venv/bin/python bench/bench_checkpoint_integrity.py [--rounds 5] [--n-layer 12]
        [--d-model 768] [--dir /tmp] [--out bench/results/checkpoint_integrity.md]

One process, DeepSpeed ZeRO-2 on CPU, fp32, AdamW, the engine built by
train.engine.build_engine and trained one step (bench_checkpoint.py's `build`). Each
round runs both modes, their order alternating between rounds:

  on    Checkpointer.save(final=True) with checksums taken while writing (xxh3_128)
        and every floating-point tensor checked for inf/NaN; then, page cache dropped,
        Checkpointer.locate (every file hashed and compared) + restore, and both again
        with the files in the page cache; then, in a fresh process and with the page
        cache dropped, a resume as the Trainer does it: locate, build the loaders and
        the engine, restore (at start-up the checksums are hashed in the background
        while the engine is built; restore agrees on them before loading anything)
  off   the same calls with `checkpointer.checksums = checkpointer.finite_check = False`:
        torch's own file writer, sizes-only verification (what gobig did before)

Reported: medians over the rounds after a warm-up round, the ratio on/off per round,
and the parts: the finiteness check's and the hashing's own time inside the save (the
writer's record, `Checkpointer.timings`), and hashing the written files from the page
cache alone (what the load-side check computes once the files are cached). The disk of
this shared machine makes whole saves vary by 2x from round to round; the parts are the
stable measure. Nothing is patched; the switches are the Checkpointer's public
attributes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.process_env import apply_training_env  # noqa: E402

apply_training_env()  # as in every gobig training process, before torch is imported

import torch  # noqa: E402
from _report import write_report  # noqa: E402  (bench/ is the script's folder)
from bench_checkpoint import build, drop_caches, tree_bytes  # noqa: E402

from train.checkpoint.checksum import HASH, hash_local_file  # noqa: E402
from train.checkpoint.finite import first_non_finite  # noqa: E402
from train.progress import Progress  # noqa: E402

MODES = ("on", "off")


def one_round(checkpointer, engine, loader, mode: str, step: int) -> dict[str, float]:
    """Save, then a cold locate + restore, then a warm one, in `mode`; seconds of each."""
    checkpointer.checksums = checkpointer.finite_check = mode == "on"
    os.sync()
    t0 = time.perf_counter()
    (saved,) = checkpointer.save(engine, loader, Progress(step=step), final=True)
    save_s = time.perf_counter() - t0
    finite_s = checkpointer.timings.get("of which finite check", 0.0)
    hash_s = checkpointer.timings.get("of which hashing", 0.0)
    drop_caches()
    t0 = time.perf_counter()
    checkpointer.locate()
    locate_s = time.perf_counter() - t0
    checkpointer.restore(engine, loader)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()  # again, the files in the page cache (a restart on the same node)
    checkpointer.locate()
    checkpointer.restore(engine, loader)
    warm_s = time.perf_counter() - t0
    return {"save": save_s, "finite": finite_s, "hash": hash_s, "load": load_s, "locate": locate_s,
            "warm": warm_s, "bytes": float(tree_bytes(saved.path)),
            "path": saved.path}  # fmt: skip


def child_resume(run_dir: Path, mode: str) -> None:
    """In a fresh process (no engine to leak), as the Trainer resumes: cold locate, build
    the loaders and the engine, restore (at start-up the checksums are hashed in the
    background meanwhile, and restore agrees on them); prints the seconds as JSON."""
    from train.checkpoint.catalog import newest_complete, read_meta
    from train.checkpoint.checkpointer import Checkpointer
    from train.checkpoint.storage import RunStorage
    from train.config import build_config
    from train.data import build_loaders
    from train.distributed import init_distributed
    from train.engine import build_engine

    config = build_config(read_meta(newest_complete(run_dir))["config"])
    dist = init_distributed()
    checkpointer = Checkpointer(RunStorage(run_dir), config, dist, unit="tokens")
    checkpointer.checksums = checkpointer.finite_check = mode == "on"
    drop_caches()
    t0 = time.perf_counter()
    checkpointer.locate()
    loader, _ = build_loaders(config, dist)
    engine = build_engine(config, dist)
    t_built = time.perf_counter()
    checkpointer.restore(engine, loader)
    t_end = time.perf_counter()
    waited = checkpointer.timings.get("verify (waited for)", 0.0)
    result = {"resume": t_end - t0, "build": t_built - t0, "restore": t_end - t_built,
              "waited": waited}  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


def startup_resume(run_dir: Path, mode: str) -> dict[str, float]:
    # A process group of its own: not this process's (its variables are in our environment).
    group = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in group}
    proc = subprocess.run(
        [sys.executable, __file__, "--child-resume", mode, str(run_dir)],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"start-up resume ({mode}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def hash_alone(ckpt: Path) -> float:
    """Seconds to hash every file of a checkpoint already in the page cache."""
    files = sorted(p for p in ckpt.rglob("*") if p.is_file())
    for p in files:  # into the cache first
        hash_local_file(p)
    t0 = time.perf_counter()
    for p in files:
        hash_local_file(p)
    return time.perf_counter() - t0


def finite_alone(engine) -> float:
    t0 = time.perf_counter()
    assert first_non_finite(engine.module_state_dict()) is None
    assert first_non_finite(engine.optimizer.state_dict()) is None
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--dir", default="/tmp", help="where the run goes")
    parser.add_argument(
        "--out", default=str(ROOT / "bench" / "results" / "checkpoint_integrity.md")
    )
    parser.add_argument(
        "--child-resume", nargs=2, metavar=("MODE", "RUN_DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child_resume:
        child_resume(Path(args.child_resume[1]), args.child_resume[0])
        return 0
    command = "python bench/bench_checkpoint_integrity.py " + " ".join(sys.argv[1:])
    t_begin = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gobig-bench-integrity-", dir=args.dir))
    rows: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
    try:
        config, dist, engine, loader, checkpointer, n_params = build(args, work / "run")
        can_drop = drop_caches()
        step = 1000
        for rnd in range(args.rounds + 1):  # round 0 warms up; not reported
            order = MODES if rnd % 2 == 0 else MODES[::-1]
            for mode in order:
                step += 1
                r = one_round(checkpointer, engine, loader, mode, step)
                print(f"round {rnd} {mode:>3}: save {r['save']:.2f}s (finite check "
                      f"{r['finite']:.2f}s, hashing {r['hash']:.2f}s)  load {r['load']:.2f}s "
                      f"(locate {r['locate']:.2f}s)  warm {r['warm']:.2f}s  "
                      f"{r['bytes'] / 1e6:,.0f} MB", flush=True)  # fmt: skip
                last = r["path"]
                s = startup_resume(work / "run", mode)
                print(f"          start-up resume {s['resume']:.2f}s (engine built at "
                      f"{s['build']:.2f}s, restore {s['restore']:.2f}s, of which waiting "
                      f"for checksums {s['waited']:.2f}s)", flush=True)  # fmt: skip
                if rnd:
                    for k, v in {**r, **s}.items():
                        if k != "path":
                            rows[mode].setdefault(k, []).append(v)
        hashes = [hash_alone(last) for _ in range(args.rounds)]
        finites = [finite_alone(engine) for _ in range(args.rounds)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {m: {k: statistics.median(v) for k, v in rows[m].items()} for m in MODES}
    ratio = {
        part: [a / b for a, b in zip(rows["on"][part], rows["off"][part], strict=True)]
        for part in ("save", "load", "warm", "resume")
    }
    size = med["on"]["bytes"]
    save_off, load_off = med["off"]["save"], med["off"]["load"]
    finite_s = med["on"]["finite"]
    hash_save = med["on"]["hash"]
    hash_load = statistics.median(hashes)
    load_avg = os.getloadavg()
    lines = [
        "# Checkpoint integrity: what checksums and the finiteness check cost",
        "",
        f"Command: `{command.strip()}` (repository root, project venv, as root so the page "
        f"cache can be dropped: {'yes' if can_drop else 'NO'}); {args.rounds} rounds after a "
        f"warm-up, both modes each round, order alternating; medians. Whole run "
        f"{time.perf_counter() - t_begin:.0f} s.",
        "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}. Model: GPT, n_layer "
        f"{args.n_layer}, d_model {args.d_model}, vocab {config.model.vocab_size}, "
        f"{n_params / 1e6:.1f}M parameters, fp32, AdamW, ZeRO-2, one process; checkpoint "
        f"**{size / 1e6:,.0f} MB** in `{args.dir}`. Hash: {HASH}.",
        "",
        "| | checks on | checks off | on / off (median of rounds) |",
        "| --- | ---: | ---: | ---: |",
        f"| save (synchronous, fsync, mark, prune) | {med['on']['save']:.3f} s | "
        f"{save_off:.3f} s | {statistics.median(ratio['save']):.3f} |",
        f"| load, cold cache (locate + restore) | {med['on']['load']:.3f} s | "
        f"{load_off:.3f} s | {statistics.median(ratio['load']):.3f} |",
        f"| of which locate (verify) | {med['on']['locate']:.3f} s | "
        f"{med['off']['locate']:.3f} s | |",
        f"| load, warm cache (locate + restore) | {med['on']['warm']:.3f} s | "
        f"{med['off']['warm']:.3f} s | {statistics.median(ratio['warm']):.3f} |",
        f"| resume at start-up, cold (locate, build the engine, restore) | "
        f"{med['on']['resume']:.3f} s | {med['off']['resume']:.3f} s | "
        f"{statistics.median(ratio['resume']):.3f} |",
        f"| of which restore (after the engine is built) | {med['on']['restore']:.3f} s | "
        f"{med['off']['restore']:.3f} s | |",
        f"| of which restore waited for the background checksums | "
        f"{med['on']['waited']:.3f} s | | |",
        "",
        "Per round, on/off: save "
        + ", ".join(f"{x:.3f}" for x in ratio["save"])
        + "; load, cold "
        + ", ".join(f"{x:.3f}" for x in ratio["load"])
        + "; load, warm "
        + ", ".join(f"{x:.3f}" for x in ratio["warm"])
        + "; resume at start-up "
        + ", ".join(f"{x:.3f}" for x in ratio["resume"])
        + ".",
        "",
        "The parts, against the checks-off time:",
        "",
        "| part | time | share |",
        "| --- | ---: | ---: |",
        f"| finiteness check in the save (the writer's record) | {finite_s:.3f} s | "
        f"{100 * finite_s / save_off:.1f}% of a save |",
        f"| hashing while writing (the writer's record) | {hash_save:.3f} s | "
        f"{100 * hash_save / save_off:.1f}% of a save |",
        f"| hashing every file from the page cache (alone) | {hash_load:.3f} s | "
        f"{100 * hash_load / load_off:.1f}% of a cold load, "
        f"{100 * hash_load / med['off']['warm']:.1f}% of a warm one |",
        f"| finiteness check of the live state (alone) | {statistics.median(finites):.3f} s | |",
        "",
        f"Load average at the end: {load_avg[0]:.1f} / {load_avg[1]:.1f} / {load_avg[2]:.1f} "
        f"on {os.cpu_count()} cores (the machine is shared).",
    ]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
