"""The Trainer's callbacks: hooks (base.py) and the ones gobig ships.

    base.py        Callback, CallbackList, StepResult: the hook set
    throughput.py  tokens/s or images/s, MFU, data wait, step time, memory
    wandb_log.py   the W&B run and the callback that mirrors records to it
    profiler.py    an optional torch.profiler window (logging.profile.enabled)
    samples.py     what a text model writes: continuations of fixed prompts at each evaluation
    translations.py  what a translation model writes: BLEU and translations at each evaluation

The Ray orchestrator's reporting callback lives with the worker
(cluster/worker.py): train/ knows nothing of Ray.
"""

from __future__ import annotations

from typing import Any

from train.callbacks.base import Callback, CallbackList, StepResult
from train.callbacks.profiler import ProfilerCallback
from train.callbacks.samples import SamplesCallback
from train.callbacks.throughput import ThroughputCallback
from train.callbacks.translations import TranslationsCallback
from train.callbacks.wandb_log import WandbCallback

__all__ = [
    "Callback",
    "CallbackList",
    "ProfilerCallback",
    "SamplesCallback",
    "StepResult",
    "ThroughputCallback",
    "TranslationsCallback",
    "WandbCallback",
    "family_callbacks",
]


def family_callbacks(family: Any, config: Any, tokenizer: Any) -> list[Callback]:
    """What a family's runs write beside their losses, by what the family can do
    (train/families.py): samples of a family that generates text, BLEU and
    translations of one that translates; nothing for a run without a tokenizer.

    Args:
        family: the run's family object.
        config: the experiment.
        tokenizer: the training data's tokenizer (None for images).
    """
    if tokenizer is None:
        return []
    own: list[Callback] = []
    logging, train = config.logging, config.train
    if family.generates_text and logging.sample_tokens > 0:
        own.append(SamplesCallback(logging.sample_prompts, logging.sample_tokens, train.seed))
    if family.translates and train.eval_bleu_sentences > 0:
        own.append(TranslationsCallback(train.eval_bleu_sentences,
                                        logging.sample_translations, config.decode))  # fmt: skip
    return own
