"""Tokenizer: CLI training, the special-token layout, the hash, and bad model files."""

from __future__ import annotations

import json

import pytest

from data_pipeline import DataError, Tokenizer
from data_pipeline.cli import main

pytestmark = pytest.mark.timeout(120)


def test_cli_trains_with_special_tokens_and_records_hash(tmp_path, shakespeare_part, capsys):
    out = tmp_path / "tok"
    code = main(
        [
            "tokenizer",
            "--input",
            str(shakespeare_part),
            "--vocab-size",
            "350",
            "--model-type",
            "unigram",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    tok = Tokenizer(out / "tokenizer.model")
    info = json.loads((out / "tokenizer.json").read_text())
    assert info["hash"] == tok.hash and len(tok.hash) == 16
    assert info["vocab_size"] == tok.vocab_size == 350
    assert tok.special_ids == {
        "pad": 0,
        "unk": 1,
        "bos": 2,
        "eos": 3,
        "mask": 4,
        "cls": 5,
        "sep": 6,
    }
    assert tok.hash in capsys.readouterr().out


def test_char_model_and_exact_round_trip(tmp_path, shakespeare_part, tokenizer):
    assert (
        main(
            [
                "tokenizer",
                "--input",
                str(shakespeare_part),
                "--vocab-size",
                "400",
                "--model-type",
                "char",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    char = Tokenizer(tmp_path / "c")
    text = "def f(x):\n\tif x:  return [1, 2]\n"
    for tok in (char, tokenizer):
        assert tok.decode(tok.encode(text)) == text  # whitespace and layout survive
    assert char.hash != tokenizer.hash
    assert tokenizer.encode_batch(["a b", "c"]) == [tokenizer.encode("a b"), tokenizer.encode("c")]


def test_missing_and_corrupt_model_are_clear_errors(tmp_path, capsys):
    with pytest.raises(DataError, match="not found"):
        Tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a sentencepiece model" * 10)
    with pytest.raises(DataError, match="bad.model.*corrupt"):
        Tokenizer(bad)
    # the CLI: one line on stderr naming the file, exit 2, no traceback
    code = main(
        ["text", "--input", str(bad), "--tokenizer", str(bad), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.model" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_training_input_errors(tmp_path, capsys):
    code = main(
        [
            "tokenizer",
            "--input",
            str(tmp_path / "missing.txt"),
            "--vocab-size",
            "400",
            "--out",
            str(tmp_path / "t"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing.txt" in err and "Traceback" not in err
    src = tmp_path / "a.txt"
    src.write_text("hello world\n" * 50)
    assert (
        main(["tokenizer", "--input", str(src), "--vocab-size", "10", "--out", str(tmp_path / "t")])
        == 2
    )
