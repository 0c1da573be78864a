"""Block-sparse self-attention: the local and strided patterns of the Sparse Transformer.

Dense attention costs O(T^2) time and memory in the sequence length T. gobig's long-context
models instead let each query see only a few blocks of keys (Child et al., 2019, "Generating
Long Sequences with Sparse Transformers"):

- local: the query's own block and the `window - 1` blocks before it (causal) or on either
  side of it (bidirectional);
- strided ("fixed"): local, plus the last block of every group of `stride` blocks, a summary
  block that every later query can reach, so information crosses the sequence in two hops.

The sequence is cut into blocks of `block_size` tokens. For every query block a table lists
the key blocks it may see; those blocks are gathered and scored with one batched matmul, so
masked-out blocks cost nothing and no [T, T] score matrix or mask is ever built: scores are
[B, H, T / block_size, block_size, K * block_size] for a table of K blocks a row. Inside the
gathered blocks an element-level mask handles the rest: empty table slots, causality inside
the diagonal block, key padding, and the tail that pads T up to a block multiple.

`SparsePattern.dense_keep` is the same pattern as a [Tq, Tk] boolean matrix over token
positions; decoding with a KV cache (`sparse_decode`) uses it for its few new rows, and the
tests use it as the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_KINDS = ("local", "strided")

BiasFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SparsePattern:
    """Which key blocks each query block attends to.

    Args:
        kind: "local" (sliding window) or "strided" (window plus summary blocks).
        block_size: tokens per block.
        window: blocks in the local window, including the query's own block.
        stride: strided only: every group of `stride` blocks ends in a summary block.
    """

    kind: str = "local"
    block_size: int = 64
    window: int = 4
    stride: int = 4

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"sparse pattern kind must be one of {_KINDS}, got {self.kind!r}")
        for name in ("block_size", "window", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"sparse pattern {name} must be >= 1, got {getattr(self, name)}")

    def block_table(self, num_blocks: int, causal: bool, device: torch.device | str) -> Tensor:
        """Key blocks each query block sees.

        Built from the candidates directly, in O(num_blocks * K), so it stays small for long
        sequences (a [num_blocks, num_blocks] block mask would not).

        Returns:
            int64 [num_blocks, K]: ascending key block indices per query block, padded with -1
            at the end; K is the widest row.
        """
        rows = torch.arange(num_blocks, device=device)[:, None]
        lo = 1 - self.window
        hi = 1 if causal else self.window
        local = rows + torch.arange(lo, hi, device=device)
        local_ok = (local >= 0) & (local < num_blocks)
        candidates, ok = [local], [local_ok]
        if self.kind == "strided":
            summary = torch.arange(self.stride - 1, num_blocks, self.stride, device=device)
            summary = summary[None, :].expand(num_blocks, -1)
            dist = rows - summary
            # Summary blocks already inside the window are left out: a key block listed
            # twice would be counted twice by the softmax.
            summary_ok = dist >= self.window if causal else dist.abs() >= self.window
            candidates.append(summary)
            ok.append(summary_ok)
        table = torch.cat(candidates, dim=1)
        valid = torch.cat(ok, dim=1)
        # Empty slots sort after every real block, then become -1.
        table = torch.where(valid, table, num_blocks).sort(dim=1).values
        width = int(valid.sum(dim=1).max()) if num_blocks else 0
        table = table[:, :width]
        return torch.where(table < num_blocks, table, -1)

    def dense_keep(self, q_pos: Tensor, k_pos: Tensor, causal: bool) -> Tensor:
        """Element-level form of the pattern over token positions.

        O(Tq * Tk): meant for the few rows of a decoding step and for tests.

        Args:
            q_pos: query positions [Tq].
            k_pos: key positions [Tk].
            causal: also hide keys after the query.

        Returns:
            bool [Tq, Tk], True where query q may see key k.
        """
        q_block = (q_pos // self.block_size)[:, None]
        k_block = (k_pos // self.block_size)[None, :]
        keep = (q_block - k_block).abs() < self.window
        if self.kind == "strided":
            keep = keep | ((k_block + 1) % self.stride == 0)
        if causal:
            # Hides later blocks too: the window and summary blocks after the query's.
            keep = keep & (k_pos[None, :] <= q_pos[:, None])
        return keep


def _score_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half inputs (exact enough softmax), float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: SparsePattern,
    *,
    causal: bool,
    key_keep: Tensor | None = None,
    bias_fn: BiasFn | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> Tensor:
    """Block-sparse self-attention over one sequence.

    Args:
        q, k, v: [B, H, T, Dh], the same T.
        pattern: which key blocks each query block sees.
        causal: decoder (True) or bidirectional encoder (False).
        key_keep: bool [B, T], False for padding keys; None for no padding. A query may
            always see its own key (as in the dense path), so no row is fully masked.
        bias_fn: optional callable(rel) -> float32 [H, *rel.shape], an additive score bias
            from rel = query_pos - key_pos (ALiBi, learned relative positions); it is only
            evaluated at the gathered positions.
        dropout_p: dropout on the attention weights, applied only when `training`.
        training: whether dropout is active.

    Returns:
        [B, H, T, Dh] in q's dtype. Scores and softmax run in float32 (or wider).
    """
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"sparse attention needs q, k, v [B, H, T, Dh] of one sequence, got "
            f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    b, h, t, dh = q.shape
    bs = pattern.block_size
    n_blocks = max(1, -(-t // bs))
    padded = n_blocks * bs
    device = q.device

    # Zero-pad to a whole number of blocks; the tail keys are masked below and the tail
    # queries are cut off at the end.
    pad = (0, 0, 0, padded - t)
    q_blocks = F.pad(q, pad).view(b, h, n_blocks, bs, dh)
    k_blocks = F.pad(k, pad).view(b, h, n_blocks, bs, dh)
    v_blocks = F.pad(v, pad).view(b, h, n_blocks, bs, v.shape[-1])

    table = pattern.block_table(n_blocks, causal, device)  # [nB, K]
    width = table.shape[1]
    slot_ok = table >= 0
    flat = table.clamp(min=0).flatten()

    # Gather the visible key/value blocks: [B, H, nB, K * bs, Dh].
    k_sel = k_blocks.index_select(2, flat).view(b, h, n_blocks, width * bs, dh)
    v_sel = v_blocks.index_select(2, flat).view(b, h, n_blocks, width * bs, v.shape[-1])

    # Token positions of the queries [nB, bs, 1] and of the gathered keys [nB, 1, K * bs].
    offsets = torch.arange(bs, device=device)
    q_pos = torch.arange(padded, device=device).view(n_blocks, bs, 1)
    k_pos = (table.clamp(min=0)[:, :, None] * bs + offsets).view(n_blocks, 1, width * bs)

    keep = slot_ok[:, :, None].expand(-1, -1, bs).reshape(n_blocks, 1, width * bs)
    if causal:
        keep = keep & (k_pos <= q_pos)  # only bites inside the diagonal block
    # Padding keys and the tail past T are hidden, except a query's own key: a fully
    # masked row would softmax to NaN, and NaN leaks through later layers.
    real = torch.zeros(b if key_keep is not None else 1, padded, dtype=torch.bool, device=device)
    real[:, :t] = True if key_keep is None else key_keep.to(device=device, dtype=torch.bool)
    real_sel = real[:, k_pos.flatten()].view(-1, n_blocks, 1, width * bs)
    keep = keep & (real_sel | (k_pos == q_pos))  # [B or 1, nB, bs, K * bs]

    score_dtype = _score_dtype(q.dtype)
    scores = torch.matmul(q_blocks.to(score_dtype), k_sel.to(score_dtype).transpose(-1, -2))
    scores = scores * (1.0 / math.sqrt(dh))  # [B, H, nB, bs, K * bs]
    if bias_fn is not None:
        bias = bias_fn(q_pos - k_pos)  # [H, nB, bs, K * bs]
        scores = scores + bias.to(score_dtype)
    scores = scores.masked_fill(~keep[:, None], torch.finfo(score_dtype).min)
    probs = scores.softmax(dim=-1)
    if training and dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    out = torch.matmul(probs.to(v.dtype), v_sel)  # [B, H, nB, bs, Dv]
    return out.reshape(b, h, padded, v.shape[-1])[:, :, :t].to(q.dtype)


def sparse_decode(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: SparsePattern,
    q_pos: Tensor,
    *,
    key_keep: Tensor | None = None,
    bias_fn: BiasFn | None = None,
) -> Tensor:
    """Causal sparse attention of a few new queries against a KV cache.

    Uses the element-level `dense_keep` rows, O(Tn * Tk): cheap for the handful of tokens
    a decoding step adds, and equal to the matching rows of `sparse_attention(causal=True)`.

    Args:
        q: new queries [B, H, Tn, Dh] at absolute positions `q_pos` [Tn].
        k, v: all keys and values so far [B, H, Tk, Dh], at positions 0..Tk-1.
        pattern: the sparse pattern the model was trained with.
        q_pos: int positions of the new queries [Tn].
        key_keep: bool [B, Tk], False for padding keys; None for no padding.
        bias_fn: as in `sparse_attention`; called with rel [Tn, Tk].

    Returns:
        [B, H, Tn, Dh] in q's dtype.
    """
    device = q.device
    q_pos = q_pos.to(device)
    k_pos = torch.arange(k.shape[2], device=device)
    keep = pattern.dense_keep(q_pos, k_pos, causal=True)  # [Tn, Tk]
    own = k_pos[None, :] == q_pos[:, None]
    if key_keep is not None:
        real = key_keep.to(device=device, dtype=torch.bool)[:, None, None, :]
        keep = keep & (real | own)  # [B, 1, Tn, Tk]
    score_dtype = _score_dtype(q.dtype)
    scores = torch.matmul(q.to(score_dtype), k.to(score_dtype).transpose(-1, -2))
    scores = scores * (1.0 / math.sqrt(q.shape[-1]))
    if bias_fn is not None:
        scores = scores + bias_fn(q_pos[:, None] - k_pos[None, :]).to(score_dtype)
    scores = scores.masked_fill(~keep, torch.finfo(score_dtype).min)
    probs = scores.softmax(dim=-1)
    return torch.matmul(probs.to(v.dtype), v).to(q.dtype)
