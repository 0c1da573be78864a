"""Model-state memory per device (parameters, gradients, optimizer) under ZeRO 0-3.

Two accountings, with Ψ parameters on N devices:

- DeepSpeed's (the one a fit is judged by): the arithmetic of DeepSpeed's own
  `estimate_zero2_model_states_mem_needs` (stage_1_and_2.py) and
  `estimate_zero3_model_states_mem_needs` (stage3.py). With 16-bit training its ZeRO-2
  keeps 2Ψ of 16-bit parameters on every device plus 18Ψ/N (16-bit and fp32 gradient
  partitions 2 + 4, fp32 master weights 4, Adam's two moments 8); ZeRO-3 keeps 18Ψ/N
  plus 4 bytes per parameter of the largest layer, gathered whole in forward and backward.
  Host memory carries DeepSpeed's additional_buffer_factor of 1.5. Stages 0 and 1, and fp32
  training, are derived from the same byte counts (DeepSpeed has no estimator for them).
- The ZeRO paper's (Rajbhandari et al. 2020, section 3 and figure 1), for reference:
  16Ψ for plain data parallelism, 4Ψ + 12Ψ/N (P_os), 2Ψ + 14Ψ/N (P_os+g), 16Ψ/N
  (P_os+g+p): 2 bytes of 16-bit parameters, 2 of 16-bit gradients, K = 12 of optimizer
  states (fp32 master weights, momentum and variance).

fp32 training keeps no separate master copy in the paper's accounting: parameters and
gradients are 4 bytes each and the optimizer holds only the two moments (K = 8), 16
bytes per parameter in all. DeepSpeed differs in one place: its ZeRO-1/2 optimizer
clones its fp32 partition of the parameters even when they are fp32 already (4Ψ/N more);
its ZeRO-3 shares the partition, and stage 0 uses the plain torch optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from train.plan.schema import Precision, Setting, StateMemory

# DeepSpeed's estimators' default allowance for host-side buffers.
BUFFER_FACTOR = 1.5
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ParamCounts:
    """Ψ and the largest layer's parameters."""

    total: int
    largest_layer: int


@dataclass(frozen=True)
class Devices:
    """The data-parallel devices: nodes x devices per node."""

    per_node: int
    nodes: int

    @property
    def total(self) -> int:
        return self.per_node * self.nodes


@dataclass(frozen=True)
class DeviceBytes:
    """Bytes per parameter on each device: kept whole (replicated), split N ways
    (partitioned), or per parameter of the largest layer (ZeRO-3's gathered layer)."""

    replicated: int
    partitioned: int
    layer: int = 0

    def formula(self) -> str:
        terms = [f"{self.replicated}Ψ"] if self.replicated else []
        terms += [f"{self.partitioned}Ψ/N"] if self.partitioned else []
        terms += [f"{self.layer}·largest layer"] if self.layer else []
        return " + ".join(terms) or "0"


# (stage, offload optimizer, offload params) -> DeviceBytes, for 16-bit (bf16 / fp16)
# training. Stage 2 and 3 rows are DeepSpeed's estimator's multipliers; the others follow
# from its byte counts: stage 0 partitions nothing (its ZeRO-2 figure at N = 1), stage 1
# keeps the 16-bit gradients whole, and offloading parameters alone moves the 16-bit
# parameter partition (2 of the 18) off the device.
MIXED_BYTES = {
    (0, False, False): DeviceBytes(20, 0),
    (1, False, False): DeviceBytes(4, 16),
    (1, True, False): DeviceBytes(4, 0),
    (2, False, False): DeviceBytes(2, 18),
    (2, True, False): DeviceBytes(2, 0),
    (3, False, False): DeviceBytes(0, 18, 4),
    (3, True, False): DeviceBytes(0, 2, 4),
    (3, False, True): DeviceBytes(0, 16, 4),
    (3, True, True): DeviceBytes(0, 0, 4),
}
# The same for fp32 training: parameters and gradients of 4 bytes, no separate fp32
# gradient copy, a cloned fp32 partition at stages 1 and 2 only (see the module docstring).
FP32_BYTES = {
    (0, False, False): DeviceBytes(16, 0),
    (1, False, False): DeviceBytes(8, 12),
    (1, True, False): DeviceBytes(8, 0),
    (2, False, False): DeviceBytes(4, 16),
    (2, True, False): DeviceBytes(4, 0),
    (3, False, False): DeviceBytes(0, 16, 8),
    (3, True, False): DeviceBytes(0, 4, 8),
    (3, False, True): DeviceBytes(0, 12, 8),
    (3, True, True): DeviceBytes(0, 0, 8),
}
SETTINGS = tuple(MIXED_BYTES)


