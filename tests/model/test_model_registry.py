"""Every registered model builds, runs forward and backward; bad input is rejected."""

from __future__ import annotations

import pytest
import torch

from model import (
    BERT,
    GPT,
    MODEL_PRESETS,
    ModelConfig,
    ModelOutput,
    Seq2Seq,
    ViT,
    build_model,
    get_preset,
)

REDUCED = {
    "gpt": dict(n_layer=1, d_model=32, n_head=2, vocab_size=64, max_seq_len=16),
    "bert": dict(n_layer=1, d_model=32, n_head=2, vocab_size=64, max_seq_len=16),
    "vit": dict(n_layer=1, d_model=32, n_head=2, image_size=16, patch_size=4, num_classes=7),
    "seq2seq": dict(n_layer=1, d_model=32, n_head=2, vocab_size=64, max_seq_len=16),
}
EXTRA = [
    ("bert-tiny", {"pair_head": "nsp", "num_labels": 3}),
    ("bert-tiny", {"pair_head": "sop", "bias": False, "position": "alibi"}),
    ("vit-tiny", {"pooling": "mean", "position": "rotary"}),
    ("gpt-tiny", {"position": "sinusoidal", "bias": False}),
    ("gpt-tiny", {"activation_checkpointing": True, "dropout": 0.1}),
    ("transformer-tiny", {"share_embeddings": False, "norm": "pre", "position": "rotary"}),
    ("transformer-tiny", {"position": "alibi", "n_decoder_layer": 2, "bias": False}),
    ("transformer-tiny", {"position": "learned", "activation_checkpointing": True}),
]
CASES = [(name, {}) for name in MODEL_PRESETS] + EXTRA


@pytest.mark.parametrize(("name", "variant"), CASES, ids=str)
def test_forward_backward_reaches_every_parameter(make_batch, name, variant):
    torch.manual_seed(0)
    family = MODEL_PRESETS[name].family
    model = build_model(name, **{**REDUCED[family], **variant}).train()
    batch = make_batch(model.config, batch_size=2, seq_len=10)
    out = model.compute_loss(batch)
    assert isinstance(out, ModelOutput)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert all(not m.requires_grad for m in out.metrics.values())
    if family == "vit":
        assert out.logits.shape == (2, 7)
        assert model(batch["images"]).shape == (2, 7)
    elif family == "seq2seq":
        assert out.logits.shape == (2, 10, 64)
        assert model(batch["input_ids"], batch["decoder_input_ids"]).shape == (2, 10, 64)
    else:
        assert out.logits.shape == (2, 10, 64)
        assert model(batch["input_ids"]).shape == (2, 10, 64)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_build_model_picks_the_family_class():
    assert isinstance(build_model("gpt-tiny", n_layer=1), GPT)
    assert isinstance(build_model("bert-tiny", n_layer=1), BERT)
    assert isinstance(build_model("vit-tiny", n_layer=1), ViT)
    assert isinstance(build_model("transformer-tiny", n_layer=1), Seq2Seq)
    config = ModelConfig(family="bert", n_layer=1, d_model=32, n_head=2, vocab_size=50)
    model = build_model(config, num_labels=2)
    assert isinstance(model, BERT) and model.config.num_labels == 2
    assert config.num_labels == 0  # the caller's config is not mutated


def test_build_model_overrides_do_not_touch_the_registry():
    model = build_model("gpt-tiny", n_layer=1)
    assert model.config.n_layer == 1 and len(model.transformer.blocks) == 1
    assert MODEL_PRESETS["gpt-tiny"].n_layer == 4
    get_preset("gpt-tiny").n_layer = 9
    assert MODEL_PRESETS["gpt-tiny"].n_layer == 4


def test_unknown_override_and_name_are_reported():
    with pytest.raises(ValueError, match="model.n_layers"):
        build_model("gpt-tiny", n_layers=2)
    with pytest.raises(ValueError, match="gpt-tiny"):
        build_model("gpt-huge")
    with pytest.raises(ValueError, match="model.position"):
        build_model("gpt-tiny", position="rope")
    with pytest.raises(ValueError, match="model.n_head"):
        build_model("gpt-tiny", n_head=3)


def test_vit_rejects_wrong_image_size_and_channels():
    model = build_model("vit-tiny", n_layer=1)
    with pytest.raises(ValueError, match="model.image_size"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="model.in_channels"):
        model(torch.randn(1, 1, 32, 32))


def test_bert_heads_need_configuration(small_config):
    model = BERT(small_config("bert"))
    ids = torch.randint(64, (2, 6))
    with pytest.raises(ValueError, match="pair_head"):
        model.pair_logits(ids)
    with pytest.raises(ValueError, match="num_labels"):
        model.classify(ids)
    with pytest.raises(ValueError, match="labels"):
        model.compute_loss({"input_ids": ids})


def test_bert_head_outputs(small_config):
    torch.manual_seed(0)
    model = BERT(small_config("bert", pair_head="sop", num_labels=4)).eval()
    ids = torch.randint(64, (3, 6))
    types = torch.tensor([[0, 0, 0, 1, 1, 1]]).expand(3, -1)
    assert model.pooled_output(ids, types).shape == (3, 32)
    assert model.pair_logits(ids, types).shape == (3, 2)
    assert model.classify(ids, types).shape == (3, 4)
    # Segment ids reach the encoder.
    assert not torch.allclose(model.pooled_output(ids, types), model.pooled_output(ids))
    out = model.compute_loss({"input_ids": ids, "class_labels": torch.tensor([0, 1, 3])})
    assert out.logits.shape == (3, 4) and set(out.metrics) == {"class_loss", "class_accuracy"}
