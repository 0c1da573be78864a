"""FAVOR+ attention: softmax attention approximated in time and memory linear in the length.

Softmax attention weighs key j for query i by exp(q_i . k_j / sqrt(Dh)), which needs the whole
[T, T] score matrix. FAVOR+ ("Rethinking Attention with Performers", Choromanski et al., 2021)
writes that kernel as an expectation over random directions w ~ N(0, I):

    exp(x . y) = E_w[ exp(w . x - |x|^2 / 2) * exp(w . y - |y|^2 / 2) ]

so with M drawn directions each query and key becomes a vector phi(.) of M positive features and
attention becomes phi(Q) (phi(K)^T V) / (phi(Q) (phi(K)^T 1)): no [T, T] matrix, cost O(T * M * Dh).
The features are positive (unlike trigonometric random features), which keeps the normaliser away
from zero and the estimate stable; drawing the directions in orthogonal blocks lowers its variance.

Causal attention keeps running sums of phi(k) v^T and phi(k) instead of keys and values, so a
decoding step costs O(M * Dh) whatever the length already generated (`PerformerState`).

Everything is computed in float32 whatever the input dtype: the features are exponentials and the
normaliser is a sum over the whole sequence, both of which lose too much in bf16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Smallest positive normal float32. The denominator is clamped at it only for rows with no
# visible key at all (every key padded, or every key feature underflowed to zero): such a row
# then reads 0 / tiny = 0 instead of 0 / 0 = NaN. Any row with some weight is far above it.
_TINY = torch.finfo(torch.float32).tiny

# Largest exponent of a key feature (see `favor_features`).
_KEY_EXPONENT_CAP = 40.0

# Queries per chunk when `favor_decode` gets many tokens at once (a prefill): bounds the masked
# [C, C] product; a single decoding step is one chunk of one token.
_DECODE_CHUNK = 128


def default_features(head_dim: int) -> int:
    """The paper's default m = round(d * ln d) random features for head size d (min 1).

    Args:
        head_dim: size d of one attention head.

    Returns:
        Number of random features M.
    """
    return max(1, round(head_dim * math.log(head_dim)))


def orthogonal_projection(
    num_features: int, head_dim: int, seed: int, device: torch.device | str = "cpu"
) -> Tensor:
    """Random directions of FAVOR+, drawn in orthogonal blocks.

    Rows come in blocks of `head_dim` mutually orthogonal directions (QR of a Gaussian matrix);
    the last block is cut to fit. Each row is then scaled by the norm of an independent Gaussian
    vector, so that every row alone is distributed as a Gaussian N(0, I) vector (the estimator
    stays unbiased) while rows within a block are exactly orthogonal (lower variance).

    The draw uses a CPU generator seeded with `seed` and only then moves to `device`, so the
    result depends on (num_features, head_dim, seed) only: every rank and every device of a run
    gets the same directions.

    Args:
        num_features: M, number of rows.
        head_dim: Dh, size of each row.
        seed: seed of the draw.
        device: where the result lives.

    Returns:
        float32 [num_features, head_dim].
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    blocks = []
    for _ in range(math.ceil(num_features / head_dim)):
        # device="cpu" even under a `with torch.device(...)` default (a model built on the
        # meta device for planning): the generator lives on the CPU.
        gaussian = torch.randn(head_dim, head_dim, generator=gen, dtype=torch.float32, device="cpu")
        q, r = torch.linalg.qr(gaussian)
        # QR's sign convention biases the directions; flipping each column by the sign of R's
        # diagonal makes q uniformly (Haar) distributed over orthogonal matrices.
        q = q * torch.sign(torch.diagonal(r)).masked_fill(torch.diagonal(r) == 0, 1.0)
        blocks.append(q.T)
    directions = torch.cat(blocks, dim=0)[:num_features]
    # Norms of independent Gaussian vectors: chi-distributed with head_dim degrees of freedom.
    lengths = torch.randn(
        num_features, head_dim, generator=gen, dtype=torch.float32, device="cpu"
    ).norm(dim=1)
    return (directions * lengths[:, None]).to(device)


