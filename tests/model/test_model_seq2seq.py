"""The encoder-decoder Transformer: masks, decoding (cached = uncached, beam search
against brute force), learning a reverse task, the paper's parameter count, the loss."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, Seq2Seq, analytic_param_count, build_model
from model.losses import cross_entropy_with_stats, label_smoothed_cross_entropy

POSITIONS = ["learned", "sinusoidal", "rotary", "alibi", "none"]
PAD, BOS, EOS = 0, 1, 2
IDS = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)


def _model(small_config, seed: int = 0, **overrides) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(small_config("seq2seq", **overrides)).eval()


def _change(ids: torch.Tensor, j: int, vocab: int = 64) -> torch.Tensor:
    changed = ids.clone()
    changed[:, j] = (ids[:, j] + 1) % vocab
    return changed


def _padded_sources(lengths, width, seed=0, vocab=64):
    """Right-padded sources: random real tokens (>= 3), random junk in the padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("position", POSITIONS)
def test_decoder_is_causal(small_config, position, norm):
    model = _model(small_config, position=position, norm=norm)
    src = torch.randint(64, (2, 7))
    tgt = torch.randint(64, (2, 9))
    before, after = model(src, tgt), model(src, _change(tgt, 5))
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


@pytest.mark.parametrize("position", POSITIONS)
def test_encoder_sees_both_sides(small_config, position):
    model = _model(small_config, position=position)
    src = torch.randint(64, (1, 10))
    base = model.encode(src)[:, 5]
    for j in (2, 8):  # one token to the left, one to the right
        assert not torch.allclose(model.encode(_change(src, j))[:, 5], base)


@pytest.mark.parametrize("position", POSITIONS)
def test_cross_attention_reads_the_source(small_config, position):
    model = _model(small_config, position=position)
    src, tgt = torch.randint(64, (1, 8)), torch.randint(64, (1, 6))
    before, after = model(src, tgt), model(_change(src, 6), tgt)
    # Every target position, the first included, sees the whole source.
    assert all(not torch.allclose(before[:, i], after[:, i]) for i in range(6))


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("position", POSITIONS)
def test_source_padding_does_not_change_the_real_tokens(small_config, position, norm):
    model = _model(small_config, position=position, norm=norm)
    src, mask = _padded_sources([5, 9], 9)
    tgt = torch.randint(64, (2, 6))
    memory = model.encode(src, mask)
    logits = model(src, tgt, mask)
    alone = src[:1, :5]  # the short source on its own, no padding, no mask
    torch.testing.assert_close(memory[:1, :5], model.encode(alone), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[:1], model(alone, tgt[:1]), atol=1e-5, rtol=1e-4)
    junk = src.clone()
    junk[0, 5:] = torch.randint(3, 64, (4,))  # what the padding holds is never read
    torch.testing.assert_close(model(junk, tgt, mask), logits)
    assert torch.isfinite(memory).all()


def test_target_padding_mask_leaves_the_real_targets_alone(small_config):
    model = _model(small_config, position="alibi")
    src, tgt = torch.randint(64, (2, 7)), torch.randint(64, (2, 8))
    target_mask = torch.ones_like(tgt)
    target_mask[0, 5:] = 0
    masked = model(src, tgt, decoder_attention_mask=target_mask)
    torch.testing.assert_close(masked[0, :5], model(src, tgt)[0, :5])
    torch.testing.assert_close(masked[1], model(src, tgt)[1])


def _row_ends(tokens: torch.Tensor) -> list[int]:
    """Index of each row's EOS; asserts the output format (EOS once, then PAD)."""
    ends = []
    for row in tokens.tolist():
        assert EOS in row, row
        end = row.index(EOS)
        assert all(t == PAD for t in row[end + 1 :]), row
        assert PAD not in row[:end], row
        ends.append(end)
    return ends


