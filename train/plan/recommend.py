"""Pick the setting to train with, and say why in one line per reason.

The order of preference: stay on the device (offload moves states over PCIe every
step), then no activation checkpointing (recomputing the forward pass costs about a
third more compute), then ZeRO-0 to 2 over ZeRO-3 (stages 0-2 move as much data per step
as plain data parallelism; ZeRO-3 also gathers every layer's parameters, about 1.5x),
then the fewest gradient-accumulation steps (larger micro-batches keep the device busy),
then the lowest stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from train.plan.fit import DeviceBudget
from train.plan.memory import Devices, ParamCounts, deepspeed_device_bytes
from train.plan.schema import Precision, Recommendation, Setting, SettingRow
from train.plan.units import gb

MAX_DEVICES = 2**40


@dataclass(frozen=True)
class BatchTarget:
    """Samples per step to reach, and over how many devices (which divide it)."""

    global_batch: int
    source: str  # where global_batch came from, for the reasons
    devices: int

    @property
    def per_device(self) -> int:
        """Samples per device per step (the devices divide the global batch)."""
        return self.global_batch // self.devices


@dataclass(frozen=True)
class Candidate:
    row: SettingRow
    checkpointing: bool
    micro_batch: int
    grad_accum: int

    @property
    def max_micro_batch(self) -> int:
        row = self.row
        return row.max_micro_batch_checkpointed if self.checkpointing else row.max_micro_batch

    def preference(self) -> tuple[int, bool, bool, int, int]:
        s = self.row.setting
        return (offload_level(s), self.checkpointing, s.stage == 3, self.grad_accum, s.stage)


def offload_level(setting: Setting) -> int:
    return int(setting.offload_optimizer) + 2 * int(setting.offload_params)


def largest_divisor_at_most(n: int, limit: int) -> int:
    divisors = (q for d in range(1, math.isqrt(n) + 1) if n % d == 0 for q in (d, n // d))
    return max(q for q in divisors if q <= limit)


def candidates(rows: list[SettingRow], per_device: int) -> list[Candidate]:
    """Every setting that fits at least one sample, at its best micro-batch."""
    found = []
    for row in rows:
        for checkpointing in (False, True):
            most = row.max_micro_batch_checkpointed if checkpointing else row.max_micro_batch
            if most >= 1:
                micro = largest_divisor_at_most(per_device, most)
                found.append(Candidate(row, checkpointing, micro, per_device // micro))
    return found


def devices_needed(params: ParamCounts, precision: Precision, budget: DeviceBudget) -> int | None:
    """The fewest devices on which ZeRO-3 without offload fits one checkpointed sample.

    ZeRO-3 without offload needs the least device memory of the settings that keep
    states on the device, and its states shrink as devices are added; None when even
    infinitely many devices would leave no room (the largest layer and one sample's
    activations alone do not fit).
    """
    setting = Setting(stage=3)
    room = budget.room(0) - budget.activations(1, checkpointing=True).total

    def fits(n: int) -> bool:
        return deepspeed_device_bytes(params, setting, precision, Devices(n, 1)) <= room

    if not fits(MAX_DEVICES):
        return None
    low, high = 0, MAX_DEVICES  # low does not fit (0 devices), high does
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def recommend(
    rows: list[SettingRow], budget: DeviceBudget, target: BatchTarget, params: ParamCounts
) -> Recommendation:
    """The preferred setting that fits (see the module docstring), with its reasons.

    Args:
        rows: every setting with its states and largest micro-batches.
        budget: the device's memory and the model's activations.
        target: the global batch to reach and the devices.
        params: Ψ and the largest layer (for the devices a setting without offload needs).
    """
    found = candidates(rows, target.per_device)
    needed = None
    if not found or offload_level(min(found, key=Candidate.preference).row.setting):
        needed = devices_needed(params, budget.precision, budget)
    if not found:
        return Recommendation(
            choice=None, host_memory=None, devices_needed=needed, reasons=_no_fit(rows, budget)
        )
    best = min(found, key=Candidate.preference)
    s = best.row.setting
    choice = budget.choice(
        s, best.row.states.device, (best.micro_batch, best.grad_accum), best.checkpointing
    )
    reasons = [
        _stage_reason(best, found),
        _offload_reason(best, target, needed),
        _batch_reason(best, target),
        _checkpointing_reason(best, found),
        f"peak {gb(choice.peak)} of {gb(choice.device_memory)} per device: model states "
        f"{gb(choice.states)} + activations {gb(choice.activations)} + runtime allowance "
        f"{gb(choice.runtime)}",
    ]
    return Recommendation(
        choice=choice, host_memory=best.row.states.host, devices_needed=needed, reasons=reasons
    )


def _same_level(c: Candidate, best: Candidate) -> bool:
    return (
        offload_level(c.row.setting) == offload_level(best.row.setting)
        and c.checkpointing == best.checkpointing
    )


def _stage_reason(best: Candidate, found: list[Candidate]) -> str:
    s, states = best.row.setting, best.row.states
    head = f"ZeRO-{s.stage}: model states {gb(states.device)} per device ({states.formula})"
    lower = [
        c
        for c in found
        if _same_level(c, best) and c.row.setting.stage < s.stage and c.grad_accum > best.grad_accum
    ]
    if s.offload_params:
        return f"{head}; only ZeRO-3 can offload parameters"
    if s.stage == 3:
        return f"{head}; no lower stage fits here (ZeRO-3 also gathers parameters: ~1.5x traffic)"
    if lower:
        c = max(lower, key=lambda c: c.row.setting.stage)
        return (
            f"{head}; ZeRO-{c.row.setting.stage} fits micro-batch {c.max_micro_batch} at most "
            f"({c.grad_accum} accumulation steps)"
        )
    return f"{head}; the lowest stage that fits this micro-batch"


def _offload_reason(best: Candidate, target: BatchTarget, needed: int | None) -> str:
    s = best.row.setting
    if not offload_level(s):
        return (
            "no offload: the states fit in device memory (offload moves them over PCIe each step)"
        )
    what = s.label.split(", ", 1)[1]
    more = (
        f"{needed} devices would fit without offload"
        if needed
        else "no number of devices fits without offload"
    )
    where = "NVMe" if s.offload_device == "nvme" else "host memory"
    return (
        f"{what}: nothing fits on {target.devices} device(s) without it ({more}); "
        f"{where} about {gb(best.row.states.host)} per node"
    )


def _batch_reason(best: Candidate, target: BatchTarget) -> str:
    return (
        f"micro-batch {best.micro_batch} x {best.grad_accum} accumulation steps x "
        f"{target.devices} devices = {target.global_batch} samples a step ({target.source}); "
        f"{best.micro_batch} is the largest divisor of {target.per_device} within the "
        f"{best.max_micro_batch} that fit"
    )


def _checkpointing_reason(best: Candidate, found: list[Candidate]) -> str:
    if best.checkpointing:
        return "activation checkpointing on: without it not even one sample fits beside the states"
    text = (
        f"activation checkpointing off: micro-batch {best.micro_batch} fits without it "
        "(recomputing the forward pass costs about a third more compute)"
    )
    twin = [c for c in found if c.row is best.row and c.checkpointing]
    if twin and twin[0].grad_accum < best.grad_accum:
        text += f"; with it micro-batch {twin[0].micro_batch} would fit"
    return text


def _no_fit(rows: list[SettingRow], budget: DeviceBudget) -> list[str]:
    smallest = min(rows, key=lambda r: r.states.device)
    need = smallest.states.device + budget.activations(1, True).total + budget.runtime
    return [
        f"nothing fits: even {smallest.setting.label} with micro-batch 1 and activation "
        f"checkpointing needs {gb(need)} per device of {gb(budget.device_memory)}",
        "more devices do not help (one sample's activations and the largest layer stay whole): "
        "shorten model.max_seq_len, shrink the model or use devices with more memory",
    ]
