"""`gobig check-resume`: exact resume, checked on the user's own model and data.

A short horizon of the config is trained twice on Ray: straight, and again
with workers killed (SIGKILL, the fault injector's `kill`) at seeded random
steps, each kill followed by Ray's restart from the newest complete
checkpoint. Every logged loss of the second run is then compared with the
first: bit for bit on CPU, within a relative tolerance on GPUs (kernels such
as atomics-based reductions are not bitwise reproducible there).

    gobig check-resume [CONFIG] [key=value ...] [--steps N] [--kills K] [--seed S]
                       [--keep DIR]
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from train.config.schema import ExperimentConfig
from train.metrics_log import read_metrics

GPU_REL_TOLERANCE = 1e-5


@dataclass
class Comparison:
    steps: int
    mismatched: list[tuple[int, float | None, float | None]]  # (step, straight, resumed)
    tolerance: float  # 0: bit for bit

    @property
    def ok(self) -> bool:
        return not self.mismatched


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def compare_losses(straight: Path, resumed: Path, tolerance: float = 0.0) -> Comparison:
    """Every step's logged loss of `resumed` against `straight`'s.

    Args:
        straight: the uninterrupted run directory.
        resumed: the run that was killed and restarted.
        tolerance: relative; 0 asks for bitwise equality.
    """
    want, got = train_losses(straight), train_losses(resumed)
    bad = []
    for step in sorted(set(want) | set(got)):
        a, b = want.get(step), got.get(step)
        same = (
            a is not None
            and b is not None
            and (a == b if tolerance == 0 else math.isclose(a, b, rel_tol=tolerance))
        )
        if not same:
            bad.append((step, a, b))
    return Comparison(len(want), bad, tolerance)


def kill_schedule(steps: int, kills: int, workers: int, seed: int) -> list[dict]:
    """`kills` distinct steps in [2, steps - 1], each on a random rank (seeded)."""
    rng = random.Random(seed)
    candidates = list(range(2, steps))
    chosen = sorted(rng.sample(candidates, min(kills, len(candidates))))
    return [{"kind": "kill", "step": s, "rank": rng.randrange(workers)} for s in chosen]


def horizon_config(config: ExperimentConfig, steps: int) -> ExperimentConfig:
    """The config cut to `steps`, logging every step and checkpointing often."""
    from train.config import build_config
    from train.config.load import merge

    every = max(1, steps // 5)
    short = {
        "train": {
            "max_steps": steps, "log_every": 1, "eval_every": steps,
            "checkpoint_every": every,
        },
        "optim": {"decay_steps": config.optim.decay_steps or steps},
        "logging": {"wandb": {"mode": "disabled"}, "profile": {"enabled": False}},
        "faults": [],
    }  # fmt: skip
    return build_config(merge(config.to_dict(), short), origin="check-resume")


def check_resume(
    config: ExperimentConfig,
    address: str | None,
    steps: int = 20,
    kills: int = 2,
    seed: int = 0,
    keep: Path | None = None,
) -> int:
    """Train straight and killed, compare, print the verdict; the exit code (0: exact).

    Args:
        config: the experiment to check.
        address: a Ray cluster, or None for the embedded local Ray.
        steps: the horizon.
        kills: how many times a worker is killed.
        seed: picks the kill steps and ranks.
        keep: where the two runs are kept (default: a temporary directory, removed).
    """
    from cluster.launch import run_training
    from cluster.ray_session import ray_session
    from train.config import build_config

    config = horizon_config(config, min(steps, config.train.max_steps))
    steps = config.train.max_steps
    schedule = kill_schedule(steps, kills, config.cluster.num_workers, seed)
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="gobig-check-resume-"))
    root.mkdir(parents=True, exist_ok=True)
    faulty = config.to_dict()
    faulty["faults"] = schedule
    faulty["cluster"]["max_failures"] = max(config.cluster.max_failures, len(schedule) + 1)
    where = ", ".join(f"rank {f['rank']} at step {f['step']}" for f in schedule)
    try:
        # One Ray for both runs: starting it is a good share of a short horizon.
        with ray_session(config, address):
            print(f"gobig: check-resume: {steps} steps straight, in {root}", flush=True)
            code = run_training(config, root / "straight", address)
            if code != 0:
                return code
            print(f"gobig: check-resume: again, killing {where}", flush=True)
            code = run_training(build_config(faulty, "check-resume"), root / "killed", address)
            if code != 0:
                return code
        tolerance = GPU_REL_TOLERANCE if config.cluster.use_gpu else 0.0
        result = compare_losses(root / "straight", root / "killed", tolerance)
        print(verdict(result, schedule), flush=True)
        return 0 if result.ok else 1
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def verdict(result: Comparison, schedule: list[dict]) -> str:
    how = "bit for bit" if result.tolerance == 0 else f"within rel {result.tolerance:g}"
    kills = f"{len(schedule)} kill(s) at step(s) {', '.join(str(f['step']) for f in schedule)}"
    if result.ok:
        return f"check-resume: exact: all {result.steps} losses match {how} after {kills}"
    shown = "; ".join(f"step {s}: {a} vs {b}" for s, a, b in result.mismatched[:5])
    return (
        f"check-resume: NOT exact: {len(result.mismatched)} of {result.steps} losses differ "
        f"({how} asked) after {kills}: {shown}"
    )
