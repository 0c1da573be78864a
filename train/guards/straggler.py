"""Slow ranks reported before they hang: a straggler line per log step.

A step's wall time is the same on every rank (the gradient all-reduce waits
for the slowest), so each rank measures its own busy time instead: waiting
for its batches plus its forward pass, both before any gradient collective.
At each train record the ranks share those sums (one all-reduce); a rank
more than `guards.straggler_factor` times the median for
`guards.straggler_patience` log steps in a row is reported, by rank, host
and pid, and the record gets `straggler_rank` and `straggler_ratio`.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from train.callbacks.base import Callback, StepResult
from train.distributed import DistInfo, all_reduce_sum


class StragglerCallback(Callback):
    """Reports a rank persistently slower than the median (rank 0 prints).

    Args:
        factor: how much slower than the median rank counts as straggling.
        patience: log steps in a row before a straggler is reported.
        dist: this rank.
    """

    def __init__(self, factor: float, patience: int, dist: DistInfo):
        self.factor, self.patience, self.dist = factor, patience, dist
        self.busy_s = 0.0
        self.streak: dict[int, int] = {}

    def on_step_end(self, trainer: Any, step: StepResult) -> None:
        self.busy_s += step.busy_s

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        if record["kind"] != "train" or self.dist.world_size == 1:
            return
        world, rank = self.dist.world_size, self.dist.rank
        mine = [0.0] * world
        mine[rank] = self.busy_s
        busy = all_reduce_sum(mine, self.dist.device)
        self.busy_s = 0.0
        median = statistics.median(busy)
        slowest = max(range(world), key=lambda r: busy[r])
        ratio = busy[slowest] / median if median > 0 else 1.0
        slow = ratio > self.factor
        self.streak = {slowest: self.streak.get(slowest, 0) + 1} if slow else {}
        record["straggler_ratio"] = ratio
        if slow and self.streak[slowest] >= self.patience:
            record["straggler_rank"] = slowest
            if self.dist.is_main:
                where = _where(trainer, slowest)
                print(
                    f"gobig: straggler: rank {slowest}{where} took {ratio:.1f}x the median "
                    f"rank's time for data and forward ({busy[slowest]:.2f} s vs "
                    f"{median:.2f} s) for {self.streak[slowest]} log steps",
                    file=sys.stderr,
                    flush=True,
                )


def _where(trainer: Any, rank: int) -> str:
    watch = getattr(trainer, "hang_watch", None)
    if watch is None:
        return ""
    from train.guards.hang import read_beacons

    beacon = read_beacons(watch.run_dir, watch.world_size).get(rank)
    return f" (host {beacon['host']}, pid {beacon['pid']})" if beacon else ""
