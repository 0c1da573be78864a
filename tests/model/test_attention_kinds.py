"""model.attention (softmax | performer | sparse) and model.position=relative inside whole
models: every family builds and trains with each kind, the rest of the model unchanged;
decoders stay causal; cached and uncached decoding agree for every kind; relative biases
depend on distances alone."""

from __future__ import annotations

import pytest
import torch

from model import GPT, KVCache, Seq2Seq, build_model
from model.attention_kinds import PerformerAttention, SparseAttention, performer_layers
from model.positions import PositionEncoding, relative_bucket

# Small blocks so that the patterns cut into 16-token sequences.
SPARSE = {"attention": "sparse", "sparse": {"pattern": "strided", "block_size": 4, "window": 2,
                                             "stride": 2}}  # fmt: skip
KINDS = {
    "performer": {"attention": "performer", "performer": {"features": 64, "chunk_size": 4}},
    "sparse": SPARSE,
    "sparse-local-relative": {
        **SPARSE, "sparse": {**SPARSE["sparse"], "pattern": "local"}, "position": "relative"
    },
    "softmax-relative": {"position": "relative"},
}  # fmt: skip
FAMILIES = ["gpt", "bert", "vit", "seq2seq"]


def _config(small_config, family: str, kind: str, **extra):
    options = dict(KINDS[kind])
    if family == "vit" and options.get("attention") == "sparse":
        options["sparse"] = {**options["sparse"], "block_size": 2}  # 16 patches + CLS
    return small_config(family, **options, **extra)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_with_each_kind(small_config, make_batch, family, kind):
    config = _config(small_config, family, kind)
    torch.manual_seed(0)
    model = build_model(config)
    # Only the attention changed: the same parameters as exact softmax attention, in
    # the same order (which ZeRO's flat partitions and saved optimizer states need).
    plain = build_model(config.replace(attention="softmax"))
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    batch = make_batch(config, seq_len=16 if family != "vit" else 8)
    first = model.compute_loss(batch).loss
    first.backward()
    assert torch.isfinite(first)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):  # it can fit one batch: the kind passes gradients that learn
        optim.zero_grad()
        model.compute_loss(batch).loss.backward()
        optim.step()
    assert model.compute_loss(batch).loss < 0.7 * first.detach()


@pytest.mark.parametrize("kind", ["performer", "sparse", "sparse-local-relative"])
def test_the_kind_is_the_one_configured(small_config, kind):
    model = build_model(_config(small_config, "seq2seq", kind))
    want = PerformerAttention if kind == "performer" else SparseAttention
    decoder = model.decoder.blocks[0]
    assert isinstance(decoder.attn.kernel, want)
    # Cross-attention: FAVOR+ under performer, exact under sparse (no pattern across
    # two sequences).
    assert isinstance(decoder.cross_attn.kernel, PerformerAttention) == (kind == "performer")
    assert isinstance(model.encoder.blocks[0].attn.kernel, want)


@pytest.mark.parametrize("kind", ["performer", "sparse", "sparse-local-relative"])
def test_a_later_token_never_changes_earlier_outputs(small_config, kind):
    torch.manual_seed(0)
    model = GPT(_config(small_config, "gpt", kind)).eval()
    ids = torch.randint(64, (2, 16))
    changed = ids.clone()
    changed[:, 9:] = torch.randint(64, (2, 7))
    with torch.no_grad():
        before, after = model(ids), model(changed)
    assert torch.equal(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])


@pytest.mark.parametrize("kind", list(KINDS))
def test_cached_generation_equals_recomputation(small_config, kind):
    torch.manual_seed(0)
    model = GPT(_config(small_config, "gpt", kind, init_std=0.2))
    prompt = torch.randint(64, (2, 5))
    cached, cached_logits = model.generate(prompt, 10, temperature=0, return_logits=True)
    full, full_logits = model.generate(
        prompt, 10, temperature=0, use_cache=False, return_logits=True
    )
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-4, rtol=1e-4)


def test_a_performer_cache_holds_sums_not_keys(small_config):
    model = GPT(_config(small_config, "gpt", "performer")).eval()
    cache = KVCache(model.config.n_layer)
    with torch.no_grad():
        model(torch.randint(64, (1, 3)), kv_cache=cache)
        size = cache.layers[0].sums.shape
        for _ in range(6):
            model(torch.randint(64, (1, 1)), kv_cache=cache)
    assert cache.seq_len == 9
    assert cache.layers[0].sums.shape == size  # constant memory per generated token


