"""The plan as a table for the console: `render_plan(plan)`.

Made from the Plan object alone, so a plan read back from its JSON renders the same.
"""

from __future__ import annotations

from train.plan.memory import PRECISIONS
from train.plan.schema import Choice, Plan, SettingRow
from train.plan.units import count, duration, gb


def _number(n: float) -> str:
    """A GB figure without its unit, for table columns."""
    return gb(n).removesuffix(" GB")


def _hours(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}"


def _align(table: list[tuple[str, ...]], free_last: bool = False) -> list[str]:
    """Rows of cells as lines: the first column left-aligned, the others right-aligned
    (the last one left as it is when `free_last`: a formula)."""
    aligned = table[0][1:-1] if free_last else table[0][1:]
    widths = [max(len(r[i]) for r in table) for i in range(len(aligned) + 1)]
    lines = []
    for r in table:
        cells = [r[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(r[1 : len(widths)], widths[1:], strict=True)]
        lines.append("  ".join(cells + ([r[-1]] if free_last else [])))
    return lines


def _states_table(plan: Plan) -> list[str]:
    table = [("setting", "states", "paper", "host/node", "max micro", "ckpt: max micro", "formula")]
    for row in plan.rows:
        states = row.states
        table.append(
            (
                row.setting.label,
                _number(states.device),
                _number(states.paper_device),
                _number(states.host),
                str(row.max_micro_batch),
                str(row.max_micro_batch_checkpointed),
                states.formula,
            )
        )
    return _align(table, free_last=True)


def _precision_table(rows: list[SettingRow]) -> list[str]:
    table = [("stage", *PRECISIONS)]
    for row in rows:
        if row.setting.offload_device == "none":
            cells = (
                f"{_number(row.device_by_precision[p])} / {_number(row.paper_by_precision[p])}"
                for p in PRECISIONS
            )
            table.append((f"ZeRO-{row.setting.stage}", *cells))
    return _align(table)


def describe_choice(choice: Choice) -> str:
    """One setting on the device in one line: what it is, its peak, and whether it fits."""
    verdict = "fits" if choice.fits else "does NOT fit"
    return (
        f"{choice.setting.label}, micro-batch {choice.micro_batch} x {choice.grad_accum} "
        f"accumulation, checkpointing {'on' if choice.checkpointing else 'off'}: peak "
        f"{gb(choice.peak)} of {gb(choice.device_memory)} per device (states "
        f"{gb(choice.states)} + activations {gb(choice.activations)} + runtime "
        f"{gb(choice.runtime)}): {verdict}"
    )


def render_plan(plan: Plan) -> str:
    """The plan as text: header, states table, precisions, activations, choice, compute."""
    m, hw, c = plan.model, plan.hardware, plan.compute
    unit = m.unit.removesuffix("s")
    lines = [
        f"gobig plan: {m.name} ({m.family}), {count(m.params)} parameters "
        f"({m.params:,}; largest layer {count(m.largest_layer_params)}), {hw.precision}",
        f"devices: {hw.devices} x {gb(hw.device_memory)} {hw.device_type} "
        f"({hw.devices_per_node} per node), "
        f"runtime allowance {gb(hw.runtime_allowance)} each",
        *(f"  note: {note}" for note in hw.notes),
        f"global batch: {plan.global_batch} samples a step ({plan.global_batch_source}) = "
        f"{c.units_per_step:,} {m.unit}",
        "",
        f"model states per device in GB, {hw.precision}: DeepSpeed's estimator (paper: the ZeRO "
        "paper's); host/node: CPU memory per node (NVMe when offloading there)",
        *_states_table(plan),
        "",
        "model states per device by precision, no offload, GB (DeepSpeed / paper)",
        *_precision_table(plan.rows),
        "",
    ]
    for act in plan.activations:
        lines.append(
            f"activations of one sample, checkpointing {'on' if act.checkpointing else 'off'}: "
            f"{gb(act.total)} (saved {gb(act.saved)} + temporary {gb(act.temporary)})"
        )
    lines.append("  (the formulas, term by term, are in the JSON: --json FILE)")
    rec = plan.recommendation
    lines += ["", f"as configured: {describe_choice(plan.as_configured)}"]
    if rec.choice is not None:
        ch = rec.choice
        lines.append(
            f"recommended: {ch.setting.label}, micro-batch {ch.micro_batch}, gradient "
            f"accumulation {ch.grad_accum}, activation checkpointing "
            f"{'on' if ch.checkpointing else 'off'}"
        )
    else:
        lines.append("recommended: nothing fits")
    lines += [f"  - {reason}" for reason in rec.reasons]
    lines += [
        "",
        f"compute: {c.step_flops:.3g} FLOPs a step = {c.flops_per_unit:.3g} per {unit} "
        f"x {c.units_per_step:,} {m.unit}",
        f"  at {hw.mfu:.0%} MFU of {hw.peak_tflops:g} TFLOP/s x {hw.devices} devices: "
        f"{duration(c.step_time_s)} a step, {count(c.units_per_s)} {m.unit}/s",
        f"  {count(c.total_units)} {m.unit} ({c.total_units_source}): {c.steps:,} steps, "
        f"{duration(c.wall_clock_s)} wall clock, {_hours(c.gpu_hours)} GPU-hours",
    ]
    return "\n".join(lines) + "\n"
