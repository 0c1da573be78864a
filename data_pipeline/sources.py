"""Where shards come from: a `data.source` string resolved to shard URLs plus manifest.

Accepted sources:
- `builtin:NAME`: a built-in corpus, prepared and cached on first use (see builtin.py);
- a local directory holding `manifest.json` (its shards of the requested split);
- a manifest URL ending in `.json` (path, http(s) URL or `pipe:` command);
- shard URLs with brace patterns: `/data/train-{000000..000009}.tar`,
  `https://host/ds/train-{000000..000009}.tar`,
  `pipe:aws s3 cp s3://bucket/train-{000000..000009}.tar -`. Their manifest is found next
  to them (the shard file name replaced by `manifest.json`), or given explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import braceexpand
import webdataset as wds

from data_pipeline.errors import DataError
from data_pipeline.manifest import (
    MANIFEST_FILE,
    TOKEN_KINDS,
    Manifest,
    load_manifest,
    shard_basename,
    sibling_url,
)
from data_pipeline.order import ShardRef
from data_pipeline.tokenizer import file_hash

BUILTIN_PREFIX = "builtin:"


@dataclass
class ResolvedSource:
    """Shards to read, their manifest, and the dataset's own tokenizer copy if local."""

    manifest: Manifest
    shards: list[ShardRef]
    tokenizer_path: str | None


def prepare_source(source: str, cache_dir: str | None = None) -> str:
    """A source usable by `resolve_source`: builtin corpora are prepared (cached) into a
    dataset directory whose path is returned; anything else is returned unchanged.

    Args:
        source: a `data.source` string.
        cache_dir: cache root for built-in corpora (default: $GOBIG_CACHE/data or
            ~/.cache/gobig/data).
    """
    if source.startswith(BUILTIN_PREFIX):
        from data_pipeline.builtin import prepare_builtin

        return str(prepare_builtin(source[len(BUILTIN_PREFIX) :], cache_dir))
    return source


def resolve_source(
    source: str, split: str, *, manifest: str | None = None, cache_dir: str | None = None
) -> ResolvedSource:
    """Shards of `source` (of `split` when the source is a dataset) and their manifest.

    Args:
        source: see the module docstring.
        split: "train" or "val"; selects shards when the source names a whole dataset.
        manifest: manifest URL overriding the one found next to the shards.
        cache_dir: cache root for built-in corpora.
    """
    if not source:
        raise DataError("data.source is empty")
    source = prepare_source(source, cache_dir)
    if os.path.isdir(source):
        manifest_url = manifest or os.path.join(source, MANIFEST_FILE)
        patterns = None
    elif source.endswith(".json"):
        manifest_url, patterns = manifest or source, None
    else:
        patterns = list(braceexpand.braceexpand(source))
        manifest_url = manifest or sibling_url(source, MANIFEST_FILE)
    man = load_manifest(manifest_url)
    by_name = {s.name: s for s in man.shards}
    if patterns is None:
        infos = man.split_shards(split)
        if not infos:
            raise DataError(f"manifest {manifest_url} lists no shards for split {split!r}")
        shards = [
            ShardRef(sibling_url(manifest_url, s.name), s.name, s.samples, s.tokens) for s in infos
        ]
    else:
        shards = []
        for url in patterns:
            name = shard_basename(url)
            if name not in by_name:
                raise DataError(f"shard {name} is not listed in manifest {manifest_url}")
            info = by_name[name]
            shards.append(ShardRef(url, name, info.samples, info.tokens))
    return ResolvedSource(
        manifest=man, shards=shards, tokenizer_path=_dataset_tokenizer(man, manifest_url, cache_dir)
    )


def _dataset_tokenizer(man: Manifest, manifest_url: str, cache_dir: str | None) -> str | None:
    """Local path of the tokenizer stored beside the manifest; remote copies (http, pipe:)
    are fetched once into the cache, checked against the manifest's hash."""
    name = man.tokenizer.get("file")
    if man.kind not in TOKEN_KINDS or not name:
        return None
    url = sibling_url(manifest_url, name)
    if "://" not in url and not url.startswith("pipe:"):
        return url if os.path.isfile(url) else None
    from data_pipeline.builtin import cache_root

    want = man.tokenizer.get("hash", "")
    path = cache_root(cache_dir) / "tokenizers" / f"{want or 'unknown'}.model"
    if path.is_file() and file_hash(path) == want:
        return str(path)
    try:
        stream = wds.gopen(url)
        try:
            data = stream.read()
        finally:
            stream.close()
    except Exception:  # the caller reports the missing tokenizer
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # atomic: concurrent workers never see half a file
    return str(path)


def check_tokenizer(
    resolved: ResolvedSource, tokenizer_hash: str, tokenizer_path: str
) -> list[tuple[ShardRef, str]]:
    """Shards made with another tokenizer than the configured one, with the reason."""
    by_name = {s.name: s for s in resolved.manifest.shards}
    default = resolved.manifest.tokenizer.get("hash", "")
    bad = []
    for ref in resolved.shards:
        made_with = by_name[ref.name].tokenizer or default
        if made_with != tokenizer_hash:
            bad.append(
                (
                    ref,
                    f"made with tokenizer {made_with or '(unknown)'}, but the "
                    f"configured tokenizer {tokenizer_path} is {tokenizer_hash}",
                )
            )
    return bad
