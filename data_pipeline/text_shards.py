"""Text shard writer: documents -> sentencepiece ids -> WebDataset shards + manifest.

Each sample is one document: `{"__key__": "000000042", "tokens.npy": <npy bytes>}`, the
token ids as a little-endian uint16 (uint32 when the vocabulary needs it) `.npy` array,
written with `allow_pickle=False`. Documents are tokenized in a process pool (ordered
`imap`), so the output is byte-identical whatever the number of workers.

Validation text is chosen in one of two ways (`val_split`):
- "spread": the document at position p of a seeded random order of the input goes to
  "val" when floor((p+1)*F) > floor(p*F), i.e. exactly floor(N*F) documents drawn at
  random (evenly spread over the input order when `shuffle_seed` is None);
- "tail": the last F of the input text, counted in characters, is validation (the
  document holding the cut is cut in two). One long text (a book, a play) becomes a
  contiguous train part followed by a held-out continuation.

Each split is then written in a seeded random order (`shard_writer.SplitWriter`), so a
shard does not hold one input file's documents; `shuffle_seed=None` keeps input order.
"""

from __future__ import annotations

import glob
import io
import json
import multiprocessing
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data_pipeline.errors import DataError
from data_pipeline.manifest import Manifest, ShardInfo
from data_pipeline.shard_writer import SplitWriter, parse_size, prepare_out_dir, seeded_ranks
from data_pipeline.tokenizer import INFO_FILE, MODEL_FILE, Tokenizer

DOC_SPLITS = ("file", "paragraph", "line")
VAL_SPLITS = ("spread", "tail")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest little-endian unsigned dtype holding every id of the vocabulary."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files named by paths, globs and directories (recursively), each group sorted.

    Args:
        inputs: paths, glob patterns or directories, in the order given.
    """
    files: list[Path] = []
    for item in inputs:
        if any(c in item for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise DataError(f"input pattern matched no files: {item}")
            files.extend(found)
        elif os.path.isdir(item):
            files.extend(
                sorted(
                    p for p in Path(item).rglob("*") if p.is_file() and not p.name.startswith(".")
                )
            )
        elif os.path.isfile(item):
            files.append(Path(item))
        else:
            raise DataError(f"input not found: {item}")
    if not files:
        raise DataError("no input files")
    return files


def iter_documents(files: list[Path], doc_split: str = "file") -> Iterator[str]:
    """Documents of the input files: whole files, blank-line paragraphs or lines.

    `.jsonl` files give one document per line (its "text" field) whatever `doc_split` is.
    """
    if doc_split not in DOC_SPLITS:
        raise DataError(f"--split-docs must be one of {', '.join(DOC_SPLITS)}, got {doc_split!r}")
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exn:
            raise DataError(f"cannot read input {path}: {exn.strerror}") from None
        if path.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        yield json.loads(line)["text"]
                    except (ValueError, KeyError, TypeError):
                        raise DataError(
                            f"{path}:{n}: expected a JSON object with a 'text' field"
                        ) from None
            continue
        if doc_split == "file":
            parts = [text]
        elif doc_split == "paragraph":
            parts = _PARAGRAPH.split(text)
        else:
            parts = text.splitlines()
        yield from (p for p in parts if p.strip())


_worker_tok: Tokenizer | None = None


def _init_worker(model_path: str) -> None:
    global _worker_tok
    _worker_tok = Tokenizer(model_path)


# A record to tokenize: (split, text, the record's other fields, e.g. a label's "cls").
# The text is one string (the `tokens.npy` member) or several by member stem, e.g.
# {"source": ..., "target": ...} for `source.npy` and `target.npy` (parallel text).
TextRecord = tuple[str, str | dict[str, str], dict[str, bytes]]


def _encode_doc(record: TextRecord) -> tuple[str, dict[str, bytes], int]:
    assert _worker_tok is not None
    split, text, extra = record
    fields, n_tokens = {}, 0
    for stem, part in ({"tokens": text} if isinstance(text, str) else text).items():
        ids = np.asarray(_worker_tok.encode(part), dtype=token_dtype(_worker_tok.vocab_size))
        buf = io.BytesIO()
        np.save(buf, ids, allow_pickle=False)
        fields[f"{stem}.npy"] = buf.getvalue()
        n_tokens += int(ids.size)
    return split, {**fields, **extra}, n_tokens


def is_val(index: int, val_fraction: float) -> bool:
    """Whether item `index` belongs to the validation split (evenly spread, exact count)."""
    return int((index + 1) * val_fraction) > int(index * val_fraction)


def split_documents(
    files: list[Path], doc_split: str, val_fraction: float, val_split: str,
    shuffle_seed: int | None = None,
) -> Iterator[tuple[str, str]]:  # fmt: skip
    """("train" | "val", text) for the documents of `files`; see the module docstring."""
    if val_split not in VAL_SPLITS:
        raise DataError(f"--val-split must be one of {', '.join(VAL_SPLITS)}, got {val_split!r}")
    if val_split == "spread":
        ranks = None
        if shuffle_seed is not None and val_fraction > 0:
            # a first pass counts the documents: the random order is over all of them
            ranks = seeded_ranks(sum(1 for _ in iter_documents(files, doc_split)), shuffle_seed)
        for i, text in enumerate(iter_documents(files, doc_split)):
            position = i if ranks is None else ranks[i]
            yield ("val" if is_val(position, val_fraction) else "train"), text
        return
    # tail: a first pass counts the characters, so the text itself is never held whole
    total = sum(len(text) for text in iter_documents(files, doc_split))
    cut = int(total * (1.0 - val_fraction))
    pos = 0
    for text in iter_documents(files, doc_split):
        end = pos + len(text)
        if end <= cut:
            yield "train", text
        elif pos >= cut:
            yield "val", text
        else:
            yield "train", text[: cut - pos]
            yield "val", text[cut - pos :]
        pos = end


def write_text_shards(
    inputs: list[str],
    tokenizer: str | Path,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.0,
    shard_size: str | int = "64MB",
    doc_split: str = "file",
    val_split: str = "spread",
    shuffle_seed: int | None = 0,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Manifest:
    """Tokenize documents into `train-NNNNNN.tar` / `val-NNNNNN.tar` shards plus manifest.

    Args:
        inputs: files, globs or directories of UTF-8 text (`.jsonl`: {"text": ...} lines).
        tokenizer: sentencepiece model file (or directory holding `tokenizer.model`).
        out_dir: output directory; also receives a copy of the tokenizer.
        val_fraction: share of documents for the "val" split, in [0, 1).
        shard_size: bytes per shard (archive size), e.g. "64MB".
        doc_split: "file", "paragraph" (blank-line separated) or "line".
        val_split: "spread" (every 1/F-th document of the random order) or "tail" (the
            last F of the text).
        shuffle_seed: seed of the validation choice and the written order (recorded in
            the manifest); None writes the input order.
        workers: tokenizer processes (default: all cores).
        progress: show a tqdm bar on stderr.
        overwrite: replace an earlier dataset in `out_dir`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if shuffle_seed is not None and shuffle_seed < 0:
        raise DataError(f"--seed must be >= 0, got {shuffle_seed}")
    tok = Tokenizer(tokenizer)
    max_bytes = parse_size(shard_size)
    files = expand_inputs(inputs)
    out = prepare_out_dir(out_dir, overwrite)
    docs = split_documents(files, doc_split, val_fraction, val_split, shuffle_seed)
    records = ((split, text, {}) for split, text in docs)
    shards = write_records(out, tok, records, max_bytes, shuffle_seed, workers, progress)
    if not shards:
        raise DataError("the inputs hold no documents (all empty)")
    manifest = text_manifest(tok, shards, shuffle_seed)
    manifest.save(out)
    return manifest


