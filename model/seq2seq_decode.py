"""Greedy and beam-search decoding for `Seq2Seq`, with or without a cache.

The source is encoded once. With a cache each step feeds only the newest
target token: the decoder self-attention appends its key/value to a KVCache,
and each cross-attention projects the encoder output to keys/values on the
first step and reuses them. Without one every step reruns the decoder over the
whole target prefix; both paths give the same tokens.

Output format of both: token ids [B, L] without the BOS, each row ending with
EOS (forced as the last token when a row reaches its length limit) and padded
with pad_id after it. A row's limit is floor(max_len_a * source_len + max_len_b)
tokens (EOS included; source_len counts its unpadded tokens), at most
model.max_seq_len.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from model.attention import KVCache

# The model is a `model.seq2seq.Seq2Seq`; importing it here would be a cycle.
Seq2Seq = Any


@dataclass
class DecoderCache:
    """Decoding state of one batch of sources.

    Args:
        self_attn: the decoder self-attention's keys/values, one more per step.
        cross_attn: each decoder layer's keys/values of the encoder output,
            projected on the first step and reused afterwards.
    """

    self_attn: KVCache
    cross_attn: KVCache

    @classmethod
    def empty(cls, n_layer: int) -> DecoderCache:
        return cls(KVCache(n_layer), KVCache(n_layer))


@contextmanager
def _inference(model: Seq2Seq) -> Iterator[None]:
    """Eval mode without autograd; the training mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def max_lengths(
    model: Seq2Seq, input_ids: Tensor, attention_mask: Tensor | None, a: float, b: int
) -> Tensor:
    """Per-source limit [B] on generated tokens: floor(a * source_len + b), in [1, max_seq_len]."""
    if attention_mask is None:
        source_len = torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device)
    else:
        source_len = attention_mask.sum(dim=1)
    limit = torch.floor(a * source_len.double() + b).long()
    return limit.clamp(min=1, max=model.config.max_seq_len)


def _next_logits(
    model: Seq2Seq,
    tokens: Tensor,
    memory: Tensor,
    attention_mask: Tensor | None,
    cache: DecoderCache | None,
) -> Tensor:
    """float32 logits [N, V] of the token after tokens [N, t] (BOS first)."""
    if cache is None:
        return model.decode(tokens, memory, attention_mask)[:, -1].float()
    return model.decode(tokens[:, -1:], memory, attention_mask, cache=cache)[:, -1].float()


def _check_ids(model: Seq2Seq, bos_id: int, eos_id: int, pad_id: int) -> None:
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
        if not 0 <= value < model.config.vocab_size:
            raise ValueError(f"{name} must be in [0, {model.config.vocab_size}), got {value}")
    if pad_id == eos_id:
        raise ValueError("pad_id and eos_id must differ: padding is never generated")


def greedy(
    model: Seq2Seq,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_len_a: float = 1.0,
    max_len_b: int = 50,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    use_cache: bool = True,
) -> Tensor:
    """The most likely token at each step, in eval mode (restored afterwards).

    Args:
        input_ids: [B, S] source ids.
        attention_mask: [B, S] source mask, 1 = token, 0 = padding.
        max_len_a: length limit per source token (the paper: 1).
        max_len_b: length limit offset (the paper: 50).
        bos_id: the token every target starts from.
        eos_id: the token that ends a target.
        pad_id: filler after EOS; never generated.
        use_cache: reuse keys/values instead of rerunning the decoder.

    Returns:
        tokens [B, L] in the format of the module docstring.
    """
    _check_ids(model, bos_id, eos_id, pad_id)
    with _inference(model):
        memory = model.encode(input_ids, attention_mask)
        limits = max_lengths(model, input_ids, attention_mask, max_len_a, max_len_b)
        tokens = input_ids.new_full((input_ids.shape[0], 1), bos_id)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        cache = DecoderCache.empty(model.config.decoder_layers) if use_cache else None
        for step in range(int(limits.max())):
            logits = _next_logits(model, tokens, memory, attention_mask, cache)
            logits[:, pad_id] = float("-inf")
            token = logits.argmax(dim=-1)
            token = torch.where(step + 1 >= limits, eos_id, token)
            token = torch.where(done, pad_id, token)
            tokens = torch.cat((tokens, token[:, None].to(tokens.dtype)), dim=1)
            done |= token == eos_id
            if bool(done.all()):
                break
        return tokens[:, 1:]


