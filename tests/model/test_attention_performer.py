"""FAVOR+ attention: accuracy against softmax, orthogonal features, exact causality, chunking,
decoding from running sums, padding and bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.performer import (
    PerformerState,
    default_features,
    favor_attention,
    favor_decode,
    favor_features,
    orthogonal_projection,
)

B, H, T, DH = 2, 2, 32, 16


def _qkv(seed: int, length: int = T, scale: float = 0.5) -> tuple[torch.Tensor, ...]:
    """Queries and keys of small norm (FAVOR+'s variance grows with |q| |k|), unit values."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, length, DH, generator=gen) * scale
    k = torch.randn(B, H, length, DH, generator=gen) * scale
    v = torch.randn(B, H, length, DH, generator=gen)
    return q, k, v


def _relative_error(num_features: int, causal: bool, seeds: int = 4) -> float:
    errors = []
    for seed in range(seeds):
        q, k, v = _qkv(seed)
        projection = orthogonal_projection(num_features, DH, seed=100 + seed)
        out = favor_attention(q, k, v, projection, causal=causal, chunk_size=8)
        exact = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        errors.append(((out - exact).norm() / exact.norm()).item())
    return sum(errors) / len(errors)


def test_default_features():
    assert default_features(64) == 266
    assert default_features(1) == 1


@pytest.mark.parametrize("causal", [False, True])
def test_error_against_softmax_falls_with_features(causal):
    # Measured: bidirectional 0.36, 0.27, 0.14, 0.08; causal 0.27, 0.20, 0.11, 0.06.
    errors = [_relative_error(m, causal) for m in (16, 64, 256, 1024)]
    assert all(a > b for a, b in zip(errors[:-1], errors[1:], strict=True)), errors
    assert errors[-1] < 0.12, errors


def test_projection_blocks_are_orthogonal_and_seeded():
    projection = orthogonal_projection(40, DH, seed=3)
    assert projection.shape == (40, DH) and projection.dtype == torch.float32
    for start in range(0, 40, DH):
        block = projection[start : start + DH]
        gram = block @ block.T
        off_diagonal = gram - torch.diag(torch.diagonal(gram))
        assert off_diagonal.abs().max() < 1e-4 * gram.diagonal().max()
    # Rows carry chi-distributed lengths, not unit ones.
    assert projection.norm(dim=1).std() > 0.1
    assert torch.equal(projection, orthogonal_projection(40, DH, seed=3))
    assert not torch.allclose(projection, orthogonal_projection(40, DH, seed=4))


def test_key_features_do_not_depend_on_other_keys():
    projection = orthogonal_projection(32, DH, seed=0)
    _, k, _ = _qkv(0)
    whole = favor_features(k, projection, is_query=False)
    alone = favor_features(k[:, :, 5:6], projection, is_query=False)
    assert torch.equal(whole[:, :, 5:6], alone)
    assert (whole > 0).all()


@pytest.mark.parametrize("chunk_size", [4, 7, 128])
def test_causal_output_ignores_later_tokens_exactly(chunk_size):
    projection = orthogonal_projection(48, DH, seed=0)
    q, k, v = _qkv(0)
    cut = 13
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, :, cut:] = torch.randn_like(x[:, :, cut:]) * 3
    before = favor_attention(q, k, v, projection, causal=True, chunk_size=chunk_size)
    after = favor_attention(q2, k2, v2, projection, causal=True, chunk_size=chunk_size)
    assert torch.equal(before[:, :, :cut], after[:, :, :cut])
    assert not torch.allclose(before[:, :, cut:], after[:, :, cut:])


