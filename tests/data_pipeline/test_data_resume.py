"""Exact resume (state_dict / load_state_dict) and elastic resume across world sizes."""

from __future__ import annotations

import pytest
import torch
from dp_helpers import gpt_rows, image_ids, take

from data_pipeline import build_loader

pytestmark = pytest.mark.timeout(240)


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.parametrize(
    ("kind", "workers"), [("gpt", 0), ("gpt", 2), ("bert", 2), ("vit", 0), ("vit", 1)]
)
def test_exact_resume(token_ds, image_ds, kind, workers):
    path = str(image_ds[0] if kind == "vit" else token_ds[0])
    opts = dict(
        batch_size=3,
        seq_len=6,
        seed=11,
        num_workers=workers,
        shuffle_buffer=4,
        pairs=kind == "bert",
    )
    first = build_loader(kind, path, **opts)
    n = first.items_per_epoch() // 3 + 4  # enough batches to cross an epoch boundary
    whole = take(build_loader(kind, path, **opts), n)
    head = take(first, 5)
    state = first.state_dict()
    fresh = build_loader(kind, path, **opts)
    fresh.load_state_dict(state)
    _same(head + take(fresh, n - 5), whole)
    assert fresh.epoch >= 1


def test_finite_pass_resume_and_next_epoch(token_ds):
    path = str(token_ds[0])
    opts = dict(batch_size=2, seq_len=5, seed=2, infinite=False, num_workers=2)
    loader = build_loader("gpt", path, **opts)
    epoch0 = take(loader)
    assert loader.epoch == 1
    epoch1 = take(loader)
    again = build_loader("gpt", path, **opts)
    part = take(again, 3)
    state = again.state_dict()
    resumed = build_loader("gpt", path, **opts)
    resumed.load_state_dict(state)
    _same(part + take(resumed), epoch0)
    _same(take(resumed), epoch1)


def _rows(kind, batches):
    if kind == "vit":
        return [i for b in batches for i in image_ids(b["images"])]
    return [r for b in batches for r in gpt_rows(b)]


@pytest.mark.parametrize("kind", ["gpt", "vit"])
def test_elastic_two_ranks_to_one(token_ds, image_ds, kind):
    path = str(image_ds[0] if kind == "vit" else token_ds[0])
    opts = dict(seq_len=4, seed=7, augment=False, shuffle_buffer=5)
    reference = _rows(kind, take(build_loader(kind, path, batch_size=1, **opts), 40))
    ranks = [
        build_loader(kind, path, batch_size=2, rank=r, world_size=2, num_workers=r, **opts)
        for r in range(2)
    ]
    consumed = [_rows(kind, take(loader, 4)) for loader in ranks]
    states = [loader.state_dict() for loader in ranks]
    assert states[0] == states[1]  # the state is global: any rank's copy will do
    assert sorted(consumed[0] + consumed[1]) == sorted(reference[:16])
    single = build_loader(kind, path, batch_size=4, world_size=1, num_workers=2, **opts)
    single.load_state_dict(states[1])
    assert _rows(kind, take(single, 6)) == reference[16:40]  # nothing skipped or repeated


@pytest.mark.parametrize("kind", ["gpt", "bert"])
def test_elastic_one_rank_to_three(token_ds, kind):
    path = str(token_ds[0])
    opts = dict(seq_len=6, seed=9, pairs=kind == "bert")
    ref_loader = build_loader(kind, path, batch_size=1, **opts)
    reference = [b["input_ids"][0].tolist() for b in take(ref_loader, 30)]
    one = build_loader(kind, path, batch_size=3, **opts)
    assert [r.tolist() for b in take(one, 2) for r in b["input_ids"]] == reference[:6]
    state = one.state_dict()
    for rank in range(3):
        loader = build_loader(
            kind, path, batch_size=2, rank=rank, world_size=3, num_workers=rank % 2, **opts
        )
        loader.load_state_dict(state)
        got = [r.tolist() for b in take(loader, 4) for r in b["input_ids"]]
        # rank r continues with global items 6 + r, 6 + r + 3, ... (BERT masks included)
        assert got == reference[6 + rank :: 3][:8]


def test_state_from_other_settings_is_refused(token_ds):
    path = str(token_ds[0])
    state = build_loader("gpt", path, seq_len=8).state_dict()
    with pytest.raises(ValueError, match="different data or settings"):
        build_loader("gpt", path, seq_len=16).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        build_loader("gpt", path, seq_len=8).load_state_dict({"version": 99})
