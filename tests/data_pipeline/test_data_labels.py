"""Labelled text (`gobig data text --labels`): the writer records the labels, every sample
round-trips, a malformed line is one line naming file:line (exit 2, nothing written); the
classification loader ("bert-cls") pads per batch and resumes like the other kinds."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from dp_helpers import SHARED, take

from data_pipeline import DataError, build_loader, load_manifest
from data_pipeline.labelled_text import write_labelled_shards

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
SST2 = SHARED / "sst2"
TRAIN_LINES, DEV_LINES = 300, 80


def _gobig_data(*args: str) -> subprocess.CompletedProcess:
    """The real command line: `gobig data ...` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "data", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _head(src: Path, dest: Path, n: int) -> list[tuple[str, str]]:
    """The first `n` lines of an SST-2 file, written to `dest`; their (text, label)."""
    lines = src.read_text(encoding="utf-8").split("\n")[:n]
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [tuple(line.rsplit("\t", 1)) for line in lines]


@pytest.fixture(scope="module")
def sst2(tmp_path_factory, tokenizer) -> tuple[Path, list, list]:
    """SST-2 subsets written by the real CLI: (dataset, train pairs, dev pairs)."""
    root = tmp_path_factory.mktemp("sst2")
    train = _head(SST2 / "train.tsv", root / "train.tsv", TRAIN_LINES)
    dev = _head(SST2 / "dev.tsv", root / "dev.tsv", DEV_LINES)
    out = root / "ds"
    proc = _gobig_data(
        "text", "--labels", "--input", str(root / "train.tsv"), "--val", str(root / "dev.tsv"),
        "--tokenizer", str(tokenizer.path), "--out", str(out), "--shard-size", "64KB", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(f"{out}: 2 labels (0, 1), train ")
    return out, train, dev


def _samples(ds: Path, split: str, tok) -> list[tuple[str, int]]:
    man = load_manifest(str(ds / "manifest.json"))
    urls = [str(ds / s.name) for s in man.split_shards(split)]
    return [
        (tok.decode(s["tokens.npy"].tolist()), int(s["cls"]))
        for s in wds.WebDataset(urls, shardshuffle=False).decode()
    ]


def test_labels_recorded_and_samples_round_trip(sst2, tokenizer):
    ds, train, dev = sst2
    man = load_manifest(str(ds / "manifest.json"))
    assert man.kind == "text" and man.classes == ["0", "1"]  # sorted, numerically
    for split, pairs in (("train", train), ("val", dev)):
        counts = Counter(label for _, label in pairs)
        assert man.class_counts[split] == [counts["0"], counts["1"]]
        # every line once, its text and its label (ids are the integers themselves here)
        want = Counter((text, int(label)) for text, label in pairs)
        assert Counter(_samples(ds, split, tokenizer)) == want
    doc = json.loads((ds / "manifest.json").read_text())
    assert doc["splits"]["val"]["samples"] == DEV_LINES
    assert doc["classes"] == ["0", "1"]


def test_jsonl_string_and_integer_labels_and_their_order(tmp_path, tokenizer):
    src = tmp_path / "reviews.jsonl"
    rows = [("great film", "pos"), ("dull", "neg"), ("fine", "meh"), ("awful", "neg")]
    src.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows) + "\n")
    inferred = write_labelled_shards([str(src)], tokenizer.path, tmp_path / "a", progress=False)
    assert inferred.classes == ["meh", "neg", "pos"]  # sorted, not first-seen
    given = write_labelled_shards(
        [str(src)], tokenizer.path, tmp_path / "b", labels=["neg", "meh", "pos"], progress=False
    )
    assert given.classes == ["neg", "meh", "pos"]
    assert dict(_samples(tmp_path / "b", "train", tokenizer))["great film"] == 2
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text("".join(json.dumps({"text": f"t{y}", "label": y}) + "\n"
                               for y in (10, "2", 1, 2)))  # fmt: skip
    man = write_labelled_shards([str(numbers)], tokenizer.path, tmp_path / "c", progress=False)
    assert man.classes == ["1", "2", "10"]  # integers: numeric order, "2" and 2 alike


def test_val_fraction_draws_whole_lines(tmp_path, tokenizer):
    train = _head(SST2 / "train.tsv", tmp_path / "train.tsv", 200)
    man = write_labelled_shards(
        [str(tmp_path / "train.tsv")], tokenizer.path, tmp_path / "ds", val_fraction=0.1,
        progress=False,
    )  # fmt: skip
    got = _samples(tmp_path / "ds", "train", tokenizer) + _samples(
        tmp_path / "ds", "val", tokenizer
    )
    assert man.to_json()["splits"]["val"]["samples"] == 20
    assert Counter(got) == Counter((t, int(y)) for t, y in train)


MALFORMED = {
    "no-tab": ("train.tsv", "a fine film\t1\nno tab on this line\n", 2, "no tab"),
    "empty-text": ("train.tsv", "a fine film\t1\nmore\t0\n\t1\n", 3, "empty text"),
    "empty-label": ("train.tsv", "a fine film\t1\nno label\t  \n", 2, "empty label"),
    "unseen-val-label": (
        "dev.tsv",
        "a\t1\n\nfine\t0\nmeh\tneutral\n",
        4,
        "'neutral' is not among the training",
    ),
    "bad-json": ("train.jsonl", '{"text": "ok", "label": 1}\n{"text": "broken", \n', 2, "JSON"),
    "no-label": ("train.jsonl", '{"text": "ok", "label": 1}\n{"text": "x"}\n', 2, '"label"'),
    "bool-label": ("train.jsonl", '{"text": "ok", "label": true}\n', 1, "string or an integer"),
}


