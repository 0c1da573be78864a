"""The plan as data: what `gobig plan` prints as a table and writes as JSON.

Every figure is in bytes, FLOPs or seconds; the table rounds, the JSON does not.
`Plan.model_validate(json.loads(text))` gives back the very plan the table was made
from (pydantic models compare by value).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Precision = Literal["fp32", "bf16", "fp16"]
OffloadDevice = Literal["none", "cpu", "nvme"]


class PlanPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelShape(PlanPart):
    """The model's sizes, counted on the meta device."""

    name: str
    family: str
    params: int  # unique parameters, tied weights once
    non_embedding_params: int  # the N of the FLOPs formula
    largest_layer_params: int  # the most parameters one module holds itself (ZeRO-3's gather)
    flops_per_unit: float  # the model's own training_flops_per_unit()
    unit: str  # what the training loop counts: tokens, target tokens or images
    units_per_sample: int  # units in one full-length sample


class Hardware(PlanPart):
    """What the plan runs on, and the assumptions it made about it."""

    devices: int
    device_type: Literal["cuda", "cpu"]  # cluster.use_gpu: where the activations live
    devices_per_node: int
    device_memory: int  # bytes per device
    runtime_allowance: int  # bytes per device for the CUDA context (or the CPU runtime)
    precision: Precision
    peak_tflops: float  # per device
    mfu: float
    notes: list[str]  # one line per assumption (default memory, default peak, ...)


class Setting(PlanPart):
    """A ZeRO stage and where its states live."""

    stage: int
    offload_optimizer: bool = False
    offload_params: bool = False
    offload_device: OffloadDevice = "none"

    @property
    def label(self) -> str:
        parts = [f"ZeRO-{self.stage}"]
        offloaded = [
            name
            for name, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params))
            if on
        ]
        if offloaded:
            parts.append(f"offload {'+'.join(offloaded)} to {self.offload_device}")
        return ", ".join(parts)


class StateMemory(PlanPart):
    """Model states (parameters, gradients, optimizer) of one setting.

    device: bytes per device, DeepSpeed's accounting (the one fits are judged by).
    host: bytes of CPU memory per node (NVMe when offloading there), DeepSpeed's.
    paper_device: bytes per device, the ZeRO paper's accounting (reference).
    """

    device: int
    host: int
    paper_device: int
    formula: str
    paper_formula: str


class SettingRow(PlanPart):
    """One row of the table: a setting, its states and the micro-batches that fit."""

    setting: Setting
    states: StateMemory
    device_by_precision: dict[str, int]  # DeepSpeed's accounting, fp32 / bf16 / fp16
    paper_by_precision: dict[str, int]
    max_micro_batch: int  # 0: not even one sample fits
    max_micro_batch_checkpointed: int


class Activations(PlanPart):
    """Activation memory of one micro-batch (train/plan/activations.py)."""

    micro_batch: int
    checkpointing: bool
    saved: int
    temporary: int
    formula: str

    @property
    def total(self) -> int:
        return self.saved + self.temporary


class Choice(PlanPart):
    """A whole setting on the device: states, activations, allowance, and whether it fits."""

    setting: Setting
    micro_batch: int
    grad_accum: int
    checkpointing: bool
    states: int
    activations: int
    runtime: int
    device_memory: int

    @property
    def peak(self) -> int:
        return self.states + self.activations + self.runtime

    @property
    def fits(self) -> bool:
        return self.peak <= self.device_memory


class Recommendation(PlanPart):
    """The setting to use (None when nothing fits), with one line per reason.

    devices_needed: the fewest devices on which a setting without offload fits (None
    when it already does, or when no number of devices helps).
    """

    choice: Choice | None
    host_memory: int | None  # per node, for the chosen setting
    devices_needed: int | None
    reasons: list[str]


class Compute(PlanPart):
    """FLOPs and time at the assumed MFU and peak."""

    flops_per_unit: float
    units_per_step: int
    step_flops: float
    step_time_s: float
    units_per_s: float
    total_units: int
    total_units_source: str  # --tokens, or train.max_steps x units per step
    steps: int
    wall_clock_s: float
    gpu_hours: float


class Plan(PlanPart):
    """Everything `gobig plan` computed for one config and one cluster."""

    model: ModelShape
    hardware: Hardware
    global_batch: int  # samples per optimizer step
    global_batch_source: str
    rows: list[SettingRow]
    activations: list[Activations]  # one sample, without and with checkpointing
    as_configured: Choice  # the config's own stage, offload, micro-batch, checkpointing
    recommendation: Recommendation
    compute: Compute
