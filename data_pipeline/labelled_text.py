"""Labelled text -> sequence-classification shards (`gobig data text --labels`).

Input, one sample per line:
- `.jsonl` files: `{"text": "...", "label": "positive"}` (a label may be a string or an
  integer);
- any other file: `text<TAB>label` (split at the last tab; surrounding whitespace of both
  is dropped). `header=True` skips each such file's first line (GLUE's own SST-2 files
  start with `sentence<TAB>label`; the copies in ../shared/data do not).
Blank lines are skipped. A line without a tab, with empty text or an empty label, bad
JSON, or a label outside the label list is a `DataError` naming `file:line`. Every line is
checked in a first pass, before the output directory is touched, so a bad line leaves
nothing behind; the manifest is written last, as always.

Each sample is a text sample (`tokens.npy`, the token ids of the text, no special tokens)
plus `cls`, the label's index as ASCII (as image shards). The manifest is a text manifest
plus `classes` (the label names: index i is label i) and `class_counts` per split.

Label order: given (`labels=[...]`, ids in that order), or else the distinct labels of the
training input, sorted, numerically when every one is an integer. Sorted rather than
first-seen because the ids then depend only on the set of labels, not on which line comes
first (SST-2's first training line is positive, so first-seen order would make "1" id 0),
and integer labels 0..K-1 keep their own value as id.

Validation: `val_inputs` (every line of those files, e.g. SST-2's dev.tsv), or a share
`val_fraction` of the input lines chosen as the text writer does (the "spread" rule over
a seeded random order, text_shards.py). Validation labels must be among the training
labels (an unseen one could never be predicted, and would shift no id silently).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import DataError
from data_pipeline.manifest import Manifest
from data_pipeline.shard_writer import parse_size, prepare_out_dir, seeded_ranks
from data_pipeline.text_shards import (
    TextRecord,
    expand_inputs,
    is_val,
    text_manifest,
    write_records,
)
from data_pipeline.tokenizer import Tokenizer

_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class LabelledLine:
    """One sample of a labelled file, with where it came from."""

    path: Path
    line: int
    text: str
    label: str


def iter_labelled(path: Path, header: bool = False) -> Iterator[LabelledLine]:
    """The samples of one labelled file (see the module docstring); DataError names
    `path:line` for a malformed one.

    Args:
        path: a `.jsonl` file or a `text<TAB>label` file.
        header: skip the first line of a `text<TAB>label` file.
    """
    try:
        content = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exn:
        raise DataError(f"cannot read input {path}: {exn.strerror}") from None
    jsonl = path.suffix == ".jsonl"
    # split("\n"), not splitlines(): that also splits on \x0c, \x1c, \u2028, ..., which
    # would cut a text in two and shift every later line number
    for n, raw in enumerate(content.split("\n"), 1):
        line = raw.removesuffix("\r")
        if not line.strip() or (header and n == 1 and not jsonl):
            continue
        text, label = _parse_json(line) if jsonl else _parse_tsv(line)
        if text is None:
            raise DataError(f"{path}:{n}: {label}")
        yield LabelledLine(path, n, text, label)


def _parse_tsv(line: str) -> tuple[str | None, str]:
    """(text, label), or (None, what is wrong)."""
    if "\t" not in line:
        return None, "expected text<TAB>label, found no tab"
    text, label = (part.strip() for part in line.rsplit("\t", 1))
    if not text:
        return None, "empty text"
    if not label:
        return None, "empty label"
    return text, label


def _parse_json(line: str) -> tuple[str | None, str]:
    try:
        obj = json.loads(line)
    except ValueError:
        return None, "not valid JSON"
    if not isinstance(obj, dict) or "text" not in obj or "label" not in obj:
        return None, 'expected a JSON object with "text" and "label"'
    text, label = obj["text"], obj["label"]
    if not isinstance(text, str) or not text.strip():
        return None, '"text" must be a non-empty string'
    # bool is an int subclass, and true/false are no class names
    if isinstance(label, bool) or not isinstance(label, str | int):
        return None, f'"label" must be a string or an integer, got {json.dumps(label)}'
    label = str(label).strip()
    if not label:
        return None, "empty label"
    return text.strip(), label


def sorted_labels(labels: set[str]) -> list[str]:
    """Label names in id order: sorted, numerically when every one is an integer."""
    if labels and all(_INTEGER.fullmatch(x) for x in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def parse_label_list(text: str) -> list[str]:
    """`--labels a,b,c` as a list of distinct, non-empty names (ids in that order)."""
    names = [x.strip() for x in text.split(",")]
    if not all(names):
        raise DataError(f"--labels: empty label name in {text!r}")
    if len(set(names)) != len(names):
        raise DataError(f"--labels: a label is listed twice in {text!r}")
    return names


def _show(names: list[str]) -> str:
    shown = ", ".join(names[:10])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 10 else "")


def check_labelled_inputs(
    files: list[Path], val_files: list[Path], labels: list[str] | None, header: bool
) -> tuple[list[str], int]:
    """Check every line of the inputs (first pass); (label names in id order, number of
    training-input lines)."""
    seen: set[str] = set()
    count = 0
    for path in files:
        for item in iter_labelled(path, header):
            if labels is not None and item.label not in labels:
                raise DataError(
                    f"{path}:{item.line}: label {item.label!r} is not one of --labels "
                    f"({_show(labels)})"
                )
            seen.add(item.label)
            count += 1
    if count == 0:
        raise DataError(f"the inputs hold no labelled lines: {', '.join(map(str, files))}")
    names = labels if labels is not None else sorted_labels(seen)
    for path in val_files:
        for item in iter_labelled(path, header):
            if item.label not in names:
                raise DataError(
                    f"{path}:{item.line}: validation label {item.label!r} is not among the "
                    f"training labels ({_show(names)})"
                )
    return names, count


def write_labelled_shards(
    inputs: list[str],
    tokenizer: str | Path,
    out_dir: str | Path,
    *,
    labels: list[str] | None = None,
    val_inputs: list[str] | None = None,
    val_fraction: float = 0.0,
    header: bool = False,
    shard_size: str | int = "64MB",
    shuffle_seed: int | None = 0,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Manifest:
    """Tokenize labelled lines into `train-NNNNNN.tar` / `val-NNNNNN.tar` classification
    shards plus manifest (see the module docstring).

    Args:
        inputs: training files, globs or directories (`.jsonl`, else `text<TAB>label`).
        tokenizer: sentencepiece model file (or directory holding `tokenizer.model`).
        out_dir: output directory; also receives a copy of the tokenizer.
        labels: the label names in id order; None: the training labels, sorted.
        val_inputs: files whose every line is validation (not with `val_fraction`).
        val_fraction: share of the input lines for "val", in [0, 1).
        header: skip the first line of each `text<TAB>label` file.
        shard_size: bytes per shard (archive size), e.g. "64MB".
        shuffle_seed: seed of the validation choice and the written order; None: input
            order.
        workers: tokenizer processes (default: all cores).
        progress: show a tqdm bar on stderr.
        overwrite: replace an earlier dataset in `out_dir`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if val_inputs and val_fraction > 0:
        raise DataError("give --val FILE or --val-fraction, not both")
    if shuffle_seed is not None and shuffle_seed < 0:
        raise DataError(f"--seed must be >= 0, got {shuffle_seed}")
    tok = Tokenizer(tokenizer)
    max_bytes = parse_size(shard_size)
    files = expand_inputs(inputs)
    val_files = expand_inputs(val_inputs) if val_inputs else []
    names, count = check_labelled_inputs(files, val_files, labels, header)
    ranks = None
    if shuffle_seed is not None and val_fraction > 0:
        ranks = seeded_ranks(count, shuffle_seed)
    ids = {name: i for i, name in enumerate(names)}
    counts = {"train": [0] * len(names), "val": [0] * len(names)}

    def records() -> Iterator[TextRecord]:
        position = 0
        for path in files:
            for item in iter_labelled(path, header):
                at = position if ranks is None else int(ranks[position])
                split = "val" if is_val(at, val_fraction) else "train"
                position += 1
                counts[split][ids[item.label]] += 1
                yield split, item.text, {"cls": str(ids[item.label]).encode()}
        for path in val_files:
            for item in iter_labelled(path, header):
                counts["val"][ids[item.label]] += 1
                yield "val", item.text, {"cls": str(ids[item.label]).encode()}

    out = prepare_out_dir(out_dir, overwrite)
    shards = write_records(out, tok, records(), max_bytes, shuffle_seed, workers, progress)
    class_counts = {s: c for s, c in counts.items() if sum(c)}
    manifest = text_manifest(tok, shards, shuffle_seed, classes=names, class_counts=class_counts)
    manifest.save(out)
    return manifest
