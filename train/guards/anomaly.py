"""Divergence caught before it reaches the weights: non-finite values and loss spikes.

Before every optimizer update the guard looks at the step's global loss (one
all-reduce) and the global gradient norm. A non-finite loss or norm, or a
loss more than `guards.spike_sigmas` standard deviations above the running
window of healthy losses, is an anomaly: the update is withheld, so weights
and optimizer state stay exactly as they were, and the Trainer applies the
policy (skip, rollback, stop; train/trainer.py).

The update is withheld at the one place every DeepSpeed path goes through:
the step of the torch optimizer DeepSpeed wraps (`UpdateGate`). ZeRO 1-3 and
the bf16/fp16 wrappers call it after computing the global norm, so the
decision is made there, with that norm, identically on every rank. When
DeepSpeed skips an update by itself (its fp16 loss scaler, or ZeRO-3 and the
bf16 optimizer on an invalid norm) the gate is never called: under fp16 with
a finite loss that is loss scaling at work, not an anomaly.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from data_pipeline.errors import GobigError
from train.config.schema import GuardsConfig
from train.distributed import all_reduce_sum
from train.guards.record import GuardRecord


@dataclass
class Verdict:
    apply: bool
    reason: str = ""  # why not (empty when applied)
    forced: bool = False  # withheld because the run's record says so (a replay)


class UpdateGate:
    """Wraps a torch optimizer's `step` so that one update can be withheld.

    Args:
        optimizer: the optimizer DeepSpeed steps (`engine.basic_optimizer`, or
            the engine's optimizer itself without a wrapper).
        decide: asked once per update, at its first `step` call.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, decide: Callable[[], Verdict]):
        self.decide = decide
        self.verdict: Verdict | None = None
        inner = optimizer.step

        @functools.wraps(inner)  # keeps what torch's LR scheduler marked on it
        def step(*args: Any, **kwargs: Any) -> Any:
            if self.verdict is None:
                self.verdict = self.decide()
            if not self.verdict.apply:
                return None  # ZeRO may step once per parameter group: withhold each
            return inner(*args, **kwargs)

        optimizer.step = step  # type: ignore[method-assign]


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


class AnomalyGuard:
    """Decides, before each update, whether it may be applied.

    Args:
        config: the `guards` section.
        engine: the DeepSpeed engine (its optimizer records the global grad norm).
        record: the run's guard record (replayed skipped updates).
        precision: train.precision (fp16's loss scaler skips updates by design).
        device: for the loss all-reduce.
    """

    def __init__(
        self,
        config: GuardsConfig,
        engine: Any,
        record: GuardRecord,
        precision: str,
        device: torch.device,
    ):
        self.config = config
        self.engine = engine
        self.record = record
        self.precision = precision
        self.device = device
        self.window: deque[float] = deque(maxlen=config.spike_window)
        optimizer = getattr(engine, "basic_optimizer", None) or engine.optimizer
        self.gate = UpdateGate(optimizer, self._decide)
        self.step = 0
        self.loss = 0.0
        self.grad_norm: float | None = None
        self._fallback_norm: torch.Tensor | None = None

    def before_update(
        self, step: int, local_loss: torch.Tensor, grad_norm: torch.Tensor | None
    ) -> None:
        """At the accumulation boundary, after backward, before `engine.step()`.

        Args:
            step: the step this update completes.
            local_loss: this rank's mean loss over the step's micro-batches.
            grad_norm: the global norm where DeepSpeed does not record one
                (engine.untracked_grad_norm), else None.
        """
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.loss = all_reduce_sum([float(local_loss)], self.device)[0] / world
        self.step = step
        self._fallback_norm = grad_norm
        self.grad_norm = None
        self.gate.verdict = None

    def _global_grad_norm(self) -> float | None:
        norm = getattr(self.engine.optimizer, "_global_grad_norm", None)
        if norm is None:
            norm = self._fallback_norm
        return float(norm) if norm is not None else None

    def _decide(self) -> Verdict:
        self.grad_norm = self._global_grad_norm()
        if self.record.update_skipped(self.step):
            return Verdict(False, "skipped by the run's record", forced=True)
        reason = self._non_finite() or self._spike()
        return Verdict(not reason, reason)

    def _non_finite(self) -> str:
        if not math.isfinite(self.loss):
            return "non-finite loss"
        if not _finite(self.grad_norm):
            return "non-finite grad norm"
        return ""

    def _spike(self) -> str:
        sigmas = self.config.spike_sigmas
        if sigmas <= 0 or len(self.window) < self.config.spike_min_steps:
            return ""
        mean = statistics.fmean(self.window)
        std = statistics.pstdev(self.window, mean)
        if std > 0 and self.loss > mean + sigmas * std:
            return (
                f"loss spike ({self.loss:.4g} over the window's mean {mean:.4g} "
                f"+ {sigmas:g} x std {std:.3g})"
            )
        return ""

    def after_update(self) -> dict[str, Any] | None:
        """After `engine.step()`: the anomaly of this update, or None if it was healthy."""
        verdict = self.gate.verdict
        if verdict is None:  # DeepSpeed withheld the update by itself
            if self.precision == "fp16" and math.isfinite(self.loss):
                return None  # the loss scaler found an overflow: its normal work
            self.grad_norm = self._global_grad_norm()
            verdict = Verdict(False, self._non_finite() or "non-finite grad norm")
        if verdict.apply:
            self.window.append(self.loss)
            return None
        if verdict.forced:
            return None
        return {
            "kind": "anomaly",
            "step": self.step,
            "reason": verdict.reason,
            "loss": self.loss if math.isfinite(self.loss) else str(self.loss),
            "grad_norm": self.grad_norm if _finite(self.grad_norm) else str(self.grad_norm),
            "policy": self.config.anomaly_policy,
        }

    @property
    def applied(self) -> bool:
        """Whether the latest update reached the weights."""
        return self.gate.verdict is not None and self.gate.verdict.apply

    # -- state (checkpointed, so spike decisions survive a resume) --------------------

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self.window)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.clear()
        self.window.extend(float(x) for x in state.get("window", []))


class DivergenceError(GobigError, RuntimeError):
    """The run diverged past what the anomaly policy allows; str() is one line.

    Every rank raises it at the same step (the decision is global), and a
    restart would meet it again: `final` tells an orchestrator not to retry.
    """

    final = True
