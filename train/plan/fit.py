"""What fits on one device: model states + one micro-batch's activations + an allowance.

The allowance stands for what no formula here counts: the CUDA context and the
libraries' kernels (about 0.5-1 GB on a GPU; the interpreter and libraries on a CPU
worker). Fragmentation and communication buffers beyond DeepSpeed's own factor are not
modelled (docs/plan.md).
"""

from __future__ import annotations

from model.config import ModelConfig
from train.plan import activations
from train.plan.schema import Activations, Choice, Precision, Setting

RUNTIME_ALLOWANCE = 10**9  # bytes per device for the CUDA context (or the CPU runtime)
MAX_MICRO_BATCH = 2**20  # the search stops here; no real step uses more


class DeviceBudget:
    """One device's memory, spent on a model's states and activations.

    Args:
        model: the model section (activations depend on its shape).
        precision: the activations' dtype.
        device_memory: bytes per device.
        runtime: bytes set aside for the CUDA context (or the CPU runtime).
        device: cuda | cpu, where the activations live (gobig's CPU runs keep some
            tensors the CUDA kernels do not: train/plan/activations.py).
    """

    def __init__(
        self,
        model: ModelConfig,
        precision: Precision,
        device_memory: int,
        runtime: int,
        device: str = "cuda",
    ) -> None:
        self.model = model
        self.precision = precision
        self.device_memory = device_memory
        self.runtime = runtime
        self.device = device
        self._activations: dict[tuple[int, bool], Activations] = {}

    def activations(self, micro_batch: int, checkpointing: bool) -> Activations:
        """Activation memory of one micro-batch (cached: the searches ask many times)."""
        key = (micro_batch, checkpointing)
        if key not in self._activations:
            # Looked up at each call (not bound at import) so tests can stand in for it.
            estimate_of = (
                activations.activation_estimate
                if self.device == "cuda"
                else activations.cpu_activation_estimate
            )
            estimate = estimate_of(
                self.model, micro_batch, precision=self.precision, checkpointing=checkpointing
            )
            self._activations[key] = Activations(
                micro_batch=micro_batch,
                checkpointing=checkpointing,
                saved=estimate.saved,
                temporary=estimate.temporary,
                formula=estimate.formula,
            )
        return self._activations[key]

    def room(self, states: int) -> int:
        """Bytes left for activations once the states and the allowance are in."""
        return self.device_memory - states - self.runtime

    def max_micro_batch(self, states: int, checkpointing: bool) -> int:
        """The largest micro-batch whose activations fit beside `states` (0: none does).

        Activations grow with the micro-batch, so doubling then bisecting finds it in
        about 2 log2(answer) estimates.
        """
        room = self.room(states)

        def fits(micro_batch: int) -> bool:
            return self.activations(micro_batch, checkpointing).total <= room

        if not fits(1):
            return 0
        low = 1  # fits
        while low < MAX_MICRO_BATCH and fits(min(2 * low, MAX_MICRO_BATCH)):
            low = min(2 * low, MAX_MICRO_BATCH)
        high = min(2 * low, MAX_MICRO_BATCH + 1)  # does not fit (or past the cap)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return low

    def choice(
        self, setting: Setting, states: int, batch: tuple[int, int], checkpointing: bool
    ) -> Choice:
        """The whole device for one setting at `batch` = (micro-batch, gradient accumulation)."""
        micro_batch, grad_accum = batch
        return Choice(
            setting=setting,
            micro_batch=micro_batch,
            grad_accum=grad_accum,
            checkpointing=checkpointing,
            states=states,
            activations=self.activations(micro_batch, checkpointing).total,
            runtime=self.runtime,
            device_memory=self.device_memory,
        )
