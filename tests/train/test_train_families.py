"""GPT, BERT and ViT each train end to end from real shards; metrics.jsonl holds
the fields the console line and W&B are made from."""

from __future__ import annotations

import json
import math

import pytest

from tests.train.conftest import run_train, vocab_size
from train.checkpoint import newest_complete, read_meta

pytestmark = pytest.mark.timeout(600)

SMALL = ["model.n_layer=2", "model.n_head=2", "model.d_model=64", "model.dropout=0.0"]
SHORT = [
    "train.max_steps=4", "train.micro_batch_size=4", "train.log_every=1", "train.eval_every=2",
    "train.eval_batches=2", "train.checkpoint_every=4", "optim.warmup_steps=1",
    "logging.wandb.mode=disabled", "zero.stage=2", "cluster.num_workers=1",
]  # fmt: skip
TRAIN_FIELDS = {"step", "loss", "lr", "grad_norm", "mfu", "step_time_s", "data_wait_frac",
                "peak_mem_gb"}  # fmt: skip


def _check_train_lines(run, rate_key: str, first_loss: float, tolerance: float) -> None:
    lines = run.records()
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    for r in lines:
        assert TRAIN_FIELDS | {rate_key} <= set(r), set(r)
        assert all(math.isfinite(r[k]) for k in TRAIN_FIELDS | {rate_key})
        assert r[rate_key] > 0 and r["grad_norm"] > 0 and r["step_time_s"] > 0
        assert 0 < r["mfu"] < 1 and 0 <= r["data_wait_frac"] <= 1 and r["peak_mem_gb"] > 0
    # A fresh model predicts uniformly: the first loss is about ln(#classes).
    assert lines[0]["loss"] == pytest.approx(first_loss, abs=tolerance)
    assert "step      1/4 | loss" in run.stdout and "eval @ step 2:" in run.stdout


def _eval_lines(run) -> list[dict]:
    evals = run.records("eval")
    assert [r["step"] for r in evals] == [2, 4]
    return evals


def test_gpt_two_processes(runs):
    run = runs.straight(2, 2)
    lines = run.records()
    assert {"tokens_per_s", "samples_per_s"} & set(lines[0]) == {"tokens_per_s"}
    assert set(lines[0]) >= TRAIN_FIELDS
    assert lines[0]["loss"] == pytest.approx(math.log(vocab_size(runs.text)), abs=0.5)
    for r in run.records("eval"):
        assert set(r) == {"kind", "step", "val_loss", "val_perplexity"}
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]))
    assert lines[-1]["loss"] < lines[0]["loss"]


def test_bert_with_sentence_order_head(text_dataset, tmp_path):
    vocab = vocab_size(text_dataset)
    args = [
        "model.name=bert-tiny", *SMALL, "model.max_seq_len=32", f"model.vocab_size={vocab}",
        "model.pair_head=sop", f"data.source={text_dataset}", *SHORT,
    ]  # fmt: skip
    run = run_train(args, tmp_path / "bert").check()
    # masked-LM loss plus the sentence-order loss (ln 2) at the start.
    _check_train_lines(run, "tokens_per_s", math.log(vocab) + math.log(2), tolerance=0.6)
    for r in _eval_lines(run):
        assert set(r) == {"kind", "step", "val_loss", "val_masked_accuracy"}
        assert 0 <= r["val_masked_accuracy"] <= 1
        # val_loss is the masked-LM part alone (no sentence-order term).
        assert r["val_loss"] == pytest.approx(math.log(vocab), abs=0.5)


def test_vit_on_image_shards(image_dataset, tmp_path):
    args = [
        "model.name=vit-tiny", *SMALL, "model.image_size=32", "model.patch_size=8",
        "model.num_classes=10", f"data.source={image_dataset}", *SHORT,
    ]  # fmt: skip
    run = run_train(args, tmp_path / "vit").check()
    _check_train_lines(run, "samples_per_s", math.log(10), tolerance=0.5)
    assert "tokens_per_s" not in run.records()[0]
    assert " img/s" in run.stdout
    # A ViT run counts images, and says so: no record, result or meta speaks of tokens.
    for r in run.records():
        assert r["images_seen"] == r["step"] * 4 and not [k for k in r if "token" in k]
    result = json.loads((run.run_dir / "result.json").read_text())
    assert result["unit"] == "images"
    meta = read_meta(newest_complete(run.run_dir))
    assert meta["images"] == 4 * 4 and "tokens" not in meta
    for r in _eval_lines(run):
        assert set(r) == {"kind", "step", "val_loss", "val_accuracy"}
        assert 0 <= r["val_accuracy"] <= 1
