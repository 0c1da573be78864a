"""Attention semantics: causality, bidirectionality, permutation symmetry, masks."""

from __future__ import annotations

import math

import pytest
import torch

from model import BERT, GPT, build_model
from model.attention import build_attention_context
from model.positions import alibi_slopes, apply_rotary, rotary_cos_sin, sinusoidal_encoding

POSITIONS = ["learned", "sinusoidal", "rotary", "alibi", "none"]
ENCODED = ["learned", "sinusoidal", "rotary", "alibi"]


@pytest.mark.parametrize("position", POSITIONS)
def test_gpt_is_causal(small_config, position):
    torch.manual_seed(0)
    model = GPT(small_config("gpt", position=position)).eval()
    ids = torch.randint(64, (2, 12))
    changed = ids.clone()
    changed[:, 7] = (ids[:, 7] + 1) % 64
    before, after = model(ids), model(changed)
    torch.testing.assert_close(before[:, :7], after[:, :7])
    assert not torch.allclose(before[:, 7:], after[:, 7:])


@pytest.mark.parametrize("position", POSITIONS)
def test_bert_sees_both_sides(small_config, position):
    torch.manual_seed(0)
    model = BERT(small_config("bert", position=position)).eval()
    ids = torch.randint(64, (1, 10))
    base = model(ids)[:, 5]
    for j in (2, 8):  # one token to the left, one to the right
        changed = ids.clone()
        changed[:, j] = (ids[:, j] + 1) % 64
        assert not torch.allclose(model(changed)[:, 5], base)


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_encoder_without_positions_is_permutation_equivariant(small_config, family):
    torch.manual_seed(0)
    model = build_model(small_config(family, position="none", pooling="mean")).eval()
    x = torch.randperm(64)[:10][None].repeat(2, 1)  # distinct tokens: a real permutation
    perm = torch.randperm(10)
    run = model.encode if family == "bert" else _vit_tokens(model)
    torch.testing.assert_close(run(x[:, perm]), run(x)[:, perm])


@pytest.mark.parametrize("position", ENCODED)
def test_encoder_with_positions_is_not_permutation_equivariant(small_config, position):
    torch.manual_seed(0)
    model = BERT(small_config("bert", position=position)).eval()
    x = torch.randperm(64)[:10][None]
    # Not a reversal: symmetric ALiBi (-m|i-j|) is blind to reversing the sequence.
    perm = torch.tensor([3, 0, 7, 1, 9, 2, 5, 8, 4, 6])
    assert not torch.allclose(model.encode(x[:, perm]), model.encode(x)[:, perm], atol=1e-5)


def _vit_tokens(model):
    """Run ViT blocks on token embeddings directly (ids index a random table)."""
    table = torch.randn(64, model.config.d_model)

    def run(ids):
        x = table[ids]
        ctx = build_attention_context(
            model.embeddings.positions, x.shape[1], causal=False, device=x.device
        )
        return model.transformer(x, ctx)

    return run


@pytest.mark.parametrize("position", POSITIONS)
def test_bert_padded_keys_do_not_matter(small_config, position):
    torch.manual_seed(0)
    model = BERT(small_config("bert", position=position)).eval()
    ids = torch.randint(64, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, 6:] = 0
    mask[1, 8:] = 0
    changed = ids.clone()
    changed[0, 6:] = (ids[0, 6:] + 5) % 64
    changed[1, 8:] = (ids[1, 8:] + 5) % 64
    before = model(ids, attention_mask=mask)
    after = model(changed, attention_mask=mask)
    keep = mask.bool()
    torch.testing.assert_close(before[keep], after[keep])
    # Without the mask the same change is visible everywhere.
    assert not torch.allclose(model(ids)[keep], model(changed)[keep])


@pytest.mark.parametrize("position", POSITIONS)
def test_gpt_left_padding_is_ignored_and_finite(small_config, position):
    torch.manual_seed(0)
    model = GPT(small_config("gpt", position=position)).eval()
    ids = torch.randint(64, (1, 10))
    mask = torch.ones(1, 10, dtype=torch.long)
    mask[0, :3] = 0
    changed = ids.clone()
    changed[0, :3] = (ids[0, :3] + 7) % 64
    before = model(ids, attention_mask=mask)
    after = model(changed, attention_mask=mask)
    torch.testing.assert_close(before[:, 3:], after[:, 3:])
    # The first pad query sees only masked keys; it must still be finite.
    assert torch.isfinite(before).all()


