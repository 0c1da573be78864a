"""`gobig train` of a translation model on an embedded local Ray: two workers at ZeRO-2
on a Multi30k subset, token-count batches, BLEU and translations at the evaluation."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import gobig, train_losses, two_workers
from tests.train.test_train_seq2seq import multi30k_subset
from train.metrics_log import read_metrics

pytestmark = pytest.mark.timeout(600)

SEQ2SEQ = [
    "model.name=transformer-tiny", "model.n_layer=2", "model.n_head=2", "model.d_model=64",
    "model.max_seq_len=40", "model.vocab_size=600", "data.max_tokens=400",
    "train.max_steps=4", "train.log_every=1", "train.eval_every=4", "train.eval_batches=2",
    "train.checkpoint_every=4", "train.eval_bleu_sentences=8", "logging.sample_translations=8",
    "decode.max_len_b=6", "decode.batch_size=2", "optim.warmup_steps=2",
    "optim.schedule=inverse_sqrt", "logging.wandb.mode=offline",
]  # fmt: skip


def test_translation_on_two_workers(tmp_path):
    dataset = multi30k_subset(tmp_path)
    proc = gobig("train", *SEQ2SEQ, f"data.source={dataset}", *two_workers(tmp_path, "s2s"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "s2s"
    assert sorted(train_losses(run_dir)) == [1, 2, 3, 4]
    records = read_metrics(run_dir)
    assert all(r["tokens_per_s"] > 0 for r in records if r["kind"] == "train")
    (evaluation,) = [r for r in records if r["kind"] == "eval"]
    assert 0.0 <= evaluation["val_bleu"] <= 100.0 and evaluation["val_loss"] > 0
    (samples,) = [r for r in records if r["kind"] == "samples"]
    assert samples["step"] == 4 and len(samples["samples"]) == 8
    assert all(s["prompt"] and s["reference"] for s in samples["samples"])
    assert "val_bleu" in proc.stdout and "sample @ step 4: " in proc.stdout

    # Each rank decoded every other batch of 2 sentences and rank 0 gathered them: what it
    # logged is the final checkpoint's beam search over the whole set, in one process.
    from data_pipeline import Tokenizer
    from train.callbacks.translations import validation_set
    from train.config.load import build_config
    from train.eval_command import run_val_batches
    from train.export import consolidated_model, resolve_checkpoint, run_tokenizer
    from train.translate import corpus_bleu, translate_ids

    ckpt = resolve_checkpoint(run_dir)
    model, meta = consolidated_model(ckpt)
    tok, config = Tokenizer(run_tokenizer(meta, ckpt)), build_config(meta["config"], "run")
    pairs = validation_set(run_val_batches(config, 0, 1).loader, 8)
    hypotheses = [tok.decode(row) for row in translate_ids(model, [s for s, _ in pairs],
                                                           config.decode, tok)]  # fmt: skip
    assert [s["text"] for s in samples["samples"]] == hypotheses
    want = corpus_bleu(hypotheses, [tok.decode(ref) for _, ref in pairs])
    assert evaluation["val_bleu"] == pytest.approx(want)
