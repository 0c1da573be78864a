"""Make the plan of one experiment config on one cluster: `make_plan(config, request)`."""

from __future__ import annotations

from dataclasses import dataclass

from train.config.schema import ExperimentConfig
from train.plan.compute import compute_estimate, step_units
from train.plan.errors import PlanError
from train.plan.fit import RUNTIME_ALLOWANCE, DeviceBudget
from train.plan.hardware import default_device_memory, default_devices_per_node, default_peak_tflops
from train.plan.memory import PRECISIONS, SETTINGS, Devices, ParamCounts, state_memory
from train.plan.recommend import BatchTarget, recommend
from train.plan.schema import Hardware, Plan, Setting, SettingRow
from train.plan.shapes import model_shape


@dataclass(frozen=True)
class PlanRequest:
    """What the command line adds to the config; None takes the default (train/plan/hardware.py).

    devices: data-parallel devices (default cluster.num_workers).
    devices_per_node: for host memory per node (default: up to 8, dividing devices).
    device_memory: bytes per device.
    total_units: tokens (images for ViT) to train on (default train.max_steps' worth).
    mfu: the model FLOPs utilisation assumed for time estimates.
    peak_tflops: per device.
    """

    devices: int | None = None
    devices_per_node: int | None = None
    device_memory: int | None = None
    total_units: int | None = None
    mfu: float = 0.4
    peak_tflops: float | None = None


def configured_micro_batch(config: ExperimentConfig) -> int:
    """Samples per micro-batch as configured. Batches by token budget (data.max_tokens,
    seq2seq) count as the full-length pairs that budget holds: the same tokens, the most
    a budget-sized batch can cost."""
    if config.data.max_tokens is not None:
        return max(1, config.data.max_tokens // (2 * config.model.max_seq_len))
    return config.train.micro_batch_size


def global_batch(config: ExperimentConfig) -> tuple[int, str]:
    """Samples per optimizer step, and which config keys set it."""
    t, workers = config.train, config.cluster.num_workers
    if t.global_batch_size is not None:
        return t.global_batch_size, "train.global_batch_size"
    micro = configured_micro_batch(config)
    per_micro = (
        f"data.max_tokens {config.data.max_tokens} as {micro} full-length pairs"
        if config.data.max_tokens is not None
        else f"micro-batch {micro}"
    )
    return micro * t.grad_accum_steps * workers, (
        f"as configured: {per_micro} x accumulation {t.grad_accum_steps} x {workers} workers"
    )


def hardware_of(config: ExperimentConfig, request: PlanRequest) -> Hardware:
    devices = request.devices or config.cluster.num_workers
    per_node = request.devices_per_node or default_devices_per_node(devices)
    if devices % per_node:
        raise PlanError(f"--devices-per-node {per_node} does not divide --devices {devices}")
    notes = []
    memory = request.device_memory
    if memory is None:
        memory, note = default_device_memory(config, devices)
        notes.append(note)
    peak = request.peak_tflops
    if peak is None:
        peak, note = default_peak_tflops(config)
        notes += [note] if note else []
    return Hardware(
        devices=devices,
        device_type="cuda" if config.cluster.use_gpu else "cpu",
        devices_per_node=per_node,
        device_memory=memory,
        runtime_allowance=RUNTIME_ALLOWANCE,
        precision=config.train.precision,
        peak_tflops=peak,
        mfu=request.mfu,
        notes=notes,
    )


def configured_setting(config: ExperimentConfig) -> Setting:
    z = config.zero
    offloads = z.offload_optimizer or z.offload_params
    device = ("nvme" if z.nvme_path else "cpu") if offloads else "none"
    return Setting(
        stage=z.stage,
        offload_optimizer=z.offload_optimizer,
        offload_params=z.offload_params,
        offload_device=device,
    )


def recommendable(rows: list[SettingRow], device_type: str) -> list[SettingRow]:
    """The settings worth recommending: on CPU workers offloading moves states from
    the workers' memory into the same machine's memory, freeing nothing."""
    if device_type == "cuda":
        return rows
    return [r for r in rows if r.setting.offload_device == "none"]


def make_plan(config: ExperimentConfig, request: PlanRequest) -> Plan:
    """Memory, fit, recommendation and compute of `config` on the cluster `request` describes.

    Args:
        config: the experiment (its model, precision, ZeRO section, batch and steps).
        request: devices, memory, peak, MFU and token budget from the command line.
    """
    shape = model_shape(config.model)
    hardware = hardware_of(config, request)
    precision = hardware.precision
    params = ParamCounts(shape.params, shape.largest_layer_params)
    per_node = hardware.devices_per_node
    devices = Devices(per_node, hardware.devices // per_node)
    budget = DeviceBudget(
        config.model, precision, hardware.device_memory, RUNTIME_ALLOWANCE, hardware.device_type
    )
    offload_device = "nvme" if config.zero.nvme_path else "cpu"

    rows = []
    for stage, offload_optimizer, offload_params in SETTINGS:
        offloads = offload_optimizer or offload_params
        setting = Setting(
            stage=stage,
            offload_optimizer=offload_optimizer,
            offload_params=offload_params,
            offload_device=offload_device if offloads else "none",
        )
        states = state_memory(params, setting, precision, devices)
        by_precision = {p: state_memory(params, setting, p, devices) for p in PRECISIONS}
        rows.append(
            SettingRow(
                setting=setting,
                states=states,
                device_by_precision={p: m.device for p, m in by_precision.items()},
                paper_by_precision={p: m.paper_device for p, m in by_precision.items()},
                max_micro_batch=budget.max_micro_batch(states.device, checkpointing=False),
                max_micro_batch_checkpointed=budget.max_micro_batch(states.device, True),
            )
        )

    own = configured_setting(config)
    own_states = next(r.states.device for r in rows if r.setting == own)
    t = config.train
    as_configured = budget.choice(
        own,
        own_states,
        (configured_micro_batch(config), t.grad_accum_steps),
        config.model.activation_checkpointing,
    )
    batch, batch_source = global_batch(config)
    if batch % hardware.devices:  # every device takes whole samples: round the step up
        rounded = -(-batch // hardware.devices) * hardware.devices
        batch_source += f"; {batch} rounded up to fill {hardware.devices} devices"
        batch = rounded
    target = BatchTarget(batch, batch_source, hardware.devices)
    if request.total_units is not None:
        total = (request.total_units, "--tokens")
    else:
        steps = config.train.max_steps
        total = (steps * step_units(shape, batch), f"train.max_steps {steps} x units per step")
    return Plan(
        model=shape,
        hardware=hardware,
        global_batch=batch,
        global_batch_source=batch_source,
        rows=rows,
        activations=[budget.activations(1, False), budget.activations(1, True)],
        as_configured=as_configured,
        recommendation=recommend(recommendable(rows, hardware.device_type), budget, target, params),
        compute=compute_estimate(shape, hardware, batch, total),
    )
