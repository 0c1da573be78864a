"""Position information: learned, sinusoidal, rotary (RoPE), ALiBi, learned
relative biases or none.

Absolute schemes (learned, sinusoidal) add a vector to the token embeddings;
relative schemes act inside attention: rotary rotates queries and keys, ALiBi
adds a distance penalty to the attention scores, and relative adds a learned
per-head bias for each bucket of query-key distance. `PositionEncoding` offers all
three hooks so the models never branch on the scheme themselves.

Fixed tables (sinusoidal, rotary, ALiBi) are computed on the fly in float32
rather than stored as buffers: mixed-precision engines cast buffers to bf16/fp16,
which would quantise the frequencies, and no buffers means nothing to
checkpoint and nothing to materialise when building on the meta device.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from model.config import ModelConfig

FREQUENCY_BASE = 10000.0


def sinusoidal_encoding(positions: Tensor, dim: int) -> Tensor:
    """Fixed sin/cos encodings of "Attention Is All You Need".

    Args:
        positions: integer positions, shape [T].
        dim: encoding width (d_model).

    Returns:
        float32 tensor [T, dim]: sin in even channels, cos in odd channels.
    """
    half = (dim + 1) // 2
    freqs = torch.exp(
        torch.arange(half, device=positions.device, dtype=torch.float32)
        * (-2.0 * math.log(FREQUENCY_BASE) / dim)
    )
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]
    enc = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)
    return enc[:, :dim]


def rotary_cos_sin(
    positions: Tensor, head_dim: int, base: float = FREQUENCY_BASE
) -> tuple[Tensor, Tensor]:
    """Cosines and sines for rotary embeddings (GPT-NeoX half-split layout).

    Args:
        positions: integer positions, shape [T].
        head_dim: per-head width; must be even.
        base: frequency base.

    Returns:
        (cos, sin), each float32 [T, head_dim].
    """
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + head_dim/2) of x by position-dependent angles.

    Args:
        x: queries or keys [B, H, T, head_dim].
        cos: [T, head_dim] from `rotary_cos_sin`.
        sin: [T, head_dim] from `rotary_cos_sin`.
    """
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def alibi_slopes(n_head: int) -> list[float]:
    """Per-head ALiBi slopes (Press et al. 2022).

    For a power-of-two head count the slopes are the geometric sequence
    2^(-8/n), 2^(-16/n), ...; otherwise the slopes of the nearest lower power of
    two are followed by every other slope of the next power of two, as in the
    paper's reference code.

    Args:
        n_head: number of attention heads.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return power_of_two(n_head)
    closest = 2 ** math.floor(math.log2(n_head))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: n_head - closest]


def alibi_bias(slopes: list[float], relative: Tensor) -> Tensor:
    """Additive attention bias -slope * |i - j|.

    The symmetric distance serves both encoders and decoders: in a decoder the
    causal mask hides j > i anyway, leaving the paper's slope * (j - i).

    Args:
        slopes: one slope per head.
        relative: query minus key positions, any shape S.

    Returns:
        float32 tensor [H, *S].
    """
    slope = torch.tensor(slopes, dtype=torch.float32, device=relative.device)
    distance = relative.abs().to(torch.float32)
    return -(slope.view(-1, *([1] * relative.ndim)) * distance[None])


def relative_bucket(relative: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bucket index of each query-key distance, both directions (keys before and
    after the query get separate halves of the buckets).

    Within each half, distances below half the half's buckets have a bucket
    each; longer ones share log-spaced buckets up to max_distance, and every
    distance beyond it falls in the last bucket: near positions are told apart
    exactly, far ones only roughly.

    Args:
        relative: query minus key positions, any integer tensor.
        num_buckets: buckets in all (half for each direction).
        max_distance: distances at or beyond this share the last bucket.

    Returns:
        int64 tensor of relative's shape, values in [0, num_buckets).
    """
    half = num_buckets // 2
    bucket = (relative < 0).long() * half  # keys after the query: the upper half
    distance = relative.abs()
    exact = max(half // 2, 1)
    # The log is taken of at least `exact`: below it the exact bucket is used anyway.
    far = distance.clamp(min=exact).float()
    scaled = torch.log(far / exact) / math.log(max(max_distance / exact, 1.0 + 1e-6))
    log_bucket = (exact + (scaled * (half - exact)).long()).clamp(max=half - 1)
    within = torch.where(distance < exact, distance, log_bucket)
    # Every distance at or beyond max_distance shares the last bucket, even when
    # max_distance is below the exactly-told-apart range.
    return bucket + torch.where(distance >= max_distance, half - 1, within)


class PositionEncoding(nn.Module):
    """One position scheme, exposing the hook each model stage needs.

    Args:
        kind: learned | sinusoidal | rotary | alibi | relative | none.
        max_len: table size for learned embeddings.
        d_model: embedding width.
        n_head: attention heads (ALiBi slopes, relative bias columns).
        relative_buckets: relative: distance buckets.
        relative_max_distance: relative: where the last bucket starts.
    """

    def __init__(
        self,
        kind: str,
        max_len: int,
        d_model: int,
        n_head: int,
        relative_buckets: int = 32,
        relative_max_distance: int = 128,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.d_model = d_model
        self.head_dim = d_model // n_head
        self.slopes = alibi_slopes(n_head) if kind == "alibi" else []
        self.embedding = nn.Embedding(max_len, d_model) if kind == "learned" else None
        self.buckets = relative_buckets
        self.max_distance = relative_max_distance
        # One learned bias per (bucket, head), shared by every layer.
        self.relative = nn.Embedding(relative_buckets, n_head) if kind == "relative" else None

    @classmethod
    def for_model(cls, config: ModelConfig, max_len: int | None = None) -> PositionEncoding:
        """The scheme config.position names, for sequences up to max_len
        (default config.max_seq_len)."""
        return cls(
            config.position,
            config.max_seq_len if max_len is None else max_len,
            config.d_model,
            config.n_head,
            config.relative_buckets,
            config.relative_max_distance,
        )

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Add absolute encodings to embeddings x [B, T, d] at `positions` [T]."""
        if self.embedding is not None:
            return x + self.embedding(positions).to(x.dtype)
        if self.kind == "sinusoidal":
            return x + sinusoidal_encoding(positions, self.d_model).to(x.dtype)
        return x

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor] | None:
        """(cos, sin) for the queries/keys at `positions`, or None if not rotary."""
        if self.kind != "rotary":
            return None
        return rotary_cos_sin(positions, self.head_dim)

    @property
    def has_bias(self) -> bool:
        """Whether this scheme adds a bias to attention scores."""
        return self.kind in ("alibi", "relative")

    def bias_of(self, relative: Tensor) -> Tensor | None:
        """Additive float32 score bias [H, *S] for query-minus-key positions of
        any shape S, or None when the scheme has no score bias. Block-sparse
        attention asks for the distances it computes, never a full matrix."""
        if self.kind == "alibi":
            return alibi_bias(self.slopes, relative)
        if self.relative is not None:
            bucket = relative_bucket(relative, self.buckets, self.max_distance)
            return self.relative(bucket).float().movedim(-1, 0)
        return None

    def attention_bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor | None:
        """Additive float32 score bias [1, H, Tq, Tk], or None without one."""
        if not self.has_bias:
            return None
        return self.bias_of(q_positions[:, None] - k_positions[None, :]).unsqueeze(0)

    @property
    def embedding_params(self) -> list[Tensor]:
        """Parameters that are lookup tables (excluded from non-embedding counts)."""
        tables = (self.embedding, self.relative)
        return [table.weight for table in tables if table is not None]