def beam_search(
    model: Seq2Seq,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_len_a: float = 1.0,
    max_len_b: int = 50,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    use_cache: bool = True,
) -> Tensor:
    """Beam search (the paper: 4 beams, length penalty 0.6), in eval mode.

    Each step extends every live beam by every token and keeps the 2 * beam_size
    best continuations by summed log-probability; those ending in EOS among the
    best beam_size are finished, the best beam_size others live on. A source
    is done once it has beam_size finished hypotheses or reaches its length
    limit. The answer is the finished hypothesis of the highest
    score / lp(length), lp the GNMT penalty ((5 + length) / 6) ** length_penalty
    the paper used (length counts EOS; length_penalty=0: plain log-probability).

    Args:
        input_ids: [B, S] source ids.
        attention_mask: [B, S] source mask, 1 = token, 0 = padding.
        beam_size: hypotheses kept per source.
        length_penalty: alpha of the length penalty.
        max_len_a: length limit per source token.
        max_len_b: length limit offset.
        bos_id: the token every target starts from.
        eos_id: the token that ends a target.
        pad_id: filler after EOS; never generated.
        use_cache: reuse keys/values instead of rerunning the decoder.

    Returns:
        tokens [B, L] in the format of the module docstring.
    """
    _check_ids(model, bos_id, eos_id, pad_id)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    b, k, v = input_ids.shape[0], beam_size, model.config.vocab_size
    device = input_ids.device
    with _inference(model):
        limits = max_lengths(model, input_ids, attention_mask, max_len_a, max_len_b)
        memory = model.encode(input_ids, attention_mask).repeat_interleave(k, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(k, dim=0)
        tokens = input_ids.new_full((b * k, 1), bos_id)  # row s * k + j: beam j of source s
        scores = torch.zeros(b, k, device=device)
        scores[:, 1:] = float("-inf")  # all beams start equal: expand only the first
        finished: list[list[tuple[float, Tensor]]] = [[] for _ in range(b)]
        done = [False] * b
        first_row = torch.arange(b, device=device)[:, None] * k
        cache = DecoderCache.empty(model.config.decoder_layers) if use_cache else None
        for step in range(int(limits.max())):
            logp = _next_logits(model, tokens, memory, attention_mask, cache).log_softmax(dim=-1)
            logp = logp.view(b, k, v)
            logp[..., pad_id] = float("-inf")
            last = (step + 1 >= limits)[:, None, None]
            only_eos = torch.full_like(logp, float("-inf"))
            only_eos[..., eos_id] = logp[..., eos_id]
            logp = torch.where(last, only_eos, logp)
            top_scores, top = (scores[:, :, None] + logp).view(b, k * v).topk(2 * k, dim=1)
            top_beam, top_token = top // v, top % v
            is_eos = top_token == eos_id
            penalty = ((5.0 + step + 1) / 6.0) ** length_penalty
            ends = is_eos[:, :k] & torch.isfinite(top_scores[:, :k])
            for s, j in ends.nonzero().tolist():  # row-major: best ranks first
                if not done[s] and len(finished[s]) < k:
                    parent = tokens[s * k + top_beam[s, j], 1:]
                    hypothesis = torch.cat((parent, parent.new_tensor([eos_id])))
                    finished[s].append((top_scores[s, j].item() / penalty, hypothesis))
            for s, at_limit in enumerate((step + 1 >= limits).tolist()):
                done[s] = done[s] or at_limit or len(finished[s]) >= k
            if all(done):
                break
            # At most k of the 2k candidates end in EOS: k others always remain.
            scores, keep = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)
            rows = (first_row + top_beam.gather(1, keep)).view(-1)
            next_token = top_token.gather(1, keep).view(-1, 1).to(tokens.dtype)
            tokens = torch.cat((tokens[rows], next_token), dim=1)
            if cache is not None:
                # Beams move only within their own source, whose cross-attention
                # keys/values every beam shares: only the self-attention cache moves.
                cache.self_attn.reorder(rows)
        best = [max(hyps, key=lambda h: h[0])[1] for hyps in finished]
        return torch.nn.utils.rnn.pad_sequence(best, batch_first=True, padding_value=pad_id)
