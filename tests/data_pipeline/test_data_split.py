"""Splitting across ranks and DataLoader workers: every sample exactly once per epoch,
equal batch counts on every rank, no hang with fewer shards than ranks x workers."""

from __future__ import annotations

from collections import Counter

import pytest
from dp_helpers import IMAGE_SHARD_IMAGES, gpt_rows, image_ids, take, write_image_dataset

from data_pipeline import build_loader

pytestmark = pytest.mark.timeout(240)

WORLDS = (1, 2, 3, 4)
WORKERS = (0, 1, 2)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """4 uneven shards, 23 images: fewer shards than ranks x workers for most cases."""
    out = tmp_path_factory.mktemp("split") / "images"
    return out, write_image_dataset(out, IMAGE_SHARD_IMAGES)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("workers", WORKERS)
def test_exactly_once_finite_epoch(images, world, workers):
    path, n = images
    per_rank = []
    for rank in range(world):
        loader = build_loader(
            "vit",
            str(path),
            split="train",
            batch_size=2,
            rank=rank,
            world_size=world,
            seed=3,
            num_workers=workers,
            infinite=False,
        )
        batches = take(loader)
        assert len(batches) == loader.batches_per_epoch()
        per_rank.append([i for b in batches for i in image_ids(b["images"])])
        assert loader.epoch == 1  # the pass ended and the state moved to the next epoch
    # every rank yields ceil(n / world) items, hence the same number of batches
    assert {len(ids) for ids in per_rank} == {-(-n // world)}
    got = Counter(i for ids in per_rank for i in ids)
    pad = -(-n // world) * world - n
    assert set(got) == set(range(n))
    assert sum(c - 1 for c in got.values()) == pad  # only the padding repeats (< world)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("workers", WORKERS)
def test_exactly_once_streaming_epochs(images, world, workers):
    """Infinite mode: positions r, r+W, ... of the endless sequence of epochs."""
    path, n = images
    streams = []
    for rank in range(world):
        loader = build_loader(
            "vit",
            str(path),
            batch_size=1,
            rank=rank,
            world_size=world,
            seed=3,
            num_workers=workers,
            augment=False,
        )
        mine = len(range(rank, 2 * n, world))  # this rank's share of two epochs
        streams.append([image_ids(b["images"])[0] for b in take(loader, mine)])
    order = [None] * (2 * n)
    for rank, ids in enumerate(streams):
        order[rank::world] = ids
    assert sorted(order[:n]) == list(range(n)) and sorted(order[n:]) == list(range(n))
    assert order[:n] != order[n:]  # each epoch has its own shuffle


def test_gpt_rows_exactly_once_across_worlds_and_workers(token_ds):
    path, _ = token_ds
    ref = build_loader("gpt", str(path), batch_size=3, seq_len=4, seed=5, infinite=False)
    reference = Counter(r for b in take(ref) for r in gpt_rows(b))
    assert sum(reference.values()) == ref.items_per_epoch()
    for world, workers in ((2, 2), (3, 1), (4, 2)):
        got: Counter = Counter()
        counts = set()
        for rank in range(world):
            loader = build_loader(
                "gpt",
                str(path),
                batch_size=3,
                seq_len=4,
                seed=5,
                rank=rank,
                world_size=world,
                num_workers=workers,
                infinite=False,
            )
            batches = take(loader)
            counts.add(len(batches))
            got.update(r for b in batches for r in gpt_rows(b))
        assert len(counts) == 1
        extra = got - reference
        assert not (reference - got) and sum(extra.values()) < world


def test_order_is_seeded_and_reproducible(images):
    path, n = images

    def ids(seed, epoch_skip=0):
        loader = build_loader("vit", str(path), batch_size=n, seed=seed, augment=False)
        batches = take(loader, 1 + epoch_skip)
        return image_ids(batches[-1]["images"])

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)
    assert sorted(ids(1)) == list(range(n))
    unshuffled = build_loader("vit", str(path), batch_size=n, shuffle=False, infinite=False)
    assert image_ids(take(unshuffled)[0]["images"]) == list(range(n))
    # shuffle_buffer 0: shards in a shuffled order, each shard's samples in order
    no_buffer = build_loader("vit", str(path), batch_size=n, seed=1, shuffle_buffer=0)
    order = image_ids(take(no_buffer, 1)[0]["images"])
    starts = [0, 9, 11, 18]
    runs = sorted((order.index(s), s) for s in starts)
    assert [i for _, s in runs for i in range(s, s + IMAGE_SHARD_IMAGES[starts.index(s)])] == order
    assert order != list(range(n))
