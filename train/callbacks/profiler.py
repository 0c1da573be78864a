"""An optional torch.profiler run over a few steps (`logging.profile.*` in the config).

After `wait` steps and `warmup` warm-up steps, `active` steps are recorded;
each rank writes a Chrome trace to RUN_DIR/profile/rank_NNNNN.json (open it
in Perfetto or chrome://tracing) and rank 0 prints the top operators.
The Trainer labels the parts of a step (`gobig.data`, `gobig.forward`,
`gobig.backward`, `gobig.grad_norm`, `gobig.optimizer`), so the trace shows
where a step goes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.callbacks.base import Callback, StepResult


class ProfilerCallback(Callback):
    """Profiles CPU (and the accelerator's) activity over a window of steps.

    Args:
        out_dir: where traces go (None: keep the profile in memory only).
        wait: steps skipped first.
        warmup: steps traced but discarded (profiler warm-up).
        active: steps recorded.
    """

    def __init__(self, out_dir: Path | None, wait: int = 5, warmup: int = 2, active: int = 3):
        self.out_dir = out_dir
        self.schedule = {"wait": wait, "warmup": warmup, "active": active, "repeat": 1}
        self.profiler: Any = None

    def on_train_start(self, trainer: Any) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        activities = [ProfilerActivity.CPU]
        if trainer.dist.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.profiler = profile(activities=activities, schedule=schedule(**self.schedule))
        self.profiler.start()

    def on_step_end(self, trainer: Any, step: StepResult) -> None:
        self.profiler.step()

    def on_close(self, trainer: Any, result: Any) -> None:
        self.profiler.stop()
        if self.out_dir is None or not self.profiler.events():
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.profiler.export_chrome_trace(str(self.out_dir / f"rank_{trainer.dist.rank:05d}.json"))
        if trainer.dist.is_main:
            table = self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
            print(f"profile of steps (traces in {self.out_dir}):\n{table}", flush=True)
