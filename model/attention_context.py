"""What attention needs besides the hidden states: the masks, biases and
rotary angles of one forward pass (`AttentionContext`, built once per forward
by `build_attention_context` and read by every layer) and the decoding cache
(`KVCache`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from model.positions import PositionEncoding


class KVCache:
    """Keys and values of already-processed tokens, per layer, for decoding.

    Keys are stored after rotary rotation, so a cached decode step only needs
    the new token's own position. A Performer layer keeps its running sums
    (a `PerformerState`, with `length` and `reorder`) in its slot instead.

    Args:
        n_layer: number of attention layers that will write to the cache.
    """

    def __init__(self, n_layer: int) -> None:
        self.layers: list[Any] = [None] * n_layer

    @property
    def seq_len(self) -> int:
        """Number of cached positions (read before a forward starts writing)."""
        first = self.layers[0]
        if first is None:
            return 0
        return first[0].shape[2] if isinstance(first, tuple) else first.length

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new k, v [B, H, T_new, Dh] for `layer`; return all k, v so far."""
        past = self.layers[layer]
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        self.layers[layer] = (k, v)
        return k, v

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` [B_new] of every layer (beam search: each
        surviving beam continues from its parent beam's keys and values)."""
        self.layers = [
            kv if kv is None
            else (kv[0].index_select(0, index), kv[1].index_select(0, index))
            if isinstance(kv, tuple)
            else kv.reorder(index)
            for kv in self.layers
        ]  # fmt: skip


@dataclass
class AttentionContext:
    """Everything attention needs besides the hidden states; shared by all layers.

    Args:
        is_causal: let SDPA apply the causal mask itself (no mask tensor).
        keep: bool [B or 1, 1, Tq, Tk], True where a query may attend to a key
            (dense contexts only).
        bias: float32 additive score bias [1, H, Tq, Tk] (ALiBi, relative;
            dense contexts only).
        rotary: float32 (cos, sin) [Tq, Dh] for the new queries and keys.
        kv_cache: cache to read past keys/values from and append to.
        causal: the self-attention is causal (a decoder).
        key_keep: bool [B, Tk], False for padding keys; None without padding.
        q_positions: int64 [Tq] positions of the new queries.
        positions: the position scheme (score biases of any distances).
    """

    is_causal: bool = False
    keep: Tensor | None = None
    bias: Tensor | None = None
    rotary: tuple[Tensor, Tensor] | None = None
    kv_cache: KVCache | None = None
    causal: bool = False
    key_keep: Tensor | None = None
    q_positions: Tensor | None = None
    positions: PositionEncoding | None = None
    _masks: dict[torch.dtype, Tensor] = field(default_factory=dict, repr=False)

    def mask_for(self, dtype: torch.dtype) -> Tensor | None:
        """Additive SDPA mask in the query dtype (SDPA requires them to match).

        Masked scores get the dtype's most negative finite value. Built per
        dtype because a float32 mask cast down to bf16/fp16 would overflow.
        """
        if dtype in self._masks:
            return self._masks[dtype]
        if self.keep is None:
            if self.bias is None:
                return None
            mask = self.bias.to(dtype)
        else:
            device = self.keep.device
            kept = torch.zeros((), dtype=dtype, device=device)
            if self.bias is not None:
                kept = self.bias.to(dtype)
            blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=device)
            mask = torch.where(self.keep, kept, blocked)
        self._masks[dtype] = mask
        return mask


def build_attention_context(
    positions: PositionEncoding,
    q_len: int,
    *,
    causal: bool,
    device: torch.device,
    attention_mask: Tensor | None = None,
    kv_cache: KVCache | None = None,
    dense: bool = True,
) -> AttentionContext:
    """Masks, biases and rotary angles for one forward pass.

    Args:
        positions: the model's position scheme (supplies rotary and ALiBi).
        q_len: number of new tokens in this forward.
        causal: decoder (True) or bidirectional encoder (False).
        device: device of the inputs.
        attention_mask: [B, past + q_len], 1 = real token, 0 = padding; padded
            keys are never attended to.
        kv_cache: decoding cache; its length offsets the new tokens' positions.
        dense: build the [Tq, Tk] masks and biases exact softmax attention
            needs; False for the Performer and block-sparse kernels, which
            read key_keep and the positions instead (O(T) memory).
    """
    past = 0 if kv_cache is None else kv_cache.seq_len
    q_pos = torch.arange(past, past + q_len, device=device)
    key_keep = None
    if attention_mask is not None:
        if attention_mask.ndim != 2 or attention_mask.shape[1] != past + q_len:
            raise ValueError(
                f"attention_mask must be [batch, {past + q_len}] (cached + new tokens), "
                f"got {list(attention_mask.shape)}"
            )
        key_keep = attention_mask.to(device=device, dtype=torch.bool)
    sparse = AttentionContext(
        rotary=positions.rotary(q_pos),
        kv_cache=kv_cache,
        causal=causal,
        key_keep=key_keep,
        q_positions=q_pos,
        positions=positions,
    )
    if not dense:
        return sparse
    k_pos = torch.arange(past + q_len, device=device)
    bias = positions.attention_bias(q_pos, k_pos)
    keep = None if key_keep is None else key_keep[:, None, None, :]
    # A single new query may see every key, so it needs no causal mask. SDPA's
    # is_causal aligns the mask top-left, which is only right without a cache.
    needs_causal_mask = causal and q_len > 1
    is_causal = needs_causal_mask and keep is None and bias is None and past == 0
    if needs_causal_mask and not is_causal:
        causal_keep = (k_pos[None, :] <= q_pos[:, None])[None, None]
        keep = causal_keep if keep is None else keep & causal_keep
    if keep is not None:
        # Every query may see its own key, so no row is fully masked: such a row
        # softmaxes to NaN (or garbage), and NaN leaks through later layers even
        # where attention weights are zero. Only padding queries are affected.
        keep = keep | (k_pos[None, :] == q_pos[:, None])[None, None]
    return dataclasses.replace(sparse, is_causal=is_causal, keep=keep, bias=bias)