def favor_features(x: Tensor, projection: Tensor, *, is_query: bool, eps: float = 1e-6) -> Tensor:
    """Positive random features phi(x) of queries or keys.

    With x' = x * Dh**-0.25 (so that phi(q) . phi(k) estimates exp(q . k / sqrt(Dh))) and
    u_i = w_i . x' - |x'|^2 / 2, the features are exp(u - shift) / sqrt(M) plus a small eps.
    Any shift that is a per-query factor, or one constant for all keys, cancels between the
    numerator and the denominator of attention; it only keeps exp in range:

    - queries: shift = max_i u_i of the row, so the largest feature is exactly 1 / sqrt(M);
      phi = exp(u - shift) / sqrt(M) + eps.
    - keys: no shift at all, so one key's features never depend on another key: causal
      attention stays exactly causal and decoding can reuse running sums. exp(u) is kept in
      range by capping u at _KEY_EXPONENT_CAP instead (e^40, summed over a million keys, is still
      far from float32's limit); only a key whose weight would dwarf every other one by a factor
      of e^40 is affected. (A data-independent shift such as max_i |w_i|^2 / 2, the bound of u,
      would push typical features below float32's normal range for heads of 128 dimensions.)
      phi = exp(min(u, cap)) / sqrt(M) + eps.

    Args:
        x: queries or keys [B, H, T, Dh], any float dtype.
        projection: random directions w [M, Dh] (see `orthogonal_projection`).
        is_query: which shift to use (see above).
        eps: keeps every feature, hence every denominator, above zero.

    Returns:
        float32 [B, H, T, M], all positive.
    """
    w = projection.to(device=x.device, dtype=torch.float32)
    num_features, head_dim = w.shape
    x = x.float() * head_dim**-0.25
    u = x @ w.T - 0.5 * x.square().sum(dim=-1, keepdim=True)
    scale = num_features**-0.5
    if is_query:
        # The max is a per-query constant that cancels; no gradient needs to flow through it.
        shift = u.amax(dim=-1, keepdim=True).detach()
        return torch.exp(u - shift) * scale + eps
    return torch.exp(u.clamp(max=_KEY_EXPONENT_CAP)) * scale + eps


def _keep_keys(key_features: Tensor, key_keep: Tensor | None) -> Tensor:
    """Zero the features of padding keys (key_keep [B, T] False) so they get no weight."""
    if key_keep is None:
        return key_features
    return key_features * key_keep[:, None, :, None].to(key_features.dtype)


