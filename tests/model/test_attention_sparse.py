"""Block-sparse attention (model/sparse_attention.py) against a dense reference.

The reference is SDPA with the [T, T] mask of `SparsePattern.dense_keep`, key padding (a
query may always see its own key) and the additive bias: the sparse path must give the same
outputs and gradients while never building anything of T * T elements.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model.sparse_attention import SparsePattern, sparse_attention, sparse_decode

B, H, T, DH = 2, 2, 50, 8
PATTERNS = [
    SparsePattern("local", block_size=8, window=2, stride=3),
    SparsePattern("strided", block_size=8, window=2, stride=3),
]
SLOPES = torch.tensor([0.1, 0.2])


def alibi(rel: torch.Tensor) -> torch.Tensor:
    """ALiBi-like bias: -slope * |rel| per head, float32 [H, *rel.shape]."""
    return -(SLOPES.view(-1, *[1] * rel.ndim) * rel.abs().float())


def inputs(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, DH, generator=gen).to(dtype) for _ in range(3))
    key_keep = torch.ones(B, T, dtype=torch.bool)
    key_keep[0, -7:] = False  # trailing padding
    key_keep[1, 3:5] = False  # holes in the middle
    return q, k, v, key_keep


def dense_reference(q, k, v, pattern, causal, key_keep=None, bias_fn=None):
    pos = torch.arange(q.shape[2])
    keep = pattern.dense_keep(pos, pos, causal)[None, None]
    if key_keep is not None:
        keep = keep & key_keep[:, None, None, :]
    keep = keep | torch.eye(q.shape[2], dtype=torch.bool)
    bias = torch.zeros(()) if bias_fn is None else bias_fn(pos[:, None] - pos[None, :])[None]
    mask = torch.where(keep, bias, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.kind)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "padding+bias"])
def test_matches_dense_reference(pattern, causal, extras):
    q, k, v, key_keep = inputs()
    kwargs = dict(key_keep=key_keep, bias_fn=alibi) if extras else {}
    got = sparse_attention(q, k, v, pattern, causal=causal, **kwargs)
    want = dense_reference(q, k, v, pattern, causal, **kwargs)
    assert got.shape == (B, H, T, DH)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fully_padded_sequence_gives_finite_output():
    q, k, v, _ = inputs()
    key_keep = torch.zeros(B, T, dtype=torch.bool)
    out = sparse_attention(q, k, v, PATTERNS[1], causal=False, key_keep=key_keep)
    assert torch.isfinite(out).all()
    # Each query sees only its own key, so it returns its own value.
    torch.testing.assert_close(out, v)


def test_block_table_by_hand():
    local = SparsePattern("local", block_size=8, window=2, stride=3)
    strided = SparsePattern("strided", block_size=8, window=2, stride=3)
    # 6 blocks; summary blocks are 2 and 5.
    tables = {
        (local, True): [[0, -1], [0, 1], [1, 2], [2, 3], [3, 4], [4, 5]],
        (local, False): [[0, 1, -1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, -1]],
        (strided, True): [[0, -1, -1], [0, 1, -1], [1, 2, -1], [2, 3, -1], [2, 3, 4], [2, 4, 5]],
        (strided, False): [
            [0, 1, 2, 5],
            [0, 1, 2, 5],
            [1, 2, 3, 5],
            [2, 3, 4, 5],
            [2, 3, 4, 5],
            [2, 4, 5, -1],
        ],
    }
    for (pattern, causal), want in tables.items():
        got = pattern.block_table(6, causal, "cpu")
        assert got.dtype == torch.int64
        assert got.tolist() == want, (pattern.kind, causal)


@pytest.mark.parametrize("kind", ["local", "strided"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("window", "stride"), [(1, 1), (2, 3), (3, 2), (5, 4)])
def test_block_table_agrees_with_dense_keep(kind, causal, window, stride):
    pattern = SparsePattern(kind, block_size=1, window=window, stride=stride)
    n = 13
    table = pattern.block_table(n, causal, "cpu")
    from_table = torch.zeros(n, n, dtype=torch.bool)
    for i, row in enumerate(table.tolist()):
        real = [j for j in row if j >= 0]
        assert real == sorted(set(real)), "ascending, no duplicates"
        assert all(j < 0 for j in row[len(real) :]), "-1 padding only at the end"
        from_table[i, real] = True
    pos = torch.arange(n)
    assert torch.equal(from_table, pattern.dense_keep(pos, pos, causal))


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.kind)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_gradients_match_dense_reference(pattern, causal):
    q, k, v, key_keep = inputs(seed=1)
    grads = []
    for fn in (sparse_attention, None):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        kwargs = dict(key_keep=key_keep, bias_fn=alibi)
        if fn is None:
            out = dense_reference(*leaves, pattern, causal, **kwargs)
        else:
            out = fn(*leaves, pattern, causal=causal, **kwargs)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        (out * weight).sum().backward()
        grads.append([x.grad for x in leaves])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_local_table_width_is_constant_in_length():
    pattern = SparsePattern("local", block_size=64, window=2)
    for causal, width in ((True, 2), (False, 3)):
        widths = {pattern.block_table(n, causal, "cpu").shape[1] for n in (4, 16, 64)}
        assert widths == {width}


class LargestTensor(TorchDispatchMode):
    """Records the most elements any op's output had."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, tuple | list) else (out,):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


