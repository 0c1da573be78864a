"""What follows an anomaly: the policy of `guards.anomaly_policy`, and when to give up.

    skip      withhold the update (the guard already did) and go on; a replay of
              the step withholds it too (the guard record says so)
    rollback  back to the newest complete checkpoint before the anomaly, in this
              process; the batches that led to it are skipped from then on
    stop      end the run at once

Too many anomalies within `guards.anomaly_window` steps end the run under any
policy, with one line (DivergenceError) naming the steps, the newest healthy
checkpoint and what to change.
"""

from __future__ import annotations

from typing import Any

from train.config.schema import GuardsConfig
from train.guards.anomaly import DivergenceError


class AnomalyPolicy:
    """Applies the policy to an anomaly the guard found, on every rank alike.

    Args:
        guards: the `guards` section.
        accum: micro-batches per step (what one step's batches are).
    """

    def __init__(self, guards: GuardsConfig, accum: int):
        self.guards = guards
        self.accum = accum

    def handle(self, trainer: Any, anomaly: dict[str, Any]) -> bool:
        """Record it and apply the policy; True if the run rolled back."""
        guards, step = self.guards, anomaly["step"]
        trainer.guard_record.add_anomaly(anomaly)
        trainer.record(dict(anomaly))
        recent = trainer.guard_record.recent_anomalies(step, guards.anomaly_window)
        if guards.anomaly_policy == "stop" or len(recent) >= guards.max_anomalies:
            raise self._divergence(trainer, recent)
        if guards.anomaly_policy == "rollback" and self._roll_back(trainer, step):
            return True
        trainer.guard_record.skip_update(step)  # a replay of this step withholds it too
        return False

    def _divergence(self, trainer: Any, recent: list[dict[str, Any]]) -> DivergenceError:
        guards, last = self.guards, recent[-1]
        steps = ", ".join(str(a["step"]) for a in recent)
        healthy = trainer.checkpointer.last
        where = trainer.checkpointer.home_of(healthy) if healthy else "none (no checkpoint yet)"
        if guards.anomaly_policy == "stop":
            what = f"{last['reason']} (guards.anomaly_policy=stop)"
        else:
            what = (f"{len(recent)} anomalies within {guards.anomaly_window} steps "
                    f"(steps {steps}; the last: {last['reason']})")  # fmt: skip
        return DivergenceError(
            f"step {last['step']}: training diverged: {what}; newest healthy checkpoint: "
            f"{where}; lower optim.lr, keep optim.grad_clip above 0, or use "
            "train.precision=fp32, then resume with those overrides"
        )

    def _roll_back(self, trainer: Any, step: int) -> bool:
        """Back to the newest complete checkpoint before `step`, its batches skipped."""
        with trainer.hang_watch.slow_phase("rollback"):
            trainer.commit_pending()
            meta = trainer.checkpointer.locate(before_step=step)
            if meta is None:
                if trainer.dist.is_main:
                    print(f"gobig: warning: no checkpoint before step {step} to roll back "
                          "to; skipping the update instead", flush=True)  # fmt: skip
                return False
            first = max(int(meta["step"]) + 1, step - self.guards.rollback_skip_steps + 1)
            trainer.guard_record.skip_batches(first, (step - first + 1) * self.accum)
            trainer.reload()
        return True