@pytest.mark.parametrize("kind", ["performer", "sparse", "sparse-local-relative"])
def test_seq2seq_cached_decoding_equals_uncached(small_config, kind):
    torch.manual_seed(0)
    model = Seq2Seq(_config(small_config, "seq2seq", kind, max_seq_len=24, init_std=0.3))
    src = torch.randint(3, 64, (3, 9))
    mask = torch.ones_like(src)
    mask[0, 5:] = 0
    ids = {"bos_id": 1, "eos_id": 2, "pad_id": 0}
    for decode in (model.greedy, model.beam_search):
        cached = decode(src, mask, max_len_a=1.0, max_len_b=3, **ids)
        assert torch.equal(cached, decode(src, mask, max_len_a=1.0, max_len_b=3,
                                          use_cache=False, **ids))  # fmt: skip


def test_relative_biases_depend_on_distance_alone():
    torch.manual_seed(0)
    positions = PositionEncoding("relative", 64, 32, 4, relative_buckets=16,
                                 relative_max_distance=40)  # fmt: skip
    torch.nn.init.normal_(positions.relative.weight)
    q, k = torch.arange(10), torch.arange(12)
    base = positions.attention_bias(q, k)
    for shift in (1, 7, 500):  # shifting every position leaves every score unchanged
        assert torch.equal(positions.attention_bias(q + shift, k + shift), base)
    assert base.shape == (1, 4, 10, 12)
    # Both directions have their own buckets; near distances one each; far ones shared.
    rel = torch.arange(-100, 101)
    bucket = relative_bucket(rel, 16, 40)
    assert bucket.min() == 0 and bucket.max() == 15
    assert len(set(bucket[(rel >= 0) & (rel < 4)].tolist())) == 4
    assert set(bucket[rel > 0].tolist()).isdisjoint(bucket[rel < 0].tolist())
    assert torch.all(bucket[rel >= 40] == bucket[rel == 40])
    assert torch.all(bucket[100:].diff() >= 0)  # further never maps nearer


def test_relative_positions_reach_sparse_attention_too(small_config):
    torch.manual_seed(0)
    model = GPT(_config(small_config, "gpt", "sparse-local-relative")).eval()
    ids = torch.randint(64, (1, 16))
    with torch.no_grad():
        before = model(ids)
        model.positions.relative.weight.add_(torch.randn_like(model.positions.relative.weight))
        after = model(ids)
    assert not torch.allclose(before, after)


def test_performer_features_are_in_the_state_dict_and_redraw_in_place(small_config):
    model = GPT(_config(small_config, "gpt", "performer"))
    layers = performer_layers(model)
    assert len(layers) == model.config.n_layer
    key = "transformer.blocks.0.attn.kernel.projection"
    before = model.state_dict()[key].clone()
    assert before.shape == (64, model.config.head_dim)
    layers[0].redraw(1234)
    after = model.state_dict()[key]
    assert not torch.equal(before, after)
    layers[1].redraw(1234)
    assert torch.equal(layers[1].projection, after)  # a function of the seed alone


def test_the_config_refuses_what_cannot_work(small_config):
    with pytest.raises(ValueError, match="performer cannot use model.position=alibi"):
        small_config("gpt", attention="performer", position="alibi")
    with pytest.raises(ValueError, match="model.sparse.block_size must be >= 1"):
        small_config("gpt", attention="sparse", sparse={"block_size": 0})
    with pytest.raises(ValueError, match="model.attention must be one of"):
        small_config("gpt", attention="linear")
    assert small_config("gpt", attention="performer").performer_features == round(8 * 2.0794)


def test_flops_count_the_keys_each_kind_attends(small_config):
    """MFU's attention term follows the kind: 12 * L * d * (keys a query is scored against)."""
    with torch.device("meta"):
        models = {
            kind: GPT(_config(small_config, "gpt", kind, max_seq_len=4096))
            for kind in ("softmax-relative", "performer", "sparse", "sparse-local-relative")
        }
    flops = {kind: model.training_flops_per_unit() for kind, model in models.items()}
    per_key = 12 * 2 * 32  # 12 * n_layer * d_model
    # Performer: 2 * features (64); local: window 2 x block 4; strided adds 1024 / 2 summaries.
    visible = {"softmax-relative": 4096, "performer": 128, "sparse-local-relative": 8,
               "sparse": 4 * (2 + 512)}  # fmt: skip
    weights = {kind: flops[kind] - per_key * visible[kind] for kind in flops}
    assert len(set(weights.values())) == 1, weights  # the 6 * N term is the same for all
