"""The manifest: one JSON file next to the shards that says what they hold.

Schema (format "gobig-shards", version 1)::

    {
      "format": "gobig-shards", "version": 1,
      "kind": "text" | "image" | "pairs",
      "tokenizer": {"hash": "...", "vocab_size": 4096, "file": "tokenizer.model"},  # text, pairs
      "dtype": "uint16" | "uint32",                                                 # text, pairs
      "classes": ["0", "1"], "class_counts": {...},                                 # labelled text
      "classes": ["airplane", ...], "image_size": 32 | null,                         # image
      "class_counts": {"train": [..per class..], "val": [...]},                      # image
      "shuffle_seed": 0 | null,   # seed of the written order (null: input order)
      "splits": {"train": {"shards": 3, "samples": 900, "tokens": 123456}, ...},
      "shards": [
        {"name": "train-000000.tar", "split": "train", "samples": 300,
         "tokens": 41000, "bytes": 83968, "sha256": "...", "tokenizer": "<hash>"}, ...
      ]
    }

Labelled text (`gobig data text --labels`) is kind "text" plus `classes`, the label names
(a sample's `cls` member is the index into them), and `class_counts`, as images have.
Parallel text (`gobig data pairs`) is kind "pairs": a sample holds `source.npy` and
`target.npy`, and `tokens` counts the ids of both sides.
Shard names are relative to the manifest's location (a directory, an http(s) base or the
argument of a `pipe:` command). `samples` counts WebDataset samples, `tokens` counts token
ids (text; document separators not included).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import webdataset as wds

from data_pipeline.errors import DataError

FORMAT = "gobig-shards"
VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKEN_KINDS = ("text", "pairs")  # shards of token ids, made with the manifest's tokenizer


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it."""

    name: str
    split: str
    samples: int
    bytes: int = 0
    sha256: str = ""
    tokens: int = 0
    tokenizer: str = ""


@dataclass
class Manifest:
    """A dataset's manifest (see module docstring for the JSON schema)."""

    kind: str
    shards: list[ShardInfo]
    tokenizer: dict = field(default_factory=dict)
    dtype: str = ""
    classes: list[str] = field(default_factory=list)
    image_size: int | None = None
    class_counts: dict = field(default_factory=dict)
    shuffle_seed: int | None = None
    url: str = ""  # where it was loaded from (not stored)

    def split_shards(self, split: str) -> list[ShardInfo]:
        """Shards of one split, in manifest order."""
        return [s for s in self.shards if s.split == split]

    def to_json(self) -> dict:
        """The JSON document (splits summary computed from the shards)."""
        splits: dict[str, dict] = {}
        for s in self.shards:
            agg = splits.setdefault(s.split, {"shards": 0, "samples": 0, "tokens": 0})
            agg["shards"] += 1
            agg["samples"] += s.samples
            agg["tokens"] += s.tokens
        doc: dict = {"format": FORMAT, "version": VERSION, "kind": self.kind}
        if self.kind in TOKEN_KINDS:
            doc.update(tokenizer=self.tokenizer, dtype=self.dtype)
            if self.classes:  # labelled text
                doc.update(classes=self.classes, class_counts=self.class_counts)
        else:
            doc.update(
                classes=self.classes, image_size=self.image_size, class_counts=self.class_counts
            )
        doc.update(
            shuffle_seed=self.shuffle_seed, splits=splits, shards=[asdict(s) for s in self.shards]
        )
        return doc

    def save(self, directory: str | Path) -> Path:
        """Write `manifest.json` into `directory`."""
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n")
        return path


def parse_manifest(doc: dict, url: str) -> Manifest:
    """Validate a decoded manifest document; DataError names `url` on anything wrong."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"manifest {url}: not a gobig shard manifest (format != {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise DataError(f"manifest {url}: unsupported version {doc.get('version')!r}")
    kind = doc.get("kind")
    if kind not in (*TOKEN_KINDS, "image"):
        raise DataError(f"manifest {url}: kind must be 'text', 'pairs' or 'image', got {kind!r}")
    try:
        shards = [ShardInfo(**s) for s in doc["shards"]]
    except (KeyError, TypeError) as exn:
        raise DataError(f"manifest {url}: bad shard list ({exn})") from None
    return Manifest(
        kind=kind,
        shards=shards,
        tokenizer=doc.get("tokenizer", {}),
        dtype=doc.get("dtype", ""),
        classes=doc.get("classes", []),
        image_size=doc.get("image_size"),
        class_counts=doc.get("class_counts", {}),
        shuffle_seed=doc.get("shuffle_seed"),
        url=url,
    )


def load_manifest(url: str) -> Manifest:
    """Read a manifest from a local path, an http(s) URL or a `pipe:` command.

    Args:
        url: where the manifest is (any URL `webdataset.gopen` opens).
    """
    try:
        stream = wds.gopen(url)
        try:
            raw = stream.read()
        finally:
            stream.close()
    except FileNotFoundError as exn:
        if exn.filename != url:  # a helper program (curl) is missing, not the manifest
            raise DataError(f"manifest {url} could not be opened: {exn}") from None
        raise DataError(f"manifest not found: {url}") from None
    except OSError as exn:
        raise DataError(f"manifest {url} could not be read: {exn}") from None
    if not raw:
        raise DataError(f"manifest {url} is empty or could not be fetched")
    try:
        doc = json.loads(raw)
    except ValueError as exn:
        raise DataError(f"manifest {url} is not valid JSON: {exn}") from None
    return parse_manifest(doc, url)


# A shard file name inside a URL or command: the last path component ending in .tar,
# brace patterns included (shard-{000000..000099}.tar).
_SHARD_NAME = re.compile(r"[^/\s'\"]*\.tar(?=$|[\s'\"])")


def sibling_url(url: str, name: str) -> str:
    """`url` with its last file name (a shard or the manifest) replaced by `name`.

    Works alike for paths, http(s) URLs and `pipe:` commands, which is what lets a
    manifest name its shards relative to itself wherever it lives.
    """
    base = MANIFEST_FILE if MANIFEST_FILE in url else None
    if base is not None:
        i = url.rindex(base)
        return url[:i] + name + url[i + len(base) :]
    matches = list(_SHARD_NAME.finditer(url))
    if not matches:
        raise DataError(f"cannot tell the shard file name in {url!r} (expected NAME.tar)")
    m = matches[-1]
    return url[: m.start()] + name + url[m.end() :]


def shard_basename(url: str) -> str:
    """The shard file name in a shard URL, path or pipe: command."""
    matches = list(_SHARD_NAME.finditer(url))
    if not matches:
        raise DataError(f"cannot tell the shard file name in {url!r} (expected NAME.tar)")
    return matches[-1].group(0)
