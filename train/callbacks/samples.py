"""What a text model writes, at every evaluation: short continuations of fixed prompts.

A loss curve says little about what a model has learned; a few lines of its text
say a lot. At each "eval" record of a family that generates text, every rank
continues `logging.sample_prompts` by `logging.sample_tokens` tokens (all ranks
alike: under ZeRO-3 each forward gathers the weights collectively), and a
"samples" record goes to metrics.jsonl and, through the W&B callback, to a table.

Sampling draws from its own seeded generator (the run's seed and the step) with
the model in eval mode: the training run's random state and losses are untouched.
"""

from __future__ import annotations

import io
from typing import Any

from train.callbacks.base import Callback

TEMPERATURE = 0.8


class SamplesCallback(Callback):
    """Args:
    prompts: the texts to continue.
    max_new_tokens: tokens per sample.
    seed: the run's seed (each evaluation's samples use seed + step).
    """

    def __init__(self, prompts: list[str], max_new_tokens: int, seed: int):
        self.prompts, self.max_new_tokens, self.seed = prompts, max_new_tokens, seed

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        if record["kind"] != "eval":
            return
        from train.generate import TrainedModel, sample_text

        model = trainer.engine.module.model
        trained = TrainedModel(model, trainer.train_loader.tokenizer, trainer.run_dir)
        samples = []
        for i, prompt in enumerate(self.prompts):
            seed = self.seed * 1000 + record["step"] + i
            try:
                text = sample_text(trained, prompt, self.max_new_tokens, seed=seed,
                                   out=io.StringIO(), temperature=TEMPERATURE)  # fmt: skip
            except ValueError as exc:  # a diverged model: the anomaly guard's business
                text = f"(no sample: {exc})"
            samples.append({"prompt": prompt, "text": text})
        trainer.record({"kind": "samples", "step": record["step"], "samples": samples})
