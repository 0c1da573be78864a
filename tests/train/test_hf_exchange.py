"""Hugging Face, both ways: `gobig export --format hf` loads in `transformers`
with the same logits, the exported tokenizer encodes as gobig's, transformers
models (made and saved locally, nothing downloaded) load into gobig with the
same logits, and `model.init_from` takes a transformers directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from data_pipeline import Tokenizer, train_tokenizer
from model import ModelConfig, build_model
from model.hf import HfConversionError
from tests.train.conftest import ROOT, base_env, gpt_args, run_train
from train.export import consolidated_model, resolve_checkpoint
from train.hf_format import load_hf_model, write_hf

pytestmark = pytest.mark.timeout(300)

TEXT = "First Citizen:\nBefore we  proceed, hear me\tspeak: 1604 [MASK] naïve 東京 end  "
SMALL = {"n_layer": 2, "n_head": 2, "d_model": 32}
EXPORTS = {
    "gpt": ({"family": "gpt", "activation": "gelu_tanh", "bias": False, **SMALL},
            transformers.AutoModelForCausalLM),
    "bert-mlm": ({"family": "bert", "norm": "post", **SMALL}, transformers.AutoModelForMaskedLM),
    "bert-nsp": ({"family": "bert", "norm": "post", "pair_head": "nsp", **SMALL},
                 transformers.AutoModelForPreTraining),
    "bert-classifier": ({"family": "bert", "norm": "post", "num_labels": 3, **SMALL},
                        transformers.AutoModelForSequenceClassification),
    "vit": ({"family": "vit", "image_size": 16, "patch_size": 4, "num_classes": 5, **SMALL},
            transformers.AutoModelForImageClassification),
}  # fmt: skip


def _gobig(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], cwd=ROOT, env=base_env(tmp_path),
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def _random(config: ModelConfig) -> torch.nn.Module:
    # LayerNorms at 1/0 and zero biases would hide a swapped or dropped tensor.
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def _inputs(config: ModelConfig) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    if config.family == "vit":
        size = (2, config.in_channels, config.image_size, config.image_size)
        return {"pixel_values": torch.randn(size, generator=generator)}
    ids = torch.randint(0, config.vocab_size, (2, 24), generator=generator)
    return {"input_ids": ids}


def _gobig_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    config = model.config
    if config.family == "vit":
        return model(inputs["pixel_values"])
    if config.num_labels > 0:
        return model.classify(inputs["input_ids"])
    return model(inputs["input_ids"])


def _hf_logits(hf: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = hf(**inputs)
    return out.prediction_logits if hasattr(out, "prediction_logits") else out.logits


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    # within 1e-5 relative to the logits' scale, in fp32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    """A sentencepiece model of each type gobig trains, on tiny Shakespeare."""
    root = tmp_path_factory.mktemp("tokenizers")
    text = root / "text.txt"
    lines = (ROOT.parent / "shared/data/tinyshakespeare.txt").read_text().splitlines()
    text.write_text("\n".join(lines[:4000]) + "\n")
    return {
        kind: train_tokenizer([text], root / kind, vocab_size=400, model_type=kind).path
        for kind in ("bpe", "unigram", "char")
    }


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_an_export_loads_in_transformers_with_the_same_logits(name, tokenizers, tmp_path):
    fields, auto = EXPORTS[name]
    config = ModelConfig(**fields, vocab_size=Tokenizer(tokenizers["bpe"]).vocab_size)
    model = _random(config)
    text_model = config.family != "vit"
    write_hf(model, tmp_path, tokenizers["bpe"] if text_model else None, {"step": "1"})
    hf, info = auto.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensor
    inputs = _inputs(config)
    with torch.no_grad():
        _assert_close(_hf_logits(hf.eval(), inputs), _gobig_logits(model, inputs))
    if config.family == "bert" and config.pair_head == "nsp":
        with torch.no_grad():
            pair = hf(**inputs).seq_relationship_logits
        _assert_close(pair, model.pair_logits(inputs["input_ids"]))
    if not text_model:
        processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
        assert processor.size == {"height": 16, "width": 16}


@pytest.mark.parametrize("kind", ["bpe", "unigram", "char"])
def test_the_exported_tokenizer_encodes_as_gobig(kind, tokenizers, tmp_path):
    gobig_tok = Tokenizer(tokenizers[kind])
    for family in ("gpt", "bert"):
        norm = "post" if family == "bert" else "pre"
        config = ModelConfig(family=family, norm=norm, vocab_size=gobig_tok.vocab_size, **SMALL)
        out = tmp_path / family
        write_hf(build_model(config), out, tokenizers[kind], {})
        hf_tok = transformers.AutoTokenizer.from_pretrained(out)
        ids = gobig_tok.encode(TEXT)
        assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == ids
        assert hf_tok.decode(ids) == gobig_tok.decode(ids)
        if family == "bert":  # BERT's inputs: [CLS] text [SEP]
            assert hf_tok(TEXT)["input_ids"] == [gobig_tok.cls_id, *ids, gobig_tok.sep_id]
            assert hf_tok.mask_token_id == gobig_tok.mask_id
        else:
            assert hf_tok(TEXT)["input_ids"] == ids


IMPORTS = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=300, n_positions=40)),
    "bert-mlm": lambda: transformers.BertForMaskedLM(transformers.BertConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64,
        vocab_size=300, max_position_embeddings=40)),
    "bert-classifier": lambda: transformers.BertForSequenceClassification(transformers.BertConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=128,
        vocab_size=300, max_position_embeddings=40, num_labels=4, hidden_act="gelu_new")),
    "vit": lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64,
        image_size=16, patch_size=4, num_labels=7, qkv_bias=False)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(IMPORTS))
def test_a_transformers_model_loads_into_gobig_with_the_same_logits(name, tmp_path):
    torch.manual_seed(0)
    hf = IMPORTS[name]().eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    hf.save_pretrained(tmp_path)
    model = load_hf_model(tmp_path)
    inputs = _inputs(model.config)
    with torch.no_grad():
        _assert_close(_gobig_logits(model, inputs), _hf_logits(hf, inputs))


def test_what_has_no_faithful_equivalent_is_refused(tmp_path):
    cases = [
        ({"family": "gpt", "position": "rotary"}, "GPT-2 has learned positions"),
        ({"family": "bert"}, "post-LayerNorm; train with model.norm=post"),
        ({"family": "bert", "norm": "post", "num_labels": 2, "pooling": "mean"}, "pools the [CLS]"),
        ({"family": "vit", "pooling": "mean", "image_size": 16}, "classifies from the CLS token"),
        ({"family": "gpt", "attention": "performer"}, "exact softmax; this model has model.att"),
        ({"family": "bert", "norm": "post", "attention": "sparse"}, "model.attention=sparse"),
    ]  # fmt: skip
    for fields, reason in cases:
        with pytest.raises(HfConversionError, match=reason.replace("[", r"\[")):
            write_hf(build_model(ModelConfig(**fields, **SMALL)), tmp_path / "x", None, {})
        assert not (tmp_path / "x").exists()
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama/config.json").write_text(json.dumps({"model_type": "llama"}))
    bad = _gobig("generate", str(tmp_path / "llama"), "--prompt", "Hi", tmp_path=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"gobig: error: {tmp_path / 'llama'}: model_type 'llama' is not supported "
        "(gobig reads gpt2, bert, vit)"
    ]


def test_a_zero3_run_exports_to_transformers_and_comes_back(runs, tmp_path):
    run = runs.straight(2, 3)
    out = tmp_path / "hf"
    done = _gobig("export", str(run.run_dir), "--out", str(out), "--format", "hf",
                  tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    model = consolidated_model(resolve_checkpoint(run.run_dir))[0].eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([Tokenizer(runs.text / "tokenizer.model").encode(TEXT)[:30]])
    assert tok(TEXT, return_tensors="pt")["input_ids"][:, :30].tolist() == ids.tolist()
    with torch.no_grad():
        _assert_close(hf(input_ids=ids).logits, model(ids))
        # and back: the export is a model directory gobig reads too
        _assert_close(load_hf_model(out)(ids), model(ids))

    # A GPT with rotary positions is refused in one line, and nothing is written.
    args = gpt_args(runs.text, 1, 0, "model.position=rotary", "train.max_steps=1",
                    "train.checkpoint_every=1")  # fmt: skip
    rotary = run_train(args, tmp_path / "rotary").check()
    refused = _gobig("export", str(rotary.run_dir), "--out", str(tmp_path / "no"), "--format",
                     "hf", tmp_path=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "cannot export as GPT2LMHeadModel: GPT-2 has learned positions" in refused.stderr
    assert not (tmp_path / "no").exists()


def test_fine_tuning_starts_from_a_transformers_directory(runs, tmp_path):
    base = consolidated_model(resolve_checkpoint(runs.straight(2, 3).run_dir))[0].config
    hf_dir = tmp_path / "gpt2"
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=base.n_layer, n_head=base.n_head, n_embd=base.d_model,
        vocab_size=base.vocab_size, n_positions=base.max_seq_len))  # fmt: skip
    hf.save_pretrained(hf_dir)
    want = load_hf_model(hf_dir).state_dict()

    # GPT-2's tanh GELU differs from this run's exact one: said, not loaded wrongly
    args = gpt_args(runs.text, 2, 3, f"model.init_from={hf_dir}", "optim.lr=1e-30",
                    "optim.min_lr=0", "train.max_steps=1", "train.checkpoint_every=1")  # fmt: skip
    wrong = run_train(args, tmp_path / "wrong")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "model.activation=gelu_tanh, this run's has model.activation=gelu" in wrong.stderr

    run = run_train([*args, "model.activation=gelu_tanh"], tmp_path / "tuned", nproc=2).check()
    got = consolidated_model(resolve_checkpoint(run.run_dir))[0].state_dict()
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0, msg=name)
    assert f"init_from {hf_dir}: loaded {len(want)} tensors, newly initialised 0, dropped 0" in (
        run.stdout
    )