def test_chunk_size_does_not_change_causal_result_and_matches_naive():
    projection = orthogonal_projection(48, DH, seed=0)
    q, k, v = _qkv(1)
    outs = [favor_attention(q, k, v, projection, causal=True, chunk_size=c) for c in (4, 7, 1000)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-5)
    # O(T^2) reference from the same features.
    qf = favor_features(q, projection, is_query=True)
    kf = favor_features(k, projection, is_query=False)
    weights = (qf @ kf.transpose(-1, -2)).tril()
    naive = (weights @ v) / weights.sum(dim=-1, keepdim=True)
    torch.testing.assert_close(outs[0], naive, rtol=1e-5, atol=1e-5)
    # Bidirectional against the same kind of reference.
    full = qf @ kf.transpose(-1, -2)
    torch.testing.assert_close(
        favor_attention(q, k, v, projection, causal=False),
        (full @ v) / full.sum(dim=-1, keepdim=True),
        rtol=1e-5,
        atol=1e-5,
    )


def test_gradients_are_finite():
    projection = orthogonal_projection(24, DH, seed=0)
    q, k, v = (x.requires_grad_() for x in _qkv(2))
    favor_attention(q, k, v, projection, causal=True, chunk_size=5).square().sum().backward()
    assert all(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in (q, k, v))


def test_causal_rejects_different_lengths():
    projection = orthogonal_projection(8, DH, seed=0)
    q, k, v = _qkv(0)
    with pytest.raises(ValueError):
        favor_attention(q[:, :, :5], k, v, projection, causal=True)


@pytest.mark.parametrize("piece", [1, 3])
def test_decode_in_pieces_equals_causal_attention(piece):
    projection = orthogonal_projection(48, DH, seed=0)
    q, k, v = _qkv(3)
    whole = favor_attention(q, k, v, projection, causal=True, chunk_size=8)
    state, outs = None, []
    for start in range(0, T, piece):
        sl = slice(start, start + piece)
        out, state = favor_decode(q[:, :, sl], k[:, :, sl], v[:, :, sl], projection, state)
        outs.append(out)
        # Constant memory: the state does not grow with the length.
        assert state.sums.shape == (B, H, 48, DH) and state.normalizer.shape == (B, H, 48)
    assert state.length == T
    torch.testing.assert_close(torch.cat(outs, dim=2), whole, rtol=1e-5, atol=1e-5)


def test_state_reorder_picks_batch_rows():
    projection = orthogonal_projection(16, DH, seed=0)
    q, k, v = _qkv(4, length=5)
    _, state = favor_decode(q, k, v, projection, None)
    index = torch.tensor([1, 1, 0])
    picked = state.reorder(index)
    assert isinstance(picked, PerformerState) and picked.length == 5
    assert torch.equal(picked.sums, state.sums[index])
    assert torch.equal(picked.normalizer, state.normalizer[index])
    assert state.sums.shape[0] == B  # the original is left as it was


def test_padded_keys_have_no_influence():
    projection = orthogonal_projection(32, DH, seed=0)
    q, k, v = _qkv(5)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[0, -6:] = False
    keep[1, 3] = False
    k2, v2 = k.clone(), v.clone()
    k2[~keep[:, None, :, None].expand_as(k)] = 7.0
    v2[~keep[:, None, :, None].expand_as(v)] = -7.0
    before = favor_attention(q, k, v, projection, causal=False, key_keep=keep)
    after = favor_attention(q, k2, v2, projection, causal=False, key_keep=keep)
    assert torch.equal(before, after)
    assert not torch.allclose(before, favor_attention(q, k, v, projection, causal=False))


def test_all_keys_padded_gives_zeros_not_nan():
    projection = orthogonal_projection(16, DH, seed=0)
    q, k, v = _qkv(6)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[1] = False
    out = favor_attention(q, k, v, projection, causal=False, key_keep=keep)
    assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros_like(out[1]))


def test_bf16_in_bf16_out_close_to_float32():
    projection = orthogonal_projection(64, DH, seed=0)
    q, k, v = _qkv(7)
    for causal in (False, True):
        out = favor_attention(
            q.bfloat16(), k.bfloat16(), v.bfloat16(), projection, causal=causal, chunk_size=8
        )
        assert out.dtype == torch.bfloat16
        ref = favor_attention(q, k, v, projection, causal=causal, chunk_size=8)
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