@pytest.mark.parametrize(
    ("name", "content", "line", "reason"), MALFORMED.values(), ids=MALFORMED.keys()
)
def test_malformed_line_is_one_line_naming_file_and_line(
    tmp_path, tokenizer, name, content, line, reason
):
    good = tmp_path / "good.tsv"
    good.write_text("a fine film\t1\na dull one\t0\n")
    bad = tmp_path / name
    bad.write_text(content)
    inputs = (
        ["--input", str(good), "--val", str(bad)] if name == "dev.tsv" else ["--input", str(bad)]
    )
    out = tmp_path / "out"
    proc = _gobig_data("text", "--labels", *inputs, "--tokenizer", str(tokenizer.path),
                       "--out", str(out), "--quiet")  # fmt: skip
    assert proc.returncode == 2
    (message,) = proc.stderr.splitlines()
    assert message.startswith(f"gobig data text: error: {bad}:{line}: ") and reason in message
    assert not out.exists()  # every line is checked before anything is written


def test_labelled_options_are_checked(tmp_path, tokenizer):
    good = tmp_path / "good.tsv"
    good.write_text("a fine film\t1\n")
    base = ["text", "--input", str(good), "--tokenizer", str(tokenizer.path), "--out",
            str(tmp_path / "o")]  # fmt: skip
    for extra, reason in (
        (["--labels", "--split-docs", "line"], "--split-docs does not apply to --labels"),
        (["--labels", "--val", str(good), "--val-fraction", "0.1"], "not both"),
        (["--labels", "pos,pos"], "listed twice"),
        (["--labels", "neg,pos"], "label '1' is not one of --labels (neg, pos)"),
        (["--val", str(good)], "--val needs --labels"),
    ):
        proc = _gobig_data(*base, *extra)
        assert proc.returncode == 2 and reason in proc.stderr, (extra, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("seq_len", [12, 128])
def test_classification_batches(sst2, tokenizer, seq_len):
    ds, _, dev = sst2
    loader = build_loader("bert-cls", str(ds), split="val", batch_size=16, seq_len=seq_len,
                          infinite=False)  # fmt: skip
    assert loader.classes == ["0", "1"] and loader.batches_per_epoch() == 5  # 80 texts
    batches = take(loader)
    assert len(batches) == 5
    got = Counter()
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"]
        assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "class_labels"}
        assert ids.shape == mask.shape == b["token_type_ids"].shape and ids.shape[1] <= seq_len
        assert mask[:, 0].all() and not b["token_type_ids"].any()
        assert ids.shape[1] == int(mask.sum(1).max())  # padded to the batch's longest row
        for row, keep, label in zip(ids, mask.bool(), b["class_labels"], strict=True):
            real = row[keep].tolist()
            assert real[0] == tokenizer.cls_id and real[-1] == tokenizer.sep_id
            assert (row[~keep] == tokenizer.pad_id).all()
            got[tuple(real[1:-1]), int(label)] += 1
    # each validation text once: [CLS] + its first seq_len - 2 tokens + [SEP]
    want = Counter((tuple(tokenizer.encode(t)[: seq_len - 2]), int(y)) for t, y in dev)
    assert got == want


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(sst2, workers):
    path = str(sst2[0])
    opts = dict(batch_size=7, seq_len=16, seed=5, shuffle_buffer=32, num_workers=workers)
    first = build_loader("bert-cls", path, **opts)
    n = first.items_per_epoch() // 7 + 3  # crosses an epoch boundary
    whole = take(build_loader("bert-cls", path, **opts), n)
    head = take(first, 9)
    fresh = build_loader("bert-cls", path, **opts)
    fresh.load_state_dict(first.state_dict())
    _same(head + take(fresh, n - 9), whole)
    assert fresh.epoch >= 1


def test_elastic_two_ranks_to_one(sst2):
    path = str(sst2[0])
    opts = dict(seq_len=16, seed=3, shuffle_buffer=50)

    def rows(batches):
        return [tuple(r[m.bool()].tolist()) for b in batches
                for r, m in zip(b["input_ids"], b["attention_mask"], strict=True)]  # fmt: skip

    reference = rows(take(build_loader("bert-cls", path, batch_size=1, **opts), 40))
    ranks = [build_loader("bert-cls", path, batch_size=2, rank=r, world_size=2, **opts)
             for r in range(2)]  # fmt: skip
    consumed = [rows(take(loader, 4)) for loader in ranks]
    assert ranks[0].state_dict() == ranks[1].state_dict()
    assert sorted(consumed[0] + consumed[1]) == sorted(reference[:16])
    single = build_loader("bert-cls", path, batch_size=4, **opts)
    single.load_state_dict(ranks[1].state_dict())
    assert rows(take(single, 6)) == reference[16:40]


def test_kinds_and_shards_must_agree(sst2, token_ds):
    with pytest.raises(DataError, match="without labels.*gobig data text --labels"):
        build_loader("bert-cls", str(token_ds[0]))
    # a masked-LM loader reads the texts of labelled shards (the trainer refuses the
    # combination for a BERT without num_labels: train/families.py)
    batch = next(iter(build_loader("bert", str(sst2[0]), seq_len=16)))
    assert "class_labels" not in batch and np.all(batch["attention_mask"].numpy() == 1)