def device_bytes_per_param(setting: Setting, precision: Precision) -> DeviceBytes:
    key = (setting.stage, setting.offload_optimizer, setting.offload_params)
    table = FP32_BYTES if precision == "fp32" else MIXED_BYTES
    if key not in table:
        raise ValueError(f"no ZeRO setting {setting.label} (offload_params needs stage 3)")
    return table[key]


def deepspeed_device_bytes(
    params: ParamCounts, setting: Setting, precision: Precision, devices: Devices
) -> int:
    """Model-state bytes per device, DeepSpeed's accounting (its arithmetic, int for int)."""
    b = device_bytes_per_param(setting, precision)
    # The same expressions as DeepSpeed's estimators (e.g. `2 * total_params +
    # int(18 * total_params / total_gpus)`), so the figures agree to the byte.
    return (
        b.replicated * params.total
        + int(b.partitioned * params.total / devices.total)
        + b.layer * params.largest_layer
    )


def deepspeed_host_bytes(
    params: ParamCounts, setting: Setting, devices: Devices, zero_init: bool = False
) -> int:
    """Host (CPU) memory per node, DeepSpeed's accounting, states offloaded or not.

    Without offload it is the model as each process builds it (4 bytes a parameter per
    device on the node). gobig builds the whole model in every worker before DeepSpeed
    partitions it, which DeepSpeed's ZeRO-3 estimator calls zero_init=0.
    """
    total, gpn, nodes = params.total, devices.per_node, devices.nodes
    if setting.stage < 3:
        if setting.offload_optimizer:  # estimate_zero2_model_states_mem_needs, cpu_offload
            return int(total * max(4 * devices.total, 16) * BUFFER_FACTOR)
        return int(total * 4 * gpn * BUFFER_FACTOR)
    gpus_factor = 1 / nodes
    if not setting.offload_optimizer and not setting.offload_params:
        if zero_init:
            return int(params.largest_layer * 4 * gpn * BUFFER_FACTOR)
        return int(total * 4 * gpn * BUFFER_FACTOR)
    # With the optimizer offloaded: estimate_zero3_model_states_mem_needs's 18 or 16;
    # parameters alone: their 16-bit partitions (derived, not DeepSpeed's).
    states = (18 if setting.offload_params else 16) if setting.offload_optimizer else 2
    if zero_init:
        return int(total * states * gpus_factor * BUFFER_FACTOR)
    return int(total * max(4 * gpn, states * gpus_factor) * BUFFER_FACTOR)


# (param bytes, gradient bytes, optimizer bytes K) per parameter, the paper's accounting.
PAPER_BYTES = {"fp32": (4, 4, 8), "bf16": (2, 2, 12), "fp16": (2, 2, 12)}


def paper_device_bytes(total: int, setting: Setting, precision: Precision, n: int) -> float:
    """Model-state bytes per device, the ZeRO paper's accounting (a float, as the paper's).

    Offloading (ZeRO-Offload, ZeRO-Infinity) moves the optimizer states, and from stage 2
    the gradient partition with them, off the device; parameter offload moves the
    parameters too.
    """
    p, g, k = PAPER_BYTES[precision]
    if setting.offload_optimizer:
        k = 0
        g = 0 if setting.stage >= 2 else g
    if setting.offload_params:
        p = 0
    replicated = {0: p + g + k, 1: p + g, 2: p, 3: 0}[setting.stage]
    return total * (replicated + (p + g + k - replicated) / n)


def paper_formula(setting: Setting, precision: Precision) -> str:
    p, g, k = PAPER_BYTES[precision]
    replicated = {0: p + g + k, 1: p + g, 2: p, 3: 0}[setting.stage]
    if setting.offload_optimizer or setting.offload_params:
        return "offloaded states leave the device (ZeRO-Offload / ZeRO-Infinity)"
    split = p + g + k - replicated
    return " + ".join(
        ([f"{replicated}Ψ"] if replicated else []) + ([f"{split}Ψ/N"] if split else [])
    )


def state_memory(
    params: ParamCounts, setting: Setting, precision: Precision, devices: Devices
) -> StateMemory:
    """Both accountings of one setting's model states.

    Args:
        params: Ψ and the largest layer's parameters.
        setting: ZeRO stage and offload.
        precision: the training precision.
        devices: nodes x devices per node.
    """
    return StateMemory(
        device=deepspeed_device_bytes(params, setting, precision, devices),
        host=deepspeed_host_bytes(params, setting, devices),
        paper_device=round(paper_device_bytes(params.total, setting, precision, devices.total)),
        formula=device_bytes_per_param(setting, precision).formula(),
        paper_formula=paper_formula(setting, precision),
    )
