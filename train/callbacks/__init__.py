"""The Trainer's callbacks: hooks (base.py) and the ones gobig ships.

    base.py        Callback, CallbackList, StepResult: the hook set
    throughput.py  tokens/s or images/s, MFU, data wait, step time, memory
    wandb_log.py   the W&B run and the callback that mirrors records to it
    profiler.py    an optional torch.profiler window (logging.profile.enabled)
    samples.py     what a text model writes: continuations of fixed prompts at each evaluation

The Ray orchestrator's reporting callback lives with the worker
(cluster/worker.py): train/ knows nothing of Ray.
"""

from train.callbacks.base import Callback, CallbackList, StepResult
from train.callbacks.profiler import ProfilerCallback
from train.callbacks.samples import SamplesCallback
from train.callbacks.throughput import ThroughputCallback
from train.callbacks.wandb_log import WandbCallback

__all__ = [
    "Callback",
    "CallbackList",
    "ProfilerCallback",
    "SamplesCallback",
    "StepResult",
    "ThroughputCallback",
    "WandbCallback",
]
