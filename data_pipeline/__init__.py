"""gobig data pipeline: sentencepiece tokenizer, WebDataset shard writers, and resumable,
elastic streaming loaders for GPT, BERT and ViT. No Ray or DeepSpeed needed.

User documentation: docs/data.md.
"""

from __future__ import annotations

from data_pipeline.errors import DataError, ShardError
from data_pipeline.image_shards import write_image_shards
from data_pipeline.loader import LoaderConfig, StreamingLoader, build_loader
from data_pipeline.manifest import Manifest, ShardInfo, load_manifest
from data_pipeline.sources import prepare_source, resolve_source
from data_pipeline.text_shards import write_text_shards
from data_pipeline.tokenizer import Tokenizer, train_tokenizer

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
    "write_text_shards",
]
