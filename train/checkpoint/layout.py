"""What a checkpoint directory holds and what its names are.

One checkpoint, `RUN_DIR/checkpoints/step_00000100/`:

    deepspeed/        engine state (model, optimizer, scheduler), one shard per rank under ZeRO
    universal/        (only after an elastic resume) every parameter whole, see elastic.py
    rank_00000.pt     that rank's data-loader state, RNG states and components' state (the
                      anomaly guard's loss window), as tensors and plain values
    sums_rank_00000.json  that rank's files: size and xxh3_128 checksum of each, taken
                      while writing (checksum.py, writer.py); written after them
    meta.json         step, units seen, world size, ZeRO stage, config, tokenizer hash, W&B id
    COMPLETE          written last by rank 0: every file's size and checksum (the ranks'
                      sums folded in; files no rank wrote, like meta.json, hashed then)

A checkpoint counts only when COMPLETE exists and every file it lists has its
recorded size (catalog.py); resume and `gobig verify` also check the
checksums, so flipped bytes, which keep the size, are caught. Markers written
before checksums existed list sizes only and are checked by size.
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.errors import GobigError

CHECKPOINTS = "checkpoints"
ENGINE_TAG = "deepspeed"
UNIVERSAL_TAG = "universal"
META = "meta.json"
MARKER = "COMPLETE"
TRASH = ".trash"
STEP_PREFIX = "step_"
SUMS_PREFIX = "sums_rank_"


class CheckpointError(GobigError, RuntimeError):
    """A checkpoint that exists but cannot be used."""


def step_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / step_name(step)


def rank_file_name(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def rank_file(ckpt: Path, rank: int) -> Path:
    return Path(ckpt) / rank_file_name(rank)


def sums_file_name(rank: int) -> str:
    return f"{SUMS_PREFIX}{rank:05d}.json"


def is_sums_file(rel: str) -> bool:
    return "/" not in rel and rel.startswith(SUMS_PREFIX) and rel.endswith(".json")


def step_of(name: str) -> int:
    """The step of a checkpoint directory name (`step_00000100` -> 100)."""
    return int(name[len(STEP_PREFIX) :])
