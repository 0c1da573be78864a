"""KV-cache decoding equals recomputation; sampling respects top-k / top-p."""

from __future__ import annotations

import pytest
import torch

from model import GPT, KVCache
from model.sampling import filter_logits, sample_next_token

CACHED_POSITIONS = ["learned", "sinusoidal", "rotary", "alibi", "none"]


@pytest.mark.parametrize("prompt_len", [5, 14])
@pytest.mark.parametrize("position", CACHED_POSITIONS)
def test_cached_greedy_generation_equals_recomputation(small_config, position, prompt_len):
    torch.manual_seed(0)
    model = GPT(small_config("gpt", position=position, max_seq_len=12))
    prompt = torch.randint(64, (2, prompt_len))
    # Both prompt lengths run past max_seq_len=12, covering crop-and-rebuild;
    # the 14-token prompt is itself cropped on the first step.
    cached, cached_logits = model.generate(prompt, 15, temperature=0, return_logits=True)
    full, full_logits = model.generate(
        prompt, 15, temperature=0, use_cache=False, return_logits=True
    )
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-5, rtol=1e-5)
    assert cached.shape == (2, prompt_len + 15) and torch.equal(cached[:, :prompt_len], prompt)


@pytest.mark.parametrize("position", CACHED_POSITIONS)
def test_chunked_prefill_with_cache_matches_full_forward(small_config, position):
    """Several new tokens against a non-empty cache need an offset causal mask."""
    torch.manual_seed(0)
    model = GPT(small_config("gpt", position=position)).eval()
    ids = torch.randint(64, (2, 11))
    cache = KVCache(model.config.n_layer)
    pieces = [model(ids[:, :4], kv_cache=cache), model(ids[:, 4:9], kv_cache=cache)]
    pieces.append(model(ids[:, 9:], kv_cache=cache))
    assert cache.seq_len == 11
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(ids), atol=1e-5, rtol=1e-5)


def test_forward_rejects_sequences_longer_than_max_seq_len(small_config):
    model = GPT(small_config("gpt", max_seq_len=8))
    with pytest.raises(ValueError, match="model.max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_top_k_and_top_p_only_sample_allowed_tokens():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    logits = probs.log()
    gen = torch.Generator().manual_seed(0)

    def draws(**kwargs):
        return {int(sample_next_token(logits, generator=gen, **kwargs)) for _ in range(300)}

    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.6) == {0, 1}  # 0.5 < 0.6, 0.5 + 0.2 >= 0.6
    assert draws(top_p=0.45) == {0}  # the most likely token is always kept
    assert draws(top_k=4, top_p=0.9) == {0, 1, 2, 3}
    assert draws() == {0, 1, 2, 3, 4}
    assert draws(temperature=0) == {0}


def test_filter_logits_works_row_by_row():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, True, False, False], [False, False, True, True]]


def test_sampling_arguments_are_validated():
    logits = torch.zeros(1, 4)
    for kwargs in ({"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"temperature": -1.0}):
        with pytest.raises(ValueError):
            sample_next_token(logits, **kwargs)


def test_generated_tokens_stay_in_the_top_k_of_each_step(small_config):
    torch.manual_seed(0)
    model = GPT(small_config("gpt"))
    prompt = torch.randint(64, (4, 3))
    gen = torch.Generator().manual_seed(1)
    tokens, logits = model.generate(prompt, 10, top_k=3, generator=gen, return_logits=True)
    allowed = logits.topk(3, dim=-1).indices
    new = tokens[:, 3:]
    assert (allowed == new[..., None]).any(dim=-1).all()


def test_top_p_generation_stays_in_the_nucleus(small_config):
    torch.manual_seed(0)
    model = GPT(small_config("gpt"))
    # Sharpen the distribution so the nucleus is a strict subset of the vocabulary.
    tokens, logits = model.generate(
        torch.randint(64, (4, 3)),
        10,
        temperature=0.05,
        top_p=0.5,
        generator=torch.Generator().manual_seed(2),
        return_logits=True,
    )
    for row in range(4):
        for step in range(10):
            allowed = torch.isfinite(filter_logits(logits[row, step : step + 1] / 0.05, top_p=0.5))
            assert allowed[0, tokens[row, 3 + step]]


def test_seeded_sampling_is_reproducible(small_config):
    torch.manual_seed(0)
    model = GPT(small_config("gpt"))
    prompt = torch.randint(64, (2, 4))

    def run(seed, **kwargs):
        gen = torch.Generator().manual_seed(seed)
        return model.generate(prompt, 12, top_k=20, top_p=0.95, generator=gen, **kwargs)

    assert torch.equal(run(7), run(7))
    assert torch.equal(run(7), run(7, use_cache=False))
    assert not torch.equal(run(7), run(8))


def test_generate_restores_training_mode(small_config):
    model = GPT(small_config("gpt", dropout=0.5)).train()
    prompt = torch.zeros(1, 2, dtype=torch.long)
    # Eval mode inside: with dropout active two greedy runs would differ.
    assert torch.equal(
        model.generate(prompt, 6, temperature=0), model.generate(prompt, 6, temperature=0)
    )
    assert model.training


def test_non_finite_logits_are_refused_not_sampled():
    logits = torch.tensor([[0.0, float("nan"), 1.0]])
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match="not finite"):
            sample_next_token(logits, temperature=temperature)
