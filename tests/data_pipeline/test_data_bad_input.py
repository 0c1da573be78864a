"""Bad input: missing, truncated or corrupted shards and a wrong tokenizer give errors
naming the shard; `on_error="skip"` skips the shard with a warning, counts it in the
loader's stats, and never hangs."""

from __future__ import annotations

import json
import warnings

import pytest
from dp_helpers import IMAGE_SHARD_IMAGES, image_ids, take

from data_pipeline import DataError, ShardError, build_loader, train_tokenizer

pytestmark = pytest.mark.timeout(120)


def _break(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2 + 100]))
    elif how == "corrupted":  # garbage over the second member's header and data
        data[1024:3072] = b"\xde\xad\xbe\xef" * 512
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["missing", "truncated", "corrupted"])
@pytest.mark.parametrize("workers", [0, 2])
def test_bad_image_shard(image_ds, how, workers):
    path, n = image_ds
    _break(path / "train-000002.tar", how)
    loader = build_loader("vit", str(path), batch_size=4, num_workers=workers, infinite=False)
    with pytest.raises(DataError, match=r"shard train-000002\.tar"):
        take(loader)
    skipping = build_loader(
        "vit",
        str(path),
        batch_size=4,
        num_workers=workers,
        infinite=False,
        on_error="skip",
        augment=False,
    )
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        ids = [i for b in take(skipping) for i in image_ids(b["images"])]
    assert skipping.stats["skipped_shards"] == 1
    assert skipping.stats["skipped"] == ["train-000002.tar"]
    start = sum(IMAGE_SHARD_IMAGES[:2])
    others = set(range(n)) - set(range(start, start + IMAGE_SHARD_IMAGES[2]))
    assert others <= set(ids) <= set(range(n))  # every other shard is still served
    if how == "missing":
        assert set(ids) == others


def test_bad_token_payload_names_shard(token_ds):
    path, _ = token_ds
    shard = path / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    # the first member's data starts after its 512-byte tar header: .npy header, then ids
    start = 512 + 10 + int.from_bytes(data[512 + 8 : 512 + 10], "little")
    data[start : start + 2] = b"\xff\xff"  # id 65535: outside the 400-piece vocabulary
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"train-000001\.tar.*outside the vocabulary"):
        take(build_loader("gpt", str(path), seq_len=4, infinite=False))


def test_pipe_command_failure_names_shard(token_ds):
    path, _ = token_ds
    (path / "train-000000.tar").unlink()
    source = f"pipe:cat {path}/train-{{000000..000002}}.tar 2>/dev/null"
    with pytest.raises(ShardError, match=r"train-000000\.tar"):
        take(build_loader("gpt", source, seq_len=4, infinite=False))


def test_wrong_tokenizer(token_ds, tmp_path, shakespeare_part):
    path, _ = token_ds
    other = train_tokenizer([shakespeare_part], tmp_path / "other", vocab_size=420)
    with pytest.raises(DataError, match=r"shard train-000000\.tar: made with tokenizer"):
        build_loader("gpt", str(path), tokenizer=str(other.path))
    # a manifest mixing shards of two tokenizers: skip mode drops the foreign one
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["shards"][1]["tokenizer"] = other.hash
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"train-000001\.tar"):
        build_loader("gpt", str(path))
    with pytest.warns(UserWarning, match=r"skipping shard train-000001\.tar"):
        loader = build_loader("gpt", str(path), on_error="skip", seq_len=4, infinite=False)
    assert loader.stats["skipped"] == ["train-000001.tar"]
    assert take(loader)


def test_all_shards_bad_is_an_error_not_a_hang(image_ds):
    path, _ = image_ds
    for shard in path.glob("*.tar"):
        shard.unlink()
    loader = build_loader("vit", str(path), on_error="skip", num_workers=2)
    with warnings.catch_warnings(record=True), pytest.raises(DataError, match="no samples"):
        take(loader, 1)


def test_undecodable_image_sample(image_ds):
    import webdataset as wds

    path, n = image_ds
    shard = path / "train-000001.tar"
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    with wds.TarWriter(str(shard), mtime=0, encoder=False) as tw:
        for s in samples:
            tw.write({"__key__": s["__key__"], "cls": s["cls"], "png": b"not a png"})
    with pytest.raises(DataError, match="image sample 00000009 cannot be decoded"):
        take(build_loader("vit", str(path), batch_size=n, infinite=False))
    loader = build_loader("vit", str(path), batch_size=n, infinite=False, on_error="skip")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert take(loader)[0]["images"].shape[0] == n
    assert loader.stats["bad_samples"] == 2
