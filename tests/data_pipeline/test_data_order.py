"""Written order: the writers mix class-ordered and file-ordered input by default, as a
function of the seed; the loader warns about class-sorted shards from elsewhere."""

from __future__ import annotations

import io
import json
import tarfile
import warnings

import numpy as np
import pytest

from data_pipeline import build_loader, load_manifest, write_image_shards, write_text_shards
from data_pipeline.reader import read_shard

pytestmark = pytest.mark.timeout(180)


def _records(out, split):
    """(labels or token tuples, raw sample) of a split in manifest shard order, per shard."""
    man = load_manifest(str(out / "manifest.json"))
    return [list(read_shard(str(out / s.name), s.name, s.samples)) for s in man.split_shards(split)]


def _labels(shard_samples):
    return [int(s["cls"]) for s in shard_samples]


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory, cifar_tar_head):
    """The first 300 images of each CIFAR-10 class, as an ImageFolder directory (class by
    class, as ImageFolders list)."""
    root = tmp_path_factory.mktemp("cifar-folder")
    with tarfile.open(cifar_tar_head) as tf:  # the first 300 per class of the CIFAR tar
        members = [m for m in tf if m.isfile() and int(m.name.rsplit("/", 1)[1][:4]) < 300]
        tf.extractall(root, members=members, filter="data")
    return root / "train"


@pytest.mark.parametrize("source", ["tar", "folder"])
def test_class_ordered_input_is_written_mixed(tmp_path, cifar_folder, cifar_tar_head, source):
    src = cifar_tar_head if source == "tar" else cifar_folder
    out = tmp_path / "shards"
    man = write_image_shards(
        src, out, val_fraction=0.1, max_per_class=300, shard_size="1MB", progress=False
    )
    assert man.shuffle_seed == 0 and man.class_counts == {"train": [270] * 10, "val": [30] * 10}
    for split in ("train", "val"):
        shards = [_labels(s) for s in _records(out, split)]
        assert len(shards) >= 3 if split == "train" else len(shards) >= 1
        assert all(len(set(labels)) >= 8 for labels in shards), split
        stream = [label for labels in shards for label in labels]
        for start in range(0, max(1, len(stream) - 1024 + 1), 64):
            assert len(set(stream[start : start + 1024])) >= 8, (split, start)


def test_written_order_is_a_function_of_the_seed(tmp_path, cifar_folder):
    def write(name, **kw):
        out = tmp_path / name
        write_image_shards(
            cifar_folder, out, val_fraction=0.2, max_per_class=30, progress=False, **kw
        )
        return out

    a, again, other, plain = (
        write("a"),
        write("b"),
        write("c", shuffle_seed=1),
        write("d", shuffle_seed=None),
    )
    tars = lambda out: {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}  # noqa: E731
    assert tars(a) == tars(again)
    assert _labels(_records(a, "train")[0]) != _labels(_records(other, "train")[0])
    # the same images either way; validation drawn per class from each seed's order
    everything = lambda out: sorted(  # noqa: E731
        (s["pixels.npy"], s["cls"])
        for split in ("train", "val")
        for sh in _records(out, split)
        for s in sh
    )
    assert everything(a) == everything(other) == everything(plain)
    val = lambda out: {s["pixels.npy"] for s in _records(out, "val")[0]}  # noqa: E731
    assert val(a) != val(other)
    for out in (a, other, plain):
        assert load_manifest(str(out / "manifest.json")).class_counts["val"] == [6] * 10
    # --no-shuffle: the input order, recorded as such
    assert _labels(_records(plain, "train")[0]) == sorted(_labels(_records(plain, "train")[0]))
    assert json.loads((plain / "manifest.json").read_text())["shuffle_seed"] is None


def test_text_documents_are_mixed_across_input_files(tmp_path, tokenizer):
    files = []
    for f in range(4):
        path = tmp_path / f"part{f}.txt"
        path.write_text("".join(f"file {f} line {i} of the input\n" for i in range(60)))
        files.append(str(path))
    out = tmp_path / "text"
    man = write_text_shards(
        files, tokenizer.path, out, val_fraction=0.1, doc_split="line", progress=False
    )
    assert man.shuffle_seed == 0

    def docs(split):
        arrays = [np.load(io.BytesIO(s["tokens.npy"])) for sh in _records(out, split) for s in sh]
        return [tokenizer.decode(a.tolist()) for a in arrays]

    train, val = docs("train"), docs("val")
    assert len(val) == 24 and len(train) == 216
    assert len({d.split()[1] for d in train[:60]}) >= 3  # not one file's lines
    assert len({d.split()[1] for d in val}) >= 3
    # validation is drawn from the random order, not every tenth line of the input
    every_tenth = {f"file {i // 60} line {i % 60} of the input" for i in range(9, 240, 10)}
    assert set(val) != every_tenth


def _sorted_and_mixed(tmp_path, source):
    sorted_out, mixed_out = tmp_path / "sorted", tmp_path / "mixed"
    options = dict(shard_size="4MB", progress=False)
    write_image_shards(source, sorted_out, shuffle_seed=None, **options)
    write_image_shards(source, mixed_out, **options)
    return sorted_out, mixed_out


def _mixing_warnings(source, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_loader("vit", str(source), batch_size=8, **options)
    return [str(w.message) for w in caught if "class order" in str(w.message)]


def test_loader_warns_once_about_class_sorted_shards(tmp_path, cifar_folder):
    sorted_out, mixed_out = _sorted_and_mixed(tmp_path, cifar_folder)
    found = _mixing_warnings(sorted_out)
    assert len(found) == 1 and str(sorted_out) in found[0] and "shuffle_buffer" in found[0]
    assert _mixing_warnings(mixed_out) == []
    # only rank 0 looks; a shuffle buffer holding the whole split mixes it anyway
    assert _mixing_warnings(sorted_out, rank=1, world_size=2) == []
    assert _mixing_warnings(sorted_out, shuffle_buffer=4096) == []
    # shards from elsewhere, without class counts: the runs of one class give it away
    for out in (sorted_out, mixed_out):
        doc = json.loads((out / "manifest.json").read_text())
        del doc["class_counts"]
        (out / "manifest.json").write_text(json.dumps(doc))
    assert len(_mixing_warnings(sorted_out)) == 1
    assert _mixing_warnings(mixed_out) == []