@pytest.mark.parametrize("position", POSITIONS)
def test_cached_greedy_equals_uncached(small_config, position):
    model = _model(small_config, position=position, max_seq_len=24)
    src, mask = _padded_sources([4, 9, 6], 9)
    cached = model.greedy(src, mask, max_len_a=1.0, max_len_b=3, **IDS)
    assert torch.equal(
        cached, model.greedy(src, mask, max_len_a=1.0, max_len_b=3, use_cache=False, **IDS)
    )
    # This random model never chooses EOS: each row stops at its own limit, a * length + b.
    assert _row_ends(cached) == [4 + 3 - 1, 9 + 3 - 1, 6 + 3 - 1]


@pytest.mark.parametrize("position", POSITIONS)
def test_cached_beam_search_equals_uncached(small_config, position):
    model = _model(small_config, position=position, init_std=0.3)
    src, mask = _padded_sources([4, 8, 6], 8, seed=1)
    args = dict(beam_size=4, length_penalty=0.6, max_len_a=1.0, max_len_b=2, **IDS)
    cached = model.beam_search(src, mask, **args)
    assert torch.equal(cached, model.beam_search(src, mask, use_cache=False, **args))
    assert all(end < limit for end, limit in zip(_row_ends(cached), [6, 10, 8], strict=True))


def test_beam_of_one_is_greedy(small_config):
    model = _model(small_config, init_std=0.3)
    src, mask = _padded_sources([3, 7, 5, 7], 7, seed=2)
    greedy = model.greedy(src, mask, max_len_b=4, **IDS)
    assert torch.equal(model.beam_search(src, mask, beam_size=1, max_len_b=4, **IDS), greedy)


def test_cached_beam_search_equals_uncached_when_beams_compete(reverse_models):
    """On a half-trained model the beams reorder and prune: the cache must follow."""
    model = reverse_models["half"]
    held_out = _reverse_batch(8, torch.Generator().manual_seed(5))
    src, mask = held_out["input_ids"], held_out["attention_mask"]
    args = dict(max_len_a=1.0, max_len_b=1, **IDS)
    beam = model.beam_search(src, mask, beam_size=4, **args)
    assert torch.equal(beam, model.beam_search(src, mask, beam_size=4, use_cache=False, **args))
    greedy = model.greedy(src, mask, **args)
    assert torch.equal(greedy, model.greedy(src, mask, use_cache=False, **args))
    width = min(beam.shape[1], greedy.shape[1])
    assert (beam[:, :width] != greedy[:, :width]).any(dim=1).sum() >= 2
    _row_ends(beam)


def test_cross_attention_projects_the_source_once_per_decode(small_config):
    model = _model(small_config, n_decoder_layer=3)
    calls = []
    for block in model.decoder.blocks:
        block.cross_attn.kv.register_forward_hook(lambda *_: calls.append(1))
    src = torch.randint(3, 64, (2, 5))
    out = model.greedy(src, max_len_a=0.0, max_len_b=6, **IDS)
    assert out.shape[1] == 6 and len(calls) == 3  # once per layer, not once per step
    calls.clear()
    model.greedy(src, max_len_a=0.0, max_len_b=6, use_cache=False, **IDS)
    assert len(calls) == 3 * 6


def _sequence_logprob(model: Seq2Seq, src: torch.Tensor, target: list[int]) -> float:
    tgt = torch.tensor([[BOS, *target[:-1]]])
    logp = model(src, tgt)[0].float().log_softmax(-1)
    return logp[torch.arange(len(target)), torch.tensor(target)].sum().item()


def test_wide_beam_search_finds_the_best_sequence(small_config):
    """A beam wider than every prefix set is exhaustive: brute force must agree."""
    model = _model(small_config, vocab_size=5, init_std=0.5)
    src = torch.tensor([[3, 4, 4, 3]])
    max_len, words = 4, [BOS, 3, 4]  # every token but PAD (never generated) and EOS
    candidates = [
        [*prefix, EOS] for n in range(max_len) for prefix in itertools.product(words, repeat=n)
    ]
    logprobs = [_sequence_logprob(model, src, c) for c in candidates]
    winners = []
    # Here 0.6 (the paper's) keeps the shortest answer best under the GNMT
    # penalty (not under length ** 0.6); 5.0 makes the longest win.
    for length_penalty in (0.6, 5.0):
        out = model.beam_search(
            src,
            beam_size=64,
            length_penalty=length_penalty,
            max_len_a=0.0,
            max_len_b=max_len,
            **IDS,
        )
        scores = [
            logprob / ((5 + len(c)) / 6) ** length_penalty
            for logprob, c in zip(logprobs, candidates, strict=True)
        ]
        best = candidates[scores.index(max(scores))]
        assert out[0].tolist() == best
        winners.append(best)
    assert len(winners[0]) < len(winners[1])


