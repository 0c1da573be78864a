"""Parallel text (`gobig data pairs`) and the translation loader ("seq2seq"): the writer
round-trips every sentence pair, bad input is one line naming file:line (exit 2, nothing
written); batches are length-bucketed, padded as documented, and keep the loaders'
guarantees: exactly once per epoch across ranks, exact and elastic resume."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from dp_helpers import SHARED, take

from data_pipeline import DataError, Tokenizer, build_loader, load_manifest
from data_pipeline.pair_shards import write_pair_shards
from data_pipeline.reader import read_shard
from data_pipeline.seq2seq_batches import IGNORE

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
MULTI30K = SHARED / "multi30k"
TRAIN_LINES, VAL_LINES = 400, 100
SEQ_LEN = 64


def _gobig_data(*args: str) -> subprocess.CompletedProcess:
    """The real command line: `gobig data ...` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "data", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _head(name: str, dest: Path, n: int) -> list[str]:
    """The first `n` lines of a Multi30k file, written to `dest`; the lines."""
    lines = (MULTI30K / name).read_text(encoding="utf-8").split("\n")[:n]
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


@pytest.fixture(scope="module")
def m30k(tmp_path_factory) -> tuple[Path, Tokenizer, dict[str, list[tuple[str, str]]]]:
    """Multi30k subsets made by the documented recipe, with the real CLI: a joint
    tokenizer over both training sides, then pair shards with val.* as validation.
    (dataset, tokenizer, {"train": pairs, "val": pairs})."""
    root = tmp_path_factory.mktemp("m30k")
    pairs = {}
    for split, n in (("train", TRAIN_LINES), ("val", VAL_LINES)):
        en = _head(f"{split}.en", root / f"{split}.en", n)
        de = _head(f"{split}.de", root / f"{split}.de", n)
        pairs[split] = list(zip(en, de, strict=True))
    proc = _gobig_data(
        "tokenizer", "--input", str(root / "train.en"), str(root / "train.de"),
        "--vocab-size", "600", "--out", str(root / "tok"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = root / "ds"
    proc = _gobig_data(
        "pairs", "--source", str(root / "train.en"), "--target", str(root / "train.de"),
        "--val-source", str(root / "val.en"), "--val-target", str(root / "val.de"),
        "--tokenizer", str(root / "tok"), "--out", str(out), "--shard-size", "200KB",
        "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(f"{out}: train ")
    return out, Tokenizer(root / "tok"), pairs


def _decoded(ds: Path, split: str, tok: Tokenizer) -> list[tuple[str, str]]:
    """Every sample of a split as (source text, target text), decoded from its ids."""
    man = load_manifest(str(ds / "manifest.json"))
    out = []
    for s in man.split_shards(split):
        for sample in read_shard(str(ds / s.name), s.name, s.samples):
            sides = (sample["source.npy"], sample["target.npy"])
            out.append(tuple(tok.decode(np.load(io.BytesIO(x)).tolist()) for x in sides))
    return out


def test_pairs_round_trip(m30k, tmp_path):
    ds, tok, pairs = m30k
    man = load_manifest(str(ds / "manifest.json"))
    assert man.kind == "pairs" and man.tokenizer["hash"] == tok.hash
    splits = man.to_json()["splits"]
    assert splits["train"]["shards"] >= 2  # --shard-size 200KB
    for split in ("train", "val"):
        assert splits[split]["samples"] == len(pairs[split])
        assert Counter(_decoded(ds, split, tok)) == Counter(pairs[split])
    # --val-fraction draws whole pairs from the training input
    root = ds.parent
    again = write_pair_shards(
        root / "train.en", root / "train.de", tok.path, tmp_path / "frac", val_fraction=0.1,
        progress=False,
    )  # fmt: skip
    assert again.to_json()["splits"]["val"]["samples"] == TRAIN_LINES // 10
    both = _decoded(tmp_path / "frac", "train", tok) + _decoded(tmp_path / "frac", "val", tok)
    assert Counter(both) == Counter(pairs["train"])


BAD = {  # (source, target, the file named, line, reason, through the real CLI)
    "source-longer": ("a\nb\nc\n", "x\ny\n", "source", 3, "no matching line in", True),
    "target-longer": ("a\nb\n", "x\ny\nz\nw\n", "target", 3, "no matching line in", False),
    "empty-source": ("a\n \nc\n", "x\ny\nz\n", "source", 2, "empty sentence", False),
    "empty-target": ("a\nb\nc\n", "x\ny\n\n", "target", 3, "empty sentence", True),
}


@pytest.mark.parametrize(
    ("src", "tgt", "bad", "line", "reason", "cli"), BAD.values(), ids=BAD.keys()
)
def test_bad_input_is_one_line_naming_file_and_line(
    m30k, tmp_path, src, tgt, bad, line, reason, cli
):
    files = {"source": tmp_path / "in.en", "target": tmp_path / "in.de"}
    files["source"].write_text(src)
    files["target"].write_text(tgt)
    out = tmp_path / "out"
    where = f"{files[bad]}:{line}: "
    if cli:
        proc = _gobig_data(
            "pairs", "--source", str(files["source"]), "--target", str(files["target"]),
            "--tokenizer", str(m30k[1].path), "--out", str(out), "--quiet",
        )  # fmt: skip
        assert proc.returncode == 2
        (message,) = proc.stderr.splitlines()
        assert message.startswith(f"gobig data pairs: error: {where}"), message
        assert reason in message
    else:
        with pytest.raises(DataError) as err:
            write_pair_shards(files["source"], files["target"], m30k[1].path, out, progress=False)
        assert str(err.value).startswith(where) and reason in str(err.value)
        assert "\n" not in str(err.value)
    assert not out.exists()  # every line is checked before anything is written


def _rows(batch) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Each row as (source ids, target ids) without special tokens and padding."""
    out = []
    for ids, mask, labels in zip(
        batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True
    ):
        src = ids[mask.bool()].tolist()[:-1]
        tgt = labels[labels != IGNORE].tolist()[:-1]
        out.append((tuple(src), tuple(tgt)))
    return out


@pytest.mark.parametrize("seq_len", [12, SEQ_LEN])
def test_batches_keys_shapes_and_padding(m30k, seq_len):
    ds, tok, pairs = m30k
    loader = build_loader(
        "seq2seq", str(ds), split="val", batch_size=16, seq_len=seq_len, infinite=False
    )
    assert loader.tokenizer.hash == tok.hash and loader.batches_per_epoch() == 7  # 100 pairs
    batches = take(loader)
    assert len(batches) == 7
    for b in batches:
        assert set(b) == {"input_ids", "attention_mask", "decoder_input_ids", "labels"}
        ids, mask, dec, labels = (b[k] for k in ("input_ids", "attention_mask",
                                                 "decoder_input_ids", "labels"))  # fmt: skip
        assert ids.shape == mask.shape and dec.shape == labels.shape
        assert ids.shape[0] == dec.shape[0] <= 16 and ids.dtype == torch.long
        assert ids.shape[1] <= seq_len and dec.shape[1] <= seq_len
        # padded to the longest row of the batch, on the right
        lengths, targets = mask.sum(1), (labels != IGNORE).sum(1)
        assert ids.shape[1] == int(lengths.max()) and dec.shape[1] == int(targets.max())
        for i in range(len(ids)):
            s, t = int(lengths[i]), int(targets[i])
            assert mask[i, :s].all() and not mask[i, s:].any()
            assert ids[i, s - 1] == tok.eos_id and (ids[i, s:] == tok.pad_id).all()
            assert dec[i, 0] == tok.bos_id and (dec[i, t:] == tok.pad_id).all()
            assert labels[i, t - 1] == tok.eos_id and (labels[i, t:] == IGNORE).all()
            assert torch.equal(dec[i, 1:t], labels[i, : t - 1])  # shifted by one
    got = Counter(r for b in batches for r in _rows(b))
    cut = seq_len - 1
    want = Counter(
        (tuple(tok.encode(s)[:cut]), tuple(tok.encode(t)[:cut])) for s, t in pairs["val"]
    )
    assert got == want  # each pair exactly once


def _padding(batches) -> float:
    real = sum(int(b["attention_mask"].sum() + (b["labels"] != IGNORE).sum()) for b in batches)
    return 1 - real / sum(b["input_ids"].numel() + b["labels"].numel() for b in batches)


def test_token_batching_keeps_padding_small(m30k):
    ds = str(m30k[0])
    loader = build_loader("seq2seq", ds, max_tokens=1024, seq_len=SEQ_LEN, seed=1,
                          infinite=False, shuffle=True)  # fmt: skip
    batches = take(loader)
    assert len(batches) == loader.batches_per_epoch()
    sizes = [b["input_ids"].numel() + b["labels"].numel() for b in batches]
    assert max(sizes) <= 1024 and np.mean(sizes) > 0.8 * 1024  # full batches, none over
    assert sum(len(b["input_ids"]) for b in batches) == TRAIN_LINES
    # the same pairs in random batches of the same sizes
    rows = [r for b in batches for r in _rows(b)]
    random.Random(0).shuffle(rows)
    shuffled, at = [], 0
    for b in batches:
        group, at = rows[at : at + len(b["input_ids"])], at + len(b["input_ids"])
        width_s = max(len(s) for s, _ in group) + 1
        width_t = max(len(t) for _, t in group) + 1
        real = sum(len(s) + len(t) + 2 for s, t in group)
        shuffled.append((real, len(group) * (width_s + width_t)))
    unsorted = 1 - sum(r for r, _ in shuffled) / sum(p for _, p in shuffled)
    bucketed = _padding(batches)
    print(f"padding: bucketed {bucketed:.3f}, random batches {unsorted:.3f}")
    assert bucketed < 0.12 and bucketed < unsorted / 3


def _global_batches(ds: str, n: int, **opts) -> list[dict]:
    return take(build_loader("seq2seq", ds, **opts), n)


OPTS = dict(seq_len=SEQ_LEN, max_tokens=600, seed=4, shuffle_buffer=96)


def test_exactly_once_per_epoch_across_two_ranks(m30k):
    ds, _, pairs = m30k
    total = build_loader("seq2seq", str(ds), **OPTS).batches_per_epoch()  # global batches
    ranks = [build_loader("seq2seq", str(ds), rank=r, world_size=2, num_workers=r, **OPTS)
             for r in range(2)]  # fmt: skip
    assert ranks[0].batches_per_epoch() == -(-total // 2)
    # rank r takes global batches r, r + 2, ...: together, exactly epoch 0's batches
    got = [take(loader, (total + 1 - r) // 2) for r, loader in enumerate(ranks)]
    rows = Counter(r for per_rank in got for b in per_rank for r in _rows(b))
    assert sum(rows.values()) == TRAIN_LINES
    reference = _global_batches(str(ds), total, **OPTS)
    assert rows == Counter(r for b in reference for r in _rows(b))
    assert len(set(rows)) == len(set(pairs["train"]))


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(m30k, workers):
    ds = str(m30k[0])
    opts = dict(OPTS, num_workers=workers)
    first = build_loader("seq2seq", ds, **opts)
    n = first.batches_per_epoch() + 4  # crosses an epoch boundary
    whole = _global_batches(ds, n, **opts)
    head = take(first, 7)  # mid-block: shuffle_buffer 96 holds a few batches
    fresh = build_loader("seq2seq", ds, **opts)
    fresh.load_state_dict(first.state_dict())
    _same(head + take(fresh, n - 7), whole)
    assert fresh.epoch >= 1


def test_elastic_two_ranks_to_one(m30k):
    ds = str(m30k[0])
    reference = _global_batches(ds, 30, **OPTS)
    ranks = [build_loader("seq2seq", ds, rank=r, world_size=2, **OPTS) for r in range(2)]
    consumed = [take(loader, 5) for loader in ranks]
    assert ranks[0].state_dict() == ranks[1].state_dict()
    _same(consumed[0], reference[0:10:2])
    _same(consumed[1], reference[1:10:2])
    single = build_loader("seq2seq", ds, **OPTS)
    single.load_state_dict(ranks[1].state_dict())
    _same(take(single, 20), reference[10:30])  # nothing skipped or repeated


def test_settings_and_kinds_are_checked(m30k, token_ds):
    ds = str(m30k[0])
    state = build_loader("seq2seq", ds, **OPTS).state_dict()
    with pytest.raises(ValueError, match="different data or settings"):
        build_loader("seq2seq", ds, **{**OPTS, "max_tokens": 700}).load_state_dict(state)
    with pytest.raises(ValueError, match="max_tokens must be at least 2 \\* seq_len"):
        build_loader("seq2seq", ds, seq_len=64, max_tokens=100)
    with pytest.raises(ValueError, match="max_tokens applies to seq2seq only"):
        build_loader("gpt", str(token_ds[0]), max_tokens=1000)
    with pytest.raises(DataError, match="describes pairs shards; data.kind 'gpt' needs text"):
        build_loader("gpt", ds)
    with pytest.raises(DataError, match="needs pairs shards .*gobig data pairs"):
        build_loader("seq2seq", str(token_ds[0]))


def test_tokenizer_needs_pad_bos_eos(m30k, tmp_path):
    import sentencepiece as spm

    root = m30k[0].parent
    spm.SentencePieceTrainer.Train(
        input=str(root / "train.en"), model_prefix=str(tmp_path / "nobos"), vocab_size=300,
        bos_id=-1, pad_id=-1, minloglevel=2, num_threads=1,
    )  # fmt: skip
    with pytest.raises(DataError, match=r"nobos\.model has no pad/bos id; translation needs"):
        write_pair_shards(root / "train.en", root / "train.de", tmp_path / "nobos.model",
                          tmp_path / "out", progress=False)  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_builtin_multi30k(tmp_path):
    loader = build_loader("seq2seq", "builtin:multi30k-en-de", split="val", batch_size=64,
                          seq_len=128, cache_dir=str(tmp_path), infinite=False)  # fmt: skip
    splits = loader.manifest.to_json()["splits"]
    assert splits["train"]["samples"] == 29_000 and splits["val"]["samples"] == 1_014
    assert loader.vocab_size == 8000 and loader.batches_per_epoch() == 16
    en = (MULTI30K / "val.en").read_text(encoding="utf-8").split("\n")[:1014]
    de = (MULTI30K / "val.de").read_text(encoding="utf-8").split("\n")[:1014]
    tok = loader.tokenizer
    got = Counter((tok.decode(list(s)), tok.decode(list(t))) for b in take(loader)
                  for s, t in _rows(b))  # fmt: skip
    assert got == Counter((s.strip(), t.strip()) for s, t in zip(en, de, strict=True))
