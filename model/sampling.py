"""Next-token sampling: temperature, top-k and nucleus (top-p) filtering."""

from __future__ import annotations

import torch
from torch import Tensor


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set logits outside the top-k / top-p sets to -inf.

    Args:
        logits: [B, V] scores.
        top_k: keep the k highest scores (ties at the k-th score are kept).
        top_p: keep the smallest set of highest-probability tokens whose total
            probability reaches top_p; the most likely token is always kept.
    """
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row from the last-position logits.

    Args:
        logits: [B, V] scores for the next token.
        temperature: divides the logits; 0 picks the argmax (greedy).
        top_k: see `filter_logits`.
        top_p: see `filter_logits`.
        generator: random source for reproducible sampling.

    Returns:
        long tensor [B, 1].
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits.float()
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("the model's logits are not finite (inf or NaN in its weights)")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)