def test_decoding_validates_its_arguments(small_config):
    model = _model(small_config)
    src = torch.randint(3, 64, (1, 4))
    with pytest.raises(ValueError, match="beam_size"):
        model.beam_search(src, beam_size=0, **IDS)
    with pytest.raises(ValueError, match="pad_id"):
        model.greedy(src, bos_id=BOS, eos_id=EOS, pad_id=EOS)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.randint(64, (1, 17)), torch.randint(64, (1, 4)))


def test_half_precision_weights_decode(small_config):
    model = _model(small_config, position="rotary").to(torch.bfloat16)
    src, mask = _padded_sources([3, 6], 6)
    assert torch.isfinite(model(src, torch.randint(64, (2, 4)), mask).float()).all()
    assert model.beam_search(src, mask, beam_size=2, max_len_b=3, **IDS).shape[0] == 2


def _reverse_batch(n: int, gen: torch.Generator, vocab: int = 20, lo: int = 6, hi: int = 10):
    """Sources of lo..hi tokens from 3..vocab-1; targets the reversed source + EOS."""
    src = torch.full((n, hi), PAD)
    dec = torch.full((n, hi + 1), PAD)
    labels = torch.full((n, hi + 1), -100)
    for i, length in enumerate(torch.randint(lo, hi + 1, (n,), generator=gen).tolist()):
        seq = torch.randint(3, vocab, (length,), generator=gen)
        src[i, :length] = seq
        dec[i, 0], dec[i, 1 : length + 1] = BOS, seq.flip(0)
        labels[i, :length], labels[i, length] = seq.flip(0), EOS
    mask = (src != PAD).long()
    return {"input_ids": src, "attention_mask": mask, "decoder_input_ids": dec, "labels": labels}