@pytest.mark.parametrize("causal", [True, False])
def test_no_attention_row_is_fully_masked(small_config, causal):
    """A fully masked row softmaxes to NaN on some kernels; padding must not cause one."""
    positions = GPT(small_config("gpt", position="alibi")).positions
    mask = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
    ctx = build_attention_context(
        positions, 5, causal=causal, device=torch.device("cpu"), attention_mask=mask
    )
    assert ctx.keep is not None and ctx.keep.any(dim=-1).all()
    # Real tokens still never see padding.
    assert not ctx.keep[0, 0, 3:, :3].any()


def test_attention_mask_shape_is_checked(small_config):
    model = GPT(small_config("gpt"))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))


def test_alibi_slopes_follow_the_geometric_sequence():
    assert alibi_slopes(8) == pytest.approx([2.0 ** -(i + 1) for i in range(8)])
    assert alibi_slopes(4) == pytest.approx([2.0 ** (-2 * (i + 1)) for i in range(4)])
    # 12 heads: the 8 power-of-two slopes, then odd-indexed slopes of 16 heads.
    expected = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(i + 0.5) for i in range(4)]
    assert alibi_slopes(12) == pytest.approx(expected)
    assert len(alibi_slopes(6)) == 6 and len(set(alibi_slopes(6))) == 6


def test_rotary_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        cq, sq = rotary_cos_sin(torch.tensor([i]), 8)
        ck, sk = rotary_cos_sin(torch.tensor([j]), 8)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score(3, 1), score(12, 10))
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_sinusoidal_encoding_values():
    enc = sinusoidal_encoding(torch.arange(5), 6)
    assert enc.shape == (5, 6)
    torch.testing.assert_close(enc[:, 0], torch.sin(torch.arange(5.0)))
    torch.testing.assert_close(enc[:, 1], torch.cos(torch.arange(5.0)))
    torch.testing.assert_close(enc[2, 2], torch.tensor(math.sin(2 / 10000 ** (2 / 6))))


@pytest.mark.parametrize("family", ["gpt", "bert", "vit", "seq2seq"])
@pytest.mark.parametrize("position", ["learned", "alibi", "rotary"])
def test_bf16_autocast_forward_is_finite(small_config, make_batch, family, position):
    torch.manual_seed(0)
    config = small_config(family, position=position)
    model = build_model(config)
    batch = make_batch(config)
    if family != "vit":
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        batch["attention_mask"][0, -2:] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.compute_loss(batch)
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.logits.float()).all() and torch.isfinite(out.loss)
    assert out.loss.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("position", ["rotary", "alibi"])
def test_half_precision_weights_forward_and_cached_generation(small_config, dtype, position):
    """DeepSpeed bf16/fp16 casts the whole module; masks and rotary must follow."""
    torch.manual_seed(0)
    model = GPT(small_config("gpt", position=position)).to(dtype)
    ids = torch.randint(64, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding: the pad queries see no real key
    logits = model(ids, attention_mask=mask)
    assert logits.dtype == dtype and torch.isfinite(logits.float()).all()
    out = model.generate(ids, 4, temperature=0)
    assert out.shape == (2, 10)


@pytest.mark.parametrize("how", ["weights", "autocast"])
def test_half_precision_attention_runs_in_fp32_on_cpu(small_config, monkeypatch, how):
    """CPU's bf16 attention kernels are slower and less exact than fp32: gobig attends
    in fp32 around bf16 projections, whether the weights or autocast make them bf16."""
    import model.attention_kinds as attention

    seen = []
    sdpa = attention.F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        out = sdpa(q, k, v, **kwargs)
        seen.append((q.dtype, out.dtype))
        return out

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    model = GPT(small_config("gpt", position="alibi"))
    ids = torch.randint(64, (2, 8))
    if how == "weights":
        logits = model.to(torch.bfloat16)(ids)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids)
    logits.float().sum().backward()
    assert logits.dtype == torch.bfloat16
    assert seen and all(d == (torch.float32, torch.float32) for d in seen)
    assert all(p.grad is not None and torch.isfinite(p.grad.float()).all()
               for p in model.parameters())  # fmt: skip
