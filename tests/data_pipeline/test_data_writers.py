"""Shard writers: deterministic bytes, readable by `tar tf` and by webdataset, manifests."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile

import numpy as np
import pytest
import webdataset as wds
from dp_helpers import CIFAR_TAR
from PIL import Image

from data_pipeline import load_manifest, write_image_shards, write_text_shards
from data_pipeline.cli import main
from data_pipeline.text_shards import expand_inputs, iter_documents

pytestmark = pytest.mark.timeout(120)


def _tar_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.tar"))}


def test_text_shards_are_deterministic_and_readable(tmp_path, shakespeare_part, tokenizer):
    a, b = tmp_path / "a", tmp_path / "b"
    code = main(
        [
            "text",
            "--input",
            str(shakespeare_part),
            "--tokenizer",
            str(tokenizer.path),
            "--out",
            str(a),
            "--val-fraction",
            "0.1",
            "--shard-size",
            "200KB",
            "--split-docs",
            "paragraph",
            "--workers",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    write_text_shards(
        [str(shakespeare_part)],
        tokenizer.path,
        b,
        val_fraction=0.1,
        shard_size="200KB",
        doc_split="paragraph",
        workers=1,
        progress=False,
    )
    # byte-identical whatever the number of tokenizer processes
    assert _tar_bytes(a) == _tar_bytes(b) and len(_tar_bytes(a)) >= 4
    man = load_manifest(str(a / "manifest.json"))
    assert man.tokenizer["hash"] == tokenizer.hash and man.dtype == "uint16"
    docs = list(iter_documents(expand_inputs([str(shakespeare_part)]), "paragraph"))
    train = man.split_shards("train")
    val = man.split_shards("val")
    assert sum(s.samples for s in val) == int(len(docs) * 0.1)
    assert sum(s.samples for s in train + val) == len(docs)
    # plain tar lists the members
    listing = subprocess.run(
        ["tar", "tf", str(a / train[0].name)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing[0] == "000000000.tokens.npy" and len(listing) == train[0].samples
    # webdataset reads and decodes them (npy arrays, no pickle)
    urls = [str(a / s.name) for s in train]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == sum(s.samples for s in train)
    assert sum(len(x["tokens.npy"]) for x in samples) == sum(s.tokens for s in train)
    # every document once, in one split or the other (the order is the writer's own)
    written = sorted(tuple(x["tokens.npy"].tolist()) for x in samples)
    val_urls = [str(a / s.name) for s in val]
    val_samples = wds.WebDataset(val_urls, shardshuffle=False).decode()
    written_val = [tuple(x["tokens.npy"].tolist()) for x in val_samples]
    assert sorted(written + written_val) == sorted(tuple(tokenizer.encode(d)) for d in docs)
    with tarfile.open(a / train[0].name) as tf:
        info = tf.getmembers()[0]
        assert info.mtime == 0 and info.uname == "gobig"


def test_tail_split_holds_out_the_end_of_the_text(tmp_path, shakespeare_part, tokenizer):
    text = shakespeare_part.read_text()
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(text[: len(text) // 2])
    second.write_text(text[len(text) // 2 :])
    out = tmp_path / "ds"
    code = main(
        ["text", "--input", str(first), str(second), "--tokenizer", str(tokenizer.path),
         "--out", str(out), "--val-fraction", "0.1", "--val-split", "tail", "--quiet"]
    )  # fmt: skip
    assert code == 0
    man = load_manifest(str(out / "manifest.json"))

    def decoded(split):
        urls = [str(out / s.name) for s in man.split_shards(split)]
        docs = list(wds.WebDataset(urls, shardshuffle=False).decode())
        return [tokenizer.decode(d["tokens.npy"].tolist()) for d in docs]

    cut = int(len(text) * 0.9)
    # the second file is cut in two: its head trains, its tail validates
    expected = [text[: len(text) // 2], text[len(text) // 2 : cut]]
    assert sorted(decoded("train")) == sorted(expected)  # (written in a random order)
    assert decoded("val") == [text[cut:]]


def test_text_writer_refuses_to_mix_datasets_and_bad_inputs(
    tmp_path, shakespeare_part, tokenizer, capsys
):
    out = tmp_path / "o"
    args = [
        "text",
        "--input",
        str(shakespeare_part),
        "--tokenizer",
        str(tokenizer.path),
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert (
        main(
            [
                "text",
                "--input",
                str(tmp_path / "nope*.txt"),
                "--tokenizer",
                str(tokenizer.path),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "nope*.txt" in capsys.readouterr().err


def test_images_from_cifar_tar_subset(tmp_path, cifar_tar_head):
    # The first 300 per class of the CIFAR tar: the same 8 per class are chosen.
    a, b = tmp_path / "a", tmp_path / "b"
    code = main(
        [
            "images",
            "--input",
            str(cifar_tar_head),
            "--out",
            str(a),
            "--val-fraction",
            "0.25",
            "--max-per-class",
            "8",
            "--shard-size",
            "40KB",
            "--store",
            "encoded",
            "--quiet",
        ]
    )
    assert code == 0
    write_image_shards(
        cifar_tar_head, b, val_fraction=0.25, max_per_class=8, shard_size="40KB", store="encoded",
        progress=False,
    )  # fmt: skip
    assert _tar_bytes(a) == _tar_bytes(b) and len(_tar_bytes(a)) >= 2
    man = json.loads((a / "manifest.json").read_text())
    assert man["classes"][:2] == ["airplane", "automobile"] and len(man["classes"]) == 10
    assert man["class_counts"] == {"train": [6] * 10, "val": [2] * 10}
    names = [s["name"] for s in man["shards"] if s["split"] == "train"]
    listing = subprocess.run(
        ["tar", "tf", str(a / names[0])], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing[:2] == ["00000000.cls", "00000000.jpg"]
    ds = wds.WebDataset([str(a / n) for n in names], shardshuffle=False).decode("pil")
    samples = list(ds)
    assert len(samples) == 60 and samples[0]["jpg"].size == (32, 32)
    assert sorted({int(s["cls"]) for s in samples}) == list(range(10))
    # bytes are kept as given with --store encoded and no --image-size
    with tarfile.open(CIFAR_TAR, "r|") as tf:  # the real archive, streamed to its 1st image
        member = next(m for m in tf if m.name == "train/airplane/0000.jpg")
        original = tf.extractfile(member).read()
    every = [str(a / s["name"]) for s in man["shards"]]
    assert original in {s["jpg"] for s in wds.WebDataset(every, shardshuffle=False)}


def test_images_from_folder_resized(tmp_path):
    src = tmp_path / "folder"
    for c, colour in (("cat", (200, 0, 0)), ("dog", (0, 200, 0))):
        (src / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 12), colour).save(src / c / f"{i}.png")
    man = write_image_shards(
        src, tmp_path / "out", image_size=16, store="encoded", shuffle_seed=None,
        progress=False, workers=2,
    )  # fmt: skip
    assert man.classes == ["cat", "dog"] and man.image_size == 16
    samples = list(wds.WebDataset(str(tmp_path / "out" / man.shards[0].name), shardshuffle=False))
    assert len(samples) == 6 and [int(s["cls"]) for s in samples] == [0, 0, 0, 1, 1, 1]
    img = Image.open(io.BytesIO(samples[4]["png"]))
    assert img.size == (16, 16) and np.asarray(img)[0, 0].tolist() == [0, 200, 0]


def test_image_cli_bad_inputs(tmp_path, capsys):
    assert main(["images", "--input", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "none" in capsys.readouterr().err
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"\x00garbage" * 100)
    assert main(["images", "--input", str(broken), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "broken.tar" in err and "Traceback" not in err
    bad = tmp_path / "badimg" / "cls"
    bad.mkdir(parents=True)
    (bad / "x.jpg").write_bytes(b"not a jpeg")
    assert main(["images", "--input", str(bad.parent), "--out", str(tmp_path / "p")]) == 2
    assert "x.jpg" in capsys.readouterr().err