@pytest.mark.parametrize("kind", ["local", "strided"])
def test_never_builds_a_t_by_t_tensor(kind):
    t = 4096
    pattern = SparsePattern(kind, block_size=64, window=2, stride=16)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, t, 8, generator=gen, requires_grad=True) for _ in range(3))
    key_keep = torch.ones(1, t, dtype=torch.bool)
    key_keep[0, -100:] = False
    slopes = torch.tensor([0.1])

    def bias_fn(rel):
        return -(slopes.view(-1, *[1] * rel.ndim) * rel.abs().float())

    with LargestTensor() as tracker:
        out = sparse_attention(q, k, v, pattern, causal=True, key_keep=key_keep, bias_fn=bias_fn)
        out.sum().backward()
    # Scores are [1, 1, 64 blocks, 64, K * 64]: K = 2 local, 2 + 4 summary blocks strided.
    width = pattern.block_table(t // 64, True, "cpu").shape[1]
    assert tracker.largest == t * width * 64
    assert tracker.largest <= t * t // 10
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.kind)
def test_decode_token_by_token_matches_full_sequence(pattern):
    q, k, v, key_keep = inputs(seed=3)
    full = sparse_attention(q, k, v, pattern, causal=True, key_keep=key_keep, bias_fn=alibi)
    rows = []
    # A 20-token prefill, then one token at a time against the growing cache.
    steps = [(0, 20)] + [(s, s + 1) for s in range(20, T)]
    for start, end in steps:
        rows.append(
            sparse_decode(
                q[:, :, start:end],
                k[:, :, :end],
                v[:, :, :end],
                pattern,
                torch.arange(start, end),
                key_keep=key_keep[:, :end],
                bias_fn=alibi,
            )
        )
    torch.testing.assert_close(torch.cat(rows, dim=2), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_bf16_close_to_float32(causal):
    q, k, v, key_keep = inputs(seed=4)
    kwargs = dict(causal=causal, key_keep=key_keep, bias_fn=alibi)
    want = sparse_attention(q, k, v, PATTERNS[1], **kwargs)
    half = [x.to(torch.bfloat16) for x in (q, k, v)]
    got = sparse_attention(*half, PATTERNS[1], **kwargs)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)


def test_dropout_only_in_training():
    q, k, v, _ = inputs(seed=5)
    pattern = PATTERNS[1]
    plain = sparse_attention(q, k, v, pattern, causal=True)
    evaluated = sparse_attention(q, k, v, pattern, causal=True, dropout_p=0.5, training=False)
    torch.testing.assert_close(evaluated, plain, atol=0, rtol=0)
    torch.manual_seed(0)
    trained = sparse_attention(q, k, v, pattern, causal=True, dropout_p=0.5, training=True)
    assert not torch.allclose(trained, plain)
    assert torch.isfinite(trained).all()


def test_rejects_bad_patterns_and_shapes():
    with pytest.raises(ValueError, match="kind"):
        SparsePattern("dilated")
    with pytest.raises(ValueError, match="window"):
        SparsePattern("local", window=0)
    q = torch.zeros(1, 1, 8, 4)
    with pytest.raises(ValueError, match="B, H, T, Dh"):
        sparse_attention(q, torch.zeros(1, 1, 9, 4), q, PATTERNS[0], causal=True)