@pytest.fixture(scope="module")
def reverse_models() -> dict[str, Seq2Seq]:
    """A small model trained to reverse sequences: after 160 steps ("half", unsure,
    so that beam search and greedy differ) and after 300 ("trained"). Post-LN,
    sinusoidal, label smoothing 0.1, as the presets; about 10 s on one core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see conftest.one_torch_thread (function-scoped)
    torch.manual_seed(0)
    model = build_model(
        "transformer-tiny", n_layer=2, n_decoder_layer=2, d_model=64, n_head=4,
        vocab_size=20, max_seq_len=16, dropout=0.0,
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.98))
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 50))
    gen = torch.Generator().manual_seed(1)
    models = {}
    for step in range(300):
        if step == 160:
            models["half"] = copy.deepcopy(model).eval()
        loss = model.compute_loss(_reverse_batch(64, gen), accuracy=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        warmup.step()
    torch.set_num_threads(threads)
    models["trained"] = model.eval()
    return models


def test_learns_to_reverse_sequences(reverse_models):
    model = reverse_models["trained"]
    held_out = _reverse_batch(200, torch.Generator().manual_seed(99))
    out = model.greedy(
        held_out["input_ids"], held_out["attention_mask"], max_len_a=1.0, max_len_b=1, **IDS
    )
    want = held_out["labels"].masked_fill(held_out["labels"] == -100, PAD)
    exact = (out == want[:, : out.shape[1]]).all(dim=1) & (want[:, out.shape[1] :] == PAD).all(1)
    assert exact.float().mean().item() >= 0.95
    assert model.compute_loss(held_out).metrics["accuracy"].item() >= 0.99


def test_transformer_base_has_the_papers_parameter_count():
    with torch.device("meta"):
        model = build_model("transformer-base")
    d, ffn, vocab = 512, 2048, 37000
    attention = 4 * d * d + 4 * d  # q, k, v, output, with biases
    mlp = 2 * d * ffn + ffn + d
    encoder = 6 * (attention + mlp + 2 * 2 * d)  # two LayerNorms per block
    decoder = 6 * (2 * attention + mlp + 3 * 2 * d)  # plus cross-attention and its LayerNorm
    # One 37,000 x 512 embedding serves source, target and output (the paper's
    # WMT En-De joint BPE vocabulary); post-LN, so no final LayerNorms.
    assert vocab * d + encoder + decoder == 63_082_496
    assert model.num_params() == 63_082_496  # "65M" in the paper's table 3
    assert analytic_param_count(model.config) == 63_082_496
    assert model.lm_head.weight is model.embed.weight and model.source_embed is None
    with torch.device("meta"):
        unshared = build_model("transformer-base", share_embeddings=False)
    assert unshared.num_params() == 63_082_496 + vocab * d
    assert unshared.num_params(non_embedding=True) == 63_082_496  # the source table is a lookup


def test_flops_count_target_tokens():
    with torch.device("meta"):
        model = build_model("transformer-base")
    assert model.flops_unit == "target_token"
    # Encoder self-attention, decoder self- and cross-attention: 6 + 2 * 6 layers.
    expected = 6 * 63_082_496 + 12 * (6 + 2 * 6) * 512 * 1024
    assert model.training_flops_per_unit() == expected


def test_label_smoothing_zero_is_plain_cross_entropy(small_config, make_batch):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    labels = torch.randint(11, (3, 5))
    labels[0, :2] = -100
    loss, nll, count, correct = label_smoothed_cross_entropy(logits, labels, 0.0)
    plain, plain_count, plain_correct = cross_entropy_with_stats(logits, labels)
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(nll, plain)
    assert count == plain_count == 13 and correct == plain_correct
    # With smoothing the loss is torch's smoothed cross entropy; the NLL stays the plain one.
    smoothed, nll, _, _ = label_smoothed_cross_entropy(logits, labels, 0.1)
    flat = logits.reshape(-1, 11), labels.reshape(-1)
    torch.testing.assert_close(smoothed, F.cross_entropy(*flat, label_smoothing=0.1))
    torch.testing.assert_close(nll, plain)

    model = _model(small_config, label_smoothing=0.0)
    batch = make_batch(model.config)
    out = model.compute_loss(batch)
    expected = F.cross_entropy(out.logits.flatten(0, 1), batch["labels"].flatten())
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.metrics["nll_loss"], expected)
    assert set(out.metrics) == {"nll_loss", "num_tokens", "accuracy"}
    assert out.metrics["num_tokens"] == batch["labels"].ne(-100).sum()


def test_all_ignored_targets_give_zero_loss():
    loss, nll, count, _ = label_smoothed_cross_entropy(
        torch.randn(2, 3, 7, requires_grad=True), torch.full((2, 3), -100), 0.1
    )
    assert loss.item() == 0.0 and nll.item() == 0.0 and count.item() == 0
    loss.backward()


def test_embeddings_are_scaled_and_stacks_follow_the_norm(small_config):
    model = _model(small_config, norm="pre", n_decoder_layer=3, position="none")
    assert len(model.encoder.blocks) == 2 and len(model.decoder.blocks) == 3
    assert isinstance(model.encoder.ln_f, torch.nn.LayerNorm)
    assert isinstance(model.decoder.ln_f, torch.nn.LayerNorm)
    post = _model(small_config, norm="post")
    assert isinstance(post.encoder.ln_f, torch.nn.Identity)
    ids = torch.randint(64, (1, 4))
    scaled = model._embed(model.embed, model.encoder_positions, ids, 0)
    torch.testing.assert_close(scaled, model.embed(ids) * math.sqrt(32))


def test_config_validates_the_seq2seq_fields():
    assert ModelConfig(family="seq2seq", n_layer=4).decoder_layers == 4
    assert ModelConfig(family="seq2seq", n_layer=4, n_decoder_layer=2).decoder_layers == 2
    with pytest.raises(ValueError, match="model.label_smoothing"):
        ModelConfig(family="seq2seq", label_smoothing=1.0)
    with pytest.raises(ValueError, match="model.n_decoder_layer"):
        ModelConfig(family="seq2seq", n_decoder_layer=-1)
