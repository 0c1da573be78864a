"""BERT's pooling for sequence classification: the [CLS] token, or the mean of the
real tokens (padding, per the attention mask, never counts)."""

from __future__ import annotations

import pytest
import torch

from model import ModelConfig, build_model

SHAPE = {"family": "bert", "n_layer": 2, "n_head": 2, "d_model": 32, "vocab_size": 50}


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padding_never_changes_the_pooled_text(pooling):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE, num_labels=3, pooling=pooling)).eval()
    ids = torch.randint(7, 50, (1, 6))
    padded = torch.cat([ids, torch.randint(7, 50, (1, 4))], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    with torch.no_grad():
        alone = model.classify(ids)
        with_padding = model.classify(padded, attention_mask=mask)
    torch.testing.assert_close(with_padding, alone, rtol=1e-5, atol=1e-6)


def test_mean_pooling_is_the_mean_of_the_real_tokens():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE, num_labels=2, pooling="mean")).eval()
    ids = torch.randint(7, 50, (2, 8))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    with torch.no_grad():
        hidden = model.encode(ids, attention_mask=mask)
        want = torch.stack([hidden[0].mean(0), hidden[1, :5].mean(0)])
        got = model.pooled_output(ids, attention_mask=mask)
    torch.testing.assert_close(got, torch.tanh(model.pooler.dense(want)))
    cls = build_model(ModelConfig(**SHAPE, num_labels=2, pooling="cls")).eval()
    cls.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(cls.pooled_output(ids, attention_mask=mask), got)
