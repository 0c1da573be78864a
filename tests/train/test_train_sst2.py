"""SST-2 fine-tuning end to end: shards written by the real `gobig data` from
../shared/data/sst2 (its first lines), a BERT classifier trained a few steps by the real
trainer, its evaluations' accuracy over the whole validation split, `gobig eval`
against a count by hand, and data that does not fit the model as one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds

from data_pipeline import load_manifest, write_text_shards
from data_pipeline.errors import GobigError
from tests.conftest import SHARED_DATA
from tests.train.conftest import ROOT, base_env, run_train
from train.config.load import load_config
from train.data import build_loaders
from train.distributed import DistInfo
from train.export import consolidated_model, resolve_checkpoint

pytestmark = pytest.mark.timeout(180)

TRAIN_LINES, DEV_LINES, VOCAB = 640, 120, 512
ARGS = [
    "model.name=bert-tiny",
    "model.num_labels=2",
    f"model.vocab_size={VOCAB}",
    "model.max_seq_len=64",
    "model.dropout=0.0",
    "optim.lr=1e-3",
    "optim.warmup_steps=2",
    "train.max_steps=12",
    "train.micro_batch_size=16",
    "train.log_every=4",
    "train.eval_every=6",
    "train.eval_batches=8",
    "train.checkpoint_every=12",
    "zero.stage=0",
    "logging.wandb.mode=disabled",
]  # fmt: skip  (8 x 16 >= 120: each evaluation covers the whole validation split)


def _gobig(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sst2(tmp_path_factory) -> Path:
    """The first lines of SST-2's train.tsv and dev.tsv, prepared with the commands of
    configs/sst2-bert-tiny.yaml's header."""
    root = tmp_path_factory.mktemp("sst2")
    for name, n in (("train.tsv", TRAIN_LINES), ("dev.tsv", DEV_LINES)):
        lines = (SHARED_DATA / "sst2" / name).read_text(encoding="utf-8").split("\n")[:n]
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    for args in (
        ["tokenizer", "--input", str(root / "train.tsv"), "--vocab-size", str(VOCAB),
         "--out", str(root / "tok")],
        ["text", "--labels", "--input", str(root / "train.tsv"), "--val", str(root / "dev.tsv"),
         "--tokenizer", str(root / "tok"), "--out", str(root / "ds"), "--quiet"],
    ):  # fmt: skip
        proc = _gobig("data", *args)
        assert proc.returncode == 0, proc.stderr
    return root / "ds"


@pytest.fixture(scope="module")
def run(sst2, tmp_path_factory):
    return run_train([*ARGS, f"data.source={sst2}"], tmp_path_factory.mktemp("r") / "run").check()


def test_fine_tuning_logs_classification_accuracy(run):
    losses = [r["loss"] for r in run.records()]
    assert [r["step"] for r in run.records()] == [4, 8, 12]
    assert all(math.isfinite(x) for x in losses) and losses[0] == pytest.approx(
        math.log(2), abs=0.3
    )
    evals = run.records("eval")
    assert [r["step"] for r in evals] == [6, 12]
    for r in evals:
        assert set(r) == {"kind", "step", "val_loss", "val_accuracy"}
        assert 0.0 <= r["val_accuracy"] <= 1.0 and math.isfinite(r["val_loss"])
        # a count over all 120 validation texts, each once
        correct = r["val_accuracy"] * DEV_LINES
        assert correct == pytest.approx(round(correct), abs=1e-6)
    assert "eval @ step 12: val_loss" in run.stdout and "val_accuracy" in run.stdout


def _by_hand(run_dir: Path, dataset: Path) -> tuple[float, float, int]:
    """(accuracy, mean loss, texts) of the run's last checkpoint over the validation
    split, one text at a time, from the shards' own records."""
    model, _ = consolidated_model(resolve_checkpoint(run_dir))
    model.eval()
    man = load_manifest(str(dataset / "manifest.json"))
    tok_ids = json.loads((dataset / "tokenizer.json").read_text())["special_ids"]
    urls = [str(dataset / s.name) for s in man.split_shards("val")]
    correct, loss, n = 0, 0.0, 0
    with torch.no_grad():
        for sample in wds.WebDataset(urls, shardshuffle=False).decode():
            body = sample["tokens.npy"].tolist()[: model.config.max_seq_len - 2]
            ids = torch.tensor([[tok_ids["cls"], *body, tok_ids["sep"]]])
            label = torch.tensor([int(sample["cls"])])
            logits = model.classify(ids)
            correct += int(logits.argmax(-1).item() == label.item())
            loss += torch.nn.functional.cross_entropy(logits, label).item()
            n += 1
    return correct / n, loss / n, n


def test_gobig_eval_matches_a_count_by_hand(run, sst2, tmp_path):
    out = tmp_path / "eval.json"
    proc = _gobig("eval", str(run.run_dir), "--data", str(sst2), "--batch-size", "16",
                  "--json", str(out), env=base_env(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    accuracy, loss, n = _by_hand(run.run_dir, sst2)
    assert n == DEV_LINES and result["batches"] == math.ceil(DEV_LINES / 16)
    # Per text or in padded batches, the same predictions: padding is masked out.
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert result["loss"] == pytest.approx(loss, rel=1e-4)
    # and the run's own last evaluation (the whole split, the same weights) agrees
    assert run.records("eval")[-1]["val_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"loss {result['loss']:.4f} | accuracy {accuracy:.4f}")


def _loaders(*overrides: str) -> None:
    config = load_config(None, [*ARGS, *overrides])
    build_loaders(config, DistInfo(0, 1, 0, torch.device("cpu")))


def test_data_that_does_not_fit_the_model_is_one_line(sst2, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train", *ARGS, f"data.source={sst2}", "model.num_labels=3",
         f"run.dir={tmp_path}", "run.name=mismatch"],
        cwd=ROOT, env=base_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"gobig: error: model.num_labels (3) differs from the 2 labels (0, 1) of {sst2}"
    )
    with pytest.raises(GobigError, match=r"labelled text \(2 labels: 0, 1\).*num_labels is 0"):
        _loaders(f"data.source={sst2}", "model.num_labels=0")
    plain = tmp_path / "plain"  # the same texts without labels: masked-LM shards
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(x.rsplit("\t", 1)[0] + "\n" for x in
                             (sst2.parent / "dev.tsv").read_text().splitlines()))  # fmt: skip
    write_text_shards([str(texts)], sst2 / "tokenizer.model", plain, doc_split="line",
                      val_fraction=0.2, progress=False)  # fmt: skip
    with pytest.raises(GobigError, match="without labels.*model.num_labels > 0.*--labels"):
        _loaders(f"data.source={plain}")
