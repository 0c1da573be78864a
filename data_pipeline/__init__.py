"""gobig data pipeline: sentencepiece tokenizer, WebDataset shard writers, and resumable,
elastic streaming loaders for GPT, BERT (masked-LM and sequence classification) and ViT.
No Ray or DeepSpeed needed.

The public names load on first use (PEP 562), so `data_pipeline.errors` (the one base
of gobig's user-facing errors) can be imported without torch or webdataset.

User documentation: docs/data.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from data_pipeline.errors import DataError, ShardError

if TYPE_CHECKING:
    from data_pipeline.image_shards import write_image_shards
    from data_pipeline.labelled_text import write_labelled_shards
    from data_pipeline.loader import LoaderConfig, StreamingLoader, build_loader
    from data_pipeline.manifest import Manifest, ShardInfo, load_manifest
    from data_pipeline.sources import prepare_source, resolve_source
    from data_pipeline.text_shards import write_text_shards
    from data_pipeline.tokenizer import Tokenizer, train_tokenizer

# public name -> the module that defines it
_SOURCES = {
    "write_image_shards": "data_pipeline.image_shards",
    "write_labelled_shards": "data_pipeline.labelled_text",
    "LoaderConfig": "data_pipeline.loader",
    "StreamingLoader": "data_pipeline.loader",
    "build_loader": "data_pipeline.loader",
    "Manifest": "data_pipeline.manifest",
    "ShardInfo": "data_pipeline.manifest",
    "load_manifest": "data_pipeline.manifest",
    "prepare_source": "data_pipeline.sources",
    "resolve_source": "data_pipeline.sources",
    "write_text_shards": "data_pipeline.text_shards",
    "Tokenizer": "data_pipeline.tokenizer",
    "train_tokenizer": "data_pipeline.tokenizer",
}

__all__ = [
    "DataError",
    "LoaderConfig",
    "Manifest",
    "ShardError",
    "ShardInfo",
    "StreamingLoader",
    "Tokenizer",
    "build_loader",
    "load_manifest",
    "prepare_source",
    "resolve_source",
    "train_tokenizer",
    "write_image_shards",
    "write_labelled_shards",
    "write_text_shards",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
