"""The shipped character-level recipe (configs/shakespeare-char.yaml) trains as shipped:
a char tokenizer and tail-split shards made with gobig's own commands, the config
run unchanged but for the data path and a short run."""

from __future__ import annotations

import math

import pytest

from data_pipeline.cli import main as data_main
from tests.conftest import SHAKESPEARE
from tests.train.conftest import run_train

pytestmark = pytest.mark.timeout(300)


def test_shipped_char_recipe_trains(tmp_path):
    text = tmp_path / "shakespeare.txt"
    text.write_text(SHAKESPEARE.read_text()[:200_000])
    tok, data = tmp_path / "tok", tmp_path / "data"
    assert data_main(["tokenizer", "--input", str(text), "--model-type", "char",
                      "--vocab-size", "400", "--out", str(tok)]) == 0  # fmt: skip
    assert data_main(["text", "--input", str(text), "--tokenizer", str(tok), "--out", str(data),
                      "--val-fraction", "0.1", "--val-split", "tail", "--quiet"]) == 0  # fmt: skip
    args = ["configs/shakespeare-char.yaml", f"data.source={data}", "train.max_steps=60",
            "train.log_every=20", "train.eval_every=60", "train.checkpoint_every=60",
            "optim.warmup_steps=10", "logging.wandb.mode=disabled"]  # fmt: skip
    run = run_train(args, tmp_path / "run").check()
    losses = run.losses()
    # 324 ids, ~60 of them characters in use: a fresh model starts near ln(324)
    assert losses[20] < math.log(324) and losses[60] < losses[20] - 0.3
    (val,) = run.records("eval")
    assert val["step"] == 60 and val["val_loss"] < losses[20]