def write_records(
    out: Path, tok: Tokenizer, records: Iterable[TextRecord], max_bytes: int,
    shuffle_seed: int | None, workers: int | None, progress: bool, unit: str = "doc",
) -> list[ShardInfo]:  # fmt: skip
    """Tokenize `records` in a process pool (ordered, so the output is the same whatever
    `workers` is) into `out`'s train and val shards, plus a copy of the tokenizer; the
    shards written. The caller writes the manifest, last."""
    shutil.copyfile(tok.path, out / MODEL_FILE)
    (out / INFO_FILE).write_text(json.dumps(tok.info(), indent=2, sort_keys=True) + "\n")
    writers = {
        s: SplitWriter(out, s, max_bytes, 9, tok.hash, shuffle_seed) for s in ("train", "val")
    }
    workers = max(1, workers or os.cpu_count() or 1)
    if multiprocessing.current_process().daemon:  # daemons (DataLoader workers) can't fork
        workers = 1
    bar = tqdm(desc="tokenizing", unit=unit, file=sys.stderr, disable=not progress)
    pool = None
    if workers > 1:
        ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(str(tok.path),))
        encoded = pool.imap(_encode_doc, records, chunksize=8)
    else:
        _init_worker(str(tok.path))
        encoded = map(_encode_doc, records)
    try:
        for split, fields, n_tokens in encoded:
            writers[split].add(fields, tokens=n_tokens)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return writers["train"].close() + writers["val"].close()


def text_manifest(
    tok: Tokenizer, shards: list[ShardInfo], shuffle_seed: int | None, kind: str = "text",
    **labels: Any,
) -> Manifest:  # fmt: skip
    """The manifest of text shards made with `tok` (`kind` "pairs": parallel text;
    `labels`: classes and class_counts of labelled text)."""
    return Manifest(
        kind=kind,
        shards=shards,
        dtype=token_dtype(tok.vocab_size).name,
        tokenizer={"hash": tok.hash, "vocab_size": tok.vocab_size, "file": MODEL_FILE},
        shuffle_seed=shuffle_seed,
        **labels,
    )
