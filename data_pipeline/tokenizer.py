"""SentencePiece tokenizer: training with the special tokens the models need, and a
small wrapper that knows its ids and a hash that identifies the model file.

Fixed id layout (every model trained here): 0 <pad>, 1 <unk>, 2 <s> (BOS), 3 </s> (EOS),
4 [MASK], 5 [CLS], 6 [SEP], then "\\n" and "\\t" as whole pieces (source code keeps its
layout), then byte-fallback pieces and the learned vocabulary. Normalisation is off
(identity, whitespace kept) so decode(encode(text)) == text for code and prose.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import sentencepiece as spm

from data_pipeline.errors import DataError

SPECIAL_PIECES = ("[MASK]", "[CLS]", "[SEP]")
# Pieces that must survive as single tokens; spm trains line by line and never sees them.
LAYOUT_PIECES = ("\n", "\t")
MODEL_TYPES = ("bpe", "unigram", "char")
MODEL_FILE = "tokenizer.model"
INFO_FILE = "tokenizer.json"


def file_hash(path: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of a file: the identity of a tokenizer model."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return digest[:16]


class Tokenizer:
    """A loaded sentencepiece model plus the ids the loaders and models need.

    Args:
        path: a `.model` file, or a directory holding `tokenizer.model`.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.is_file():
            raise DataError(f"tokenizer model not found: {path}")
        self.path = path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as exn:
            raise DataError(
                f"tokenizer model {path} is corrupt or not a sentencepiece model: "
                f"{str(exn).splitlines()[0] if str(exn) else type(exn).__name__}"
            ) from None
        self.hash = file_hash(path)
        self.vocab_size = int(self._sp.GetPieceSize())
        self.pad_id = int(self._sp.pad_id())
        self.unk_id = int(self._sp.unk_id())
        self.bos_id = int(self._sp.bos_id())
        self.eos_id = int(self._sp.eos_id())
        self.mask_id = self._piece_id("[MASK]")
        self.cls_id = self._piece_id("[CLS]")
        self.sep_id = self._piece_id("[SEP]")

    def _piece_id(self, piece: str) -> int | None:
        idx = int(self._sp.PieceToId(piece))
        return None if idx == self.unk_id else idx

    @property
    def special_ids(self) -> dict[str, int | None]:
        """Ids of pad/unk/bos/eos/mask/cls/sep (None when the model lacks one)."""
        return {
            "pad": self.pad_id,
            "unk": self.unk_id,
            "bos": self.bos_id,
            "eos": self.eos_id,
            "mask": self.mask_id,
            "cls": self.cls_id,
            "sep": self.sep_id,
        }

    @property
    def first_normal_id(self) -> int:
        """Ids below this are control/special pieces (never masked or sampled as noise)."""
        specials = [i for i in self.special_ids.values() if i is not None and i >= 0]
        return max(specials) + 1

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS/EOS added)."""
        return self._sp.EncodeAsIds(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts in one call (sentencepiece threads internally)."""
        return self._sp.Encode(texts)

    def decode(self, ids: list[int]) -> str:
        """Text of token ids."""
        return self._sp.DecodeIds([int(i) for i in ids])

    def info(self) -> dict:
        """What `tokenizer.json` records: hash, vocab size, special ids."""
        return {"hash": self.hash, "vocab_size": self.vocab_size, "special_ids": self.special_ids}


def train_tokenizer(
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    vocab_size: int,
    model_type: str = "bpe",
    max_sentences: int = 300_000,
    seed: int = 0,
    num_threads: int | None = None,
) -> Tokenizer:
    """Train a sentencepiece model on text files and write `tokenizer.model` + `tokenizer.json`.

    Args:
        inputs: text files (one training sentence per line).
        out_dir: directory to write into (created).
        vocab_size: total pieces, special ones included.
        model_type: "bpe", "unigram" or "char".
        max_sentences: cap on sampled training lines (keeps training fast on big inputs).
        seed: sentencepiece's random seed, for reproducible sampling.
        num_threads: training threads (default: all cores).
    """
    if model_type not in MODEL_TYPES:
        raise DataError(f"--model-type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    if vocab_size < 300:
        # byte fallback (no unknown characters, ever) alone takes 256 pieces
        raise DataError(f"--vocab-size must be at least 300, got {vocab_size}")
    files = [str(p) for p in inputs]
    if not files:
        raise DataError("no tokenizer training input given")
    for f in files:
        if not os.path.isfile(f):
            raise DataError(f"tokenizer training input not found: {f}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    kwargs = dict(
        input=files,
        model_prefix=str(out / "tokenizer"),
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        user_defined_symbols=list(SPECIAL_PIECES + LAYOUT_PIECES),
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=2,
    )
    if model_type == "char":
        # a char model's size is its alphabet (+ bytes); vocab_size is an upper bound
        kwargs["hard_vocab_limit"] = False
    try:
        spm.SentencePieceTrainer.Train(**kwargs)
    except RuntimeError as exn:
        hint = (
            " (a char model needs vocab-size >= 265 + its alphabet)" if model_type == "char" else ""
        )
        raise DataError(
            f"sentencepiece training failed: {str(exn).splitlines()[0]}{hint}"
        ) from None
    (out / "tokenizer.vocab").unlink(missing_ok=True)
    tok = Tokenizer(out / MODEL_FILE)
    meta = {**tok.info(), "model_type": model_type, "file": MODEL_FILE}
    (out / INFO_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return tok