def _causal_scan(
    qf: Tensor, kf: Tensor, v: Tensor, state: PerformerState, chunk_size: int
) -> tuple[Tensor, PerformerState]:
    """Causal linear attention of new tokens after `state`, one chunk of queries at a time.

    Query i of a chunk sees every earlier chunk through the running sums, and the keys of its
    own chunk up to itself through a small masked [C, C] product. Only the sums [M, Dh] are
    carried from chunk to chunk, never a per-position prefix sum [T, M, Dh].

    Args:
        qf: query features [B, H, T, M] float32.
        kf: key features [B, H, T, M] float32 (padding keys already zeroed).
        v: values [B, H, T, Dh] float32.
        state: sums of the tokens before these T.
        chunk_size: queries per chunk.

    Returns:
        (out [B, H, T, Dh] float32, state with the T tokens folded in).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    length = qf.shape[2]
    size = min(chunk_size, length)
    lower = torch.ones(size, size, dtype=torch.bool, device=qf.device).tril()
    sums, normalizer = state.sums, state.normalizer
    outs = []
    # split, not slicing in a loop: the backward of each slice would write its gradient
    # into a zero tensor as long as the whole sequence, T / chunk times over (quadratic);
    # split's backward joins the chunks' gradients once.
    for qc, kc, vc in zip(qf.split(size, 2), kf.split(size, 2), v.split(size, 2), strict=True):
        n = qc.shape[2]
        # masked_fill, not a multiply: the weights of later keys are exact zeros, so later
        # tokens cannot change an earlier output by even one rounding.
        local = (qc @ kc.transpose(-1, -2)).masked_fill(~lower[:n, :n], 0.0)
        num = qc @ sums + local @ vc
        den = (qc @ normalizer.unsqueeze(-1)).squeeze(-1) + local.sum(dim=-1)
        outs.append(num / den.clamp_min(_TINY).unsqueeze(-1))
        sums = sums + kc.transpose(-1, -2) @ vc
        normalizer = normalizer + kc.sum(dim=2)
    return torch.cat(outs, dim=2), PerformerState(sums, normalizer, state.length + length)


def favor_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor,
    *,
    causal: bool,
    key_keep: Tensor | None = None,
    chunk_size: int = 128,
) -> Tensor:
    """FAVOR+ attention, linear in the sequence length.

    Bidirectional: out = phi(Q) (phi(K)^T V) / (phi(Q) (phi(K)^T 1)).

    Causal (Tq == Tk, query i sees keys <= i): queries go in chunks of `chunk_size`; earlier
    chunks contribute through running sums S = sum phi(k) v^T [B, H, M, Dh] and
    z = sum phi(k) [B, H, M], the chunk itself through a lower-triangular (diagonal included)
    masked phi(Qc) phi(Kc)^T. Forward memory is O(T * M + chunk^2 + M * Dh) per (batch, head);
    no [T, T] matrix and no [T, M, Dh] prefix sum is formed (autograd keeps one S per chunk).

    Args:
        q: queries [B, H, Tq, Dh].
        k: keys [B, H, Tk, Dh].
        v: values [B, H, Tk, Dh].
        projection: random directions [M, Dh].
        causal: whether query i sees only keys <= i.
        key_keep: bool [B, Tk], False for a padding key (its features are zeroed), or None.
        chunk_size: queries per chunk in the causal case (memory only; the result is the same).

    Returns:
        [B, H, Tq, Dh] in q's dtype, computed in float32.
    """
    qf = favor_features(q, projection, is_query=True)
    kf = _keep_keys(favor_features(k, projection, is_query=False), key_keep)
    vf = v.float()
    if causal:
        if q.shape[2] != k.shape[2]:
            raise ValueError(f"causal attention needs Tq == Tk, got {q.shape[2]} and {k.shape[2]}")
        out, _ = _causal_scan(qf, kf, vf, PerformerState.empty(qf, vf), chunk_size)
        return out.to(q.dtype)
    sums = kf.transpose(-1, -2) @ vf  # [B, H, M, Dh]
    normalizer = kf.sum(dim=2)  # [B, H, M]
    den = (qf @ normalizer.unsqueeze(-1)).squeeze(-1)
    out = (qf @ sums) / den.clamp_min(_TINY).unsqueeze(-1)
    return out.to(q.dtype)


@dataclass
class PerformerState:
    """What causal decoding keeps per layer instead of keys and values: constant memory per token.

    Attributes:
        sums: [B, H, M, Dh] float32, sum of phi(k) v^T over the tokens so far.
        normalizer: [B, H, M] float32, sum of phi(k) over the tokens so far.
        length: tokens folded in so far.
    """

    sums: Tensor
    normalizer: Tensor
    length: int

    @classmethod
    def empty(cls, features: Tensor, v: Tensor) -> PerformerState:
        """Zero sums for features [B, H, T, M] and values [B, H, T, Dh] (no token yet)."""
        batch, heads, _, num_features = features.shape
        sums = features.new_zeros(batch, heads, num_features, v.shape[-1])
        return cls(sums, features.new_zeros(batch, heads, num_features), 0)

    def reorder(self, index: Tensor) -> PerformerState:
        """Rows `index` [B_new] of the batch (beam search); returns a new state.

        Args:
            index: long [B_new], the parent batch row of each new row.

        Returns:
            A state of batch size B_new.
        """
        return PerformerState(
            self.sums.index_select(0, index), self.normalizer.index_select(0, index), self.length
        )


def favor_decode(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor,
    state: PerformerState | None,
    key_keep: Tensor | None = None,
) -> tuple[Tensor, PerformerState]:
    """Causal FAVOR+ for new tokens appended after `state`.

    Each new query sees every folded-in token plus the new tokens up to itself, so decoding a
    sequence in any pieces gives `favor_attention(causal=True)` over the whole of it (up to float
    rounding of the sums), at O(M * Dh) memory per (batch, head) whatever the length.

    Args:
        q: new queries [B, H, Tn, Dh], Tn >= 1.
        k: new keys [B, H, Tn, Dh].
        v: new values [B, H, Tn, Dh].
        projection: random directions [M, Dh], the same for every step.
        state: sums of the earlier tokens, or None before the first token.
        key_keep: bool [B, Tn] for the new tokens (False = padding), or None.

    Returns:
        (out [B, H, Tn, Dh] in q's dtype, the state with the new tokens folded in).
    """
    qf = favor_features(q, projection, is_query=True)
    kf = _keep_keys(favor_features(k, projection, is_query=False), key_keep)
    vf = v.float()
    if state is None:
        state = PerformerState.empty(qf, vf)
    out, state = _causal_scan(qf, kf, vf, state, chunk_size=_DECODE_CHUNK)
    return out.to(q.dtype), state
