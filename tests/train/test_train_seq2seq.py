"""The seq2seq family in training: exact and elastic resume, BLEU and translations at
each evaluation, `gobig translate` and `gobig eval` on a run; the family's pieces on
hand-made batches.

Runs train a tiny encoder-decoder on a Multi30k subset (2,000 training pairs, 48
validation pairs) written by `gobig data pairs`' writer, in batches of at most
`MAX_TOKENS` padded tokens.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.train.conftest import ROOT, Run, base_env, run_train

pytestmark = pytest.mark.timeout(600)

MULTI30K = Path(__file__).resolve().parents[3] / "shared" / "data" / "multi30k"
STEPS, HALF = 6, 3
MAX_TOKENS = 400
SENTENCES = 10  # translated at each evaluation
SEQ2SEQ = [
    "model.name=transformer-tiny", "model.n_layer=2", "model.n_head=2", "model.d_model=64",
    "model.max_seq_len=40", "train.micro_batch_size=8", f"train.max_steps={STEPS}",
    "train.log_every=1", f"train.eval_every={HALF}", "train.eval_batches=2",
    f"train.checkpoint_every={HALF}", f"train.eval_bleu_sentences={SENTENCES}",
    "logging.sample_translations=2", "decode.max_len_b=6", f"data.max_tokens={MAX_TOKENS}",
    "optim.lr=2e-3", "optim.warmup_steps=2", "optim.schedule=inverse_sqrt",
    "optim.betas=[0.9,0.98]", "optim.eps=1e-9", "logging.wandb.mode=disabled",
]  # fmt: skip
CPU = torch.device("cpu")


def multi30k_subset(root: Path) -> Path:
    """Multi30k en-de heads written under `root`: a 600-piece joint tokenizer and pair
    shards (2,000 training pairs, 48 validation pairs); the dataset directory."""
    from data_pipeline import train_tokenizer
    from data_pipeline.pair_shards import write_pair_shards

    heads = {}
    for split, count in (("train", 2000), ("val", 48)):
        for lang in ("en", "de"):
            lines = (MULTI30K / f"{split}.{lang}").read_text().splitlines()[:count]
            heads[split, lang] = root / f"{split}.{lang}"
            heads[split, lang].write_text("\n".join(lines) + "\n")
    tok = train_tokenizer([heads["train", "en"], heads["train", "de"]], root / "tok",
                          vocab_size=600, model_type="bpe", num_threads=2)  # fmt: skip
    out = root / "pairs"
    write_pair_shards(
        heads["train", "en"], heads["train", "de"], tok.path, out, val_source=heads["val", "en"],
        val_target=heads["val", "de"], shard_size="32KB", workers=1, progress=False,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def pairs_dataset(tmp_path_factory) -> Path:
    return multi30k_subset(tmp_path_factory.mktemp("multi30k"))


def _args(dataset: Path, nproc: int, stage: int, *extra: str) -> list[str]:
    return [*SEQ2SEQ, f"data.source={dataset}", "model.vocab_size=600",
            f"cluster.num_workers={nproc}", f"zero.stage={stage}", *extra]  # fmt: skip


class Seq2SeqRuns:
    """Straight runs made once per module, shared by the tests that read them."""

    def __init__(self, root: Path, dataset: Path):
        self.root, self.dataset = root, dataset
        self._done: dict[str, Run] = {}

    def straight(self, nproc: int, stage: int, dropout: float) -> Run:
        name = f"straight-p{nproc}-z{stage}-d{dropout}"
        if name not in self._done:
            args = _args(self.dataset, nproc, stage, f"model.dropout={dropout}")
            self._done[name] = run_train(args, self.root / name, nproc=nproc).check()
        return self._done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pairs_dataset) -> Seq2SeqRuns:
    return Seq2SeqRuns(tmp_path_factory.mktemp("seq2seq-runs"), pairs_dataset)


def _model_and_tokenizer(ckpt: Path):
    from data_pipeline import Tokenizer
    from train.export import consolidated_model, run_tokenizer

    model, meta = consolidated_model(ckpt)
    return model.eval(), Tokenizer(run_tokenizer(meta, ckpt)), meta


# -- runs -------------------------------------------------------------------------------


def test_a_resumed_run_reproduces_the_straight_one(runs, tmp_path):
    from train.checkpoint import read_meta, step_dir

    straight = runs.straight(1, 0, 0.1)
    run_dir = tmp_path / "resumed"
    run_train(_args(runs.dataset, 1, 0, "model.dropout=0.1", f"train.max_steps={HALF}"),
              run_dir).check()  # fmt: skip
    resumed = run_train([f"train.max_steps={STEPS}"], run_dir, resume=True).check()
    assert f"resumed from {step_dir(run_dir, HALF)} at step {HALF}" in resumed.stdout
    want, got = straight.losses(), resumed.losses()
    assert sorted(got) == list(range(1, STEPS + 1))
    assert want[STEPS] < want[1]  # it learns
    # Bitwise: weights, optimizer, schedule, data position and RNG (dropout) came back.
    assert got == want
    assert resumed.records("eval") == straight.records("eval")
    assert resumed.records("samples") == straight.records("samples")
    end = read_meta(step_dir(run_dir, STEPS))
    assert end["tokens"] == read_meta(step_dir(straight.run_dir, STEPS))["tokens"]
    assert straight.records()[-1]["tokens_seen"] == end["tokens"] > 0


def test_bleu_and_translations_at_each_evaluation(runs):
    from train.callbacks.translations import validation_set
    from train.checkpoint import step_dir
    from train.config.load import build_config
    from train.eval_command import run_val_batches
    from train.translate import corpus_bleu, translate_ids

    run = runs.straight(1, 0, 0.1)
    evals = run.records("eval")
    assert [r["step"] for r in evals] == [HALF, STEPS]
    for record in evals:
        assert 0.0 <= record["val_bleu"] <= 100.0
        assert record["val_perplexity"] == pytest.approx(2.718281828 ** record["val_loss"])
        assert 0.0 <= record["val_token_accuracy"] <= 1.0
    samples = run.records("samples")
    assert [r["step"] for r in samples] == [HALF, STEPS]
    assert f"sample @ step {HALF}: " in run.stdout and "val_bleu" in run.stdout

    # The logged figures are the checkpoint's beam search over the fixed set of pairs.
    model, tok, meta = _model_and_tokenizer(step_dir(run.run_dir, STEPS))
    config = build_config(meta["config"], "run")
    pairs = validation_set(run_val_batches(config, 0, 1).loader, SENTENCES)
    assert len(pairs) == SENTENCES
    ids = translate_ids(model, [s for s, _ in pairs], config.decode, tok)
    hypotheses = [tok.decode(row) for row in ids]
    references = [tok.decode(ref) for _, ref in pairs]
    assert evals[-1]["val_bleu"] == pytest.approx(corpus_bleu(hypotheses, references))
    shown = samples[-1]["samples"]
    assert [s["text"] for s in shown] == hypotheses[:2]
    assert [s["reference"] for s in shown] == references[:2]
    assert all(s["prompt"] and s["reference"] for s in shown)


def test_elastic_resume_from_two_ranks_at_zero3_to_one(runs, tmp_path):
    """2 ranks, ZeRO-3 (every rank decodes alike at evaluations) -> 1 rank at ZeRO-2 with
    2 micro batches a step: the same global batches, in the same order."""
    from train.checkpoint import rank_file, read_meta, step_dir

    straight = runs.straight(2, 3, 0.0)  # no dropout: its masks depend on the rank
    run_dir = shutil.copytree(straight.run_dir, tmp_path / "elastic", symlinks=True)
    shutil.rmtree(step_dir(run_dir, STEPS))
    # 2 micro batches a step, and 4 validation batches (2 ranks evaluated 2 each).
    one_rank = ["zero.stage=2", "cluster.num_workers=1", "train.grad_accum_steps=2",
                "train.eval_batches=4"]  # fmt: skip
    resumed = run_train(one_rank, run_dir, resume=True).check()
    assert f"resumed elastically from {step_dir(run_dir, HALF)} at step {HALF}" in resumed.stdout
    want, got = straight.losses(), resumed.losses()
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(HALF + 1, STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-4), step
    want_eval, got_eval = straight.records("eval")[-1], resumed.records("eval")[-1]
    assert got_eval["val_loss"] == pytest.approx(want_eval["val_loss"], rel=1e-4)
    # The same fixed set of sentences, whatever the world size.
    assert [s["prompt"] for s in resumed.records("samples")[-1]["samples"]] == [
        s["prompt"] for s in straight.records("samples")[-1]["samples"]
    ]
    end, ref = step_dir(run_dir, STEPS), step_dir(straight.run_dir, STEPS)
    assert read_meta(end)["world_size"] == 1
    data = [torch.load(rank_file(c, 0), weights_only=True)["data"] for c in (end, ref)]
    assert data[0] == data[1]  # the global position: no batch lost or repeated


def test_translate_writes_the_models_beam_search(runs, tmp_path):
    from train.checkpoint import step_dir
    from train.translate import encode_source, strip_target

    run = runs.straight(1, 0, 0.1)
    lines = ["A man is riding a bike.", "", "Two dogs play in the snow.", "A girl smiles."]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "translate", str(run.run_dir), "--input",
         str(tmp_path / "in.txt"), "--max-len-b", "6"],
        cwd=ROOT, env=base_env(tmp_path), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    assert "translate: 100%" in proc.stderr
    model, tok, _ = _model_and_tokenizer(step_dir(run.run_dir, STEPS))
    for line, got in zip(lines, out, strict=False):
        if not line:
            assert got == ""
            continue
        ids = torch.tensor([encode_source(tok, line, model.config.max_seq_len)])
        tokens = model.beam_search(ids, torch.ones_like(ids), beam_size=4, length_penalty=0.6,
                                   max_len_a=1.0, max_len_b=6, bos_id=tok.bos_id,
                                   eos_id=tok.eos_id, pad_id=tok.pad_id)  # fmt: skip
        assert got == tok.decode(strip_target(tokens[0].tolist(), tok))


def test_eval_reports_bleu_over_a_parallel_dataset(runs, tmp_path):
    run = runs.straight(1, 0, 0.1)
    result_json = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "eval", str(run.run_dir), "--data",
         str(runs.dataset), "--max-batches", "2", "--json", str(result_json)],
        cwd=ROOT, env=base_env(tmp_path), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(result_json.read_text())
    assert {"loss", "perplexity", "token_accuracy", "bleu"} <= set(result)
    (line,) = proc.stdout.splitlines()
    assert f"bleu {result['bleu']:.4f}" in line and "translate: 100%" in proc.stderr


def test_translate_refuses_another_family_in_one_line(runs, tmp_path, capsys):
    from safetensors.torch import save_model

    from model import ModelConfig, build_model
    from train.export import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE
    from train.translate import main

    config = ModelConfig(family="gpt", n_layer=1, n_head=2, d_model=16, max_seq_len=16,
                         vocab_size=600)  # fmt: skip
    out = tmp_path / "gpt"
    out.mkdir()
    save_model(build_model(config), str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    (out / TOKENIZER_FILE).write_bytes((runs.dataset / "tokenizer.model").read_bytes())
    (tmp_path / "in.txt").write_text("A man.\n")
    assert main([str(out), "--input", str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gobig: error: ") and "\n" not in err
    assert "a gpt model (causal-lm) does not translate" in err
    assert main([str(out), "--input", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read the input" in capsys.readouterr().err


# -- the family's pieces, on hand-made batches ------------------------------------------


def _batch() -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "decoder_input_ids": torch.tensor([[2, 10, 11], [2, 12, 0]]),
        "labels": torch.tensor([[10, 11, 3], [12, 3, -100]]),
    }


def test_the_family_counts_targets_and_the_unsmoothed_loss():
    from model import ModelConfig, build_model
    from train.families import family_of

    torch.manual_seed(0)
    config = ModelConfig(family="seq2seq", n_layer=1, n_head=2, d_model=32, max_seq_len=16,
                         vocab_size=50, label_smoothing=0.1)  # fmt: skip
    model, family = build_model(config).eval(), family_of(config)
    assert (family.name, family.task, family.generates_text, family.translates) == (
        "seq2seq", "translation", False, True,
    )  # fmt: skip
    batch = _batch()
    assert family.count_units(batch) == 5  # labels that are targets, EOS included
    out = model.compute_loss(batch)
    loss_sum, n, correct = family.eval_counts(out, batch)
    logits = model(batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"])
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                            reduction="sum")  # fmt: skip
    assert n == 5 and loss_sum == pytest.approx(nll.item(), rel=1e-5)
    assert loss_sum / n != pytest.approx(out.loss.item(), rel=1e-4)  # not the smoothed one
    metrics = family.eval_metrics(loss_sum / n, correct / n)
    assert set(metrics) == {"val_loss", "val_perplexity", "val_token_accuracy"}


def test_translate_ids_is_beam_search_in_any_batches_and_parts():
    from model import ModelConfig, build_model
    from train.callbacks.translations import _gather, spread
    from train.config.schema import DecodeConfig
    from train.translate import sentence_pairs, strip_target, translate_ids

    torch.manual_seed(1)
    config = ModelConfig(family="seq2seq", n_layer=1, n_head=2, d_model=32, max_seq_len=16,
                         vocab_size=50)  # fmt: skip
    model = build_model(config).eval()
    tok = types.SimpleNamespace(pad_id=0, bos_id=2, eos_id=3)
    batch = _batch()
    pairs = sentence_pairs([batch], tok)
    assert pairs == [([5, 6, 7, 3], [10, 11]), ([8, 9, 3], [12])]
    sources = [s for s, _ in pairs]
    want = model.beam_search(batch["input_ids"], batch["attention_mask"], bos_id=2, eos_id=3,
                             pad_id=0, max_len_b=5)  # fmt: skip
    want = [strip_target(row, tok) for row in want.tolist()]
    one = DecodeConfig(max_len_b=5, batch_size=1)
    assert translate_ids(model, sources, DecodeConfig(max_len_b=5), tok) == want
    halves = [translate_ids(model, sources, one, tok, part=(i, 2)) for i in range(2)]
    assert halves[0][1] is None and halves[1][0] is None  # longest first: batch 0 is row 0
    assert [a or b for a, b in zip(*halves, strict=True)] == want
    assert _gather([want[0], None], CPU) == [want[0], []]  # one process: nothing to gather
    assert spread(list(range(10)), 3) == [0, 3, 6] and spread([1, 2], 5) == [1, 2]


def test_inverse_sqrt_schedule_peaks_after_the_warmup():
    from train.config.schema import OptimConfig
    from train.optim import lr_at

    optim = OptimConfig(lr=1e-3, warmup_steps=4, schedule="inverse_sqrt")
    lrs = [lr_at(step, optim, 100) for step in range(16)]
    assert lrs[3] == pytest.approx(1e-3) and max(lrs) == lrs[3]
    assert lrs[15] == pytest.approx(1e-3 * (4 / 16) ** 0.5)  # the paper's n ** -0.5


def test_token_budgets_are_for_translation_only():
    from train.config import load_config
    from train.config.load import ConfigError
    from train.families import family_of

    config = load_config(None, ["model.name=gpt-tiny", "data.max_tokens=512"],
                         check_paths=False)  # fmt: skip
    with pytest.raises(ConfigError, match="data.max_tokens"):
        family_of(config.model).loader_options(config)
    config = load_config(None, ["model.name=transformer-tiny", "data.max_tokens=512"],
                         check_paths=False)  # fmt: skip
    assert family_of(config.model).loader_options(config)["max_tokens"] == 512


def test_translations_reach_wandb_as_a_table_with_their_references():
    from train.callbacks import WandbCallback

    logged = []
    run = types.SimpleNamespace(log=lambda payload, step: logged.append((step, payload)))
    sample = {"prompt": "A man.", "text": "Ein Mann.", "reference": "Ein Mann."}
    WandbCallback(run).on_log(None, {"kind": "samples", "step": 3, "samples": [sample]})
    ((step, payload),) = logged
    table = payload["samples"]
    assert step == 3 and table.columns == ["step", "prompt", "text", "reference"]
    assert table.data == [[3, "A man.", "Ein Mann.", "Ein Mann."]]
