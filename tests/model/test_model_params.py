"""Parameter counts agree with the analytic formula; FLOPs follow 6N + 12LdT."""

from __future__ import annotations

import pytest
import torch

from model import MODEL_PRESETS, analytic_param_count, build_model

VARIANTS = [
    {},
    {"bias": False},
    {"position": "sinusoidal"},
    {"position": "rotary"},
    {"position": "alibi"},
    {"position": "none"},
    {"mlp_ratio": 2},
    {"norm": "post"},
]
FAMILY_VARIANTS = {
    "bert": [{"pair_head": "nsp"}, {"pair_head": "sop", "bias": False}, {"num_labels": 3}],
    "vit": [{"pooling": "mean"}, {"pooling": "mean", "position": "none"}, {"in_channels": 1}],
    "gpt": [{"max_seq_len": 256}, {"position": "relative", "relative_buckets": 16}],
    "seq2seq": [
        {"share_embeddings": False},
        {"share_embeddings": False, "position": "learned", "norm": "pre"},
        {"n_decoder_layer": 2},
        {"position": "relative", "attention": "sparse"},
        {"n_decoder_layer": 1, "bias": False, "position": "learned"},
    ],
}
CASES = [
    (name, variant)
    for name, config in MODEL_PRESETS.items()
    for variant in VARIANTS + FAMILY_VARIANTS[config.family]
]


def _meta_model(name, **overrides):
    # Meta tensors have shapes but no storage: building BERT-base costs nothing.
    with torch.device("meta"):
        return build_model(name, **overrides)


@pytest.mark.parametrize(("name", "variant"), CASES, ids=lambda v: str(v))
def test_param_count_matches_analytic_formula(name, variant):
    model = _meta_model(name, **variant)
    assert model.num_params() == analytic_param_count(model.config)
    assert model.num_params(non_embedding=True) == analytic_param_count(
        model.config, non_embedding=True
    )


def test_gpt2_small_has_the_published_parameter_count():
    model = _meta_model("gpt2-small")
    assert model.num_params() == 124_439_808
    # nanoGPT's "non-embedding" count: minus the 1024 x 768 position table.
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768


def test_published_bert_and_vit_counts():
    # timm vit_base_patch16_224 has 86,567,656 parameters.
    assert _meta_model("vit-b16").num_params() == 86_567_656
    # HF BertForMaskedLM (109,514,298) plus our final LayerNorm (pre-LN blocks).
    assert _meta_model("bert-base").num_params() == 109_514_298 + 2 * 768


def test_tied_weights_are_counted_once(small_config):
    gpt = build_model(small_config("gpt"))
    assert gpt.lm_head.weight is gpt.wte.weight
    bert = build_model(small_config("bert"))
    assert bert.mlm_head.decoder.weight is bert.embeddings.word.weight
    total = sum(p.numel() for p in gpt.parameters())
    assert gpt.num_params() == total  # parameters() already deduplicates
    assert len(gpt.state_dict()) == len(list(gpt.parameters())) + 1  # tied name listed twice


def test_training_flops_formula():
    gpt = _meta_model("gpt2-small")
    assert gpt.flops_unit == "token"
    expected = 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 768 * 1024
    assert gpt.training_flops_per_unit() == expected
    assert gpt.training_flops_per_token() == expected

    bert = _meta_model("bert-tiny")
    n = bert.num_params(non_embedding=True)
    assert bert.training_flops_per_token() == 6 * n + 12 * 2 * 128 * 128

    vit = _meta_model("vit-b16")
    assert vit.flops_unit == "image"
    seq = 14 * 14 + 1
    per_token = 6 * vit.num_params(non_embedding=True) + 12 * 12 * 768 * seq
    assert vit.training_flops_per_image() == per_token * seq
    assert vit.training_flops_per_unit() == per_token * seq


def test_vit_sequence_length_follows_image_and_pooling():
    assert _meta_model("vit-tiny").embeddings.positions.embedding.num_embeddings == 65
    mean = _meta_model("vit-tiny", pooling="mean", image_size=16)
    assert mean.embeddings.positions.embedding.num_embeddings == 16
