"""Session-wide test data: small real datasets built once from ../shared/data.

Text: a sentencepiece tokenizer and WebDataset shards of tiny Shakespeare.
Images: CIFAR-10 JPEGs (a few per class) written as image shards. Every test
that trains uses these, so they are prepared once per session in a temporary
directory. GOBIG_CACHE points at a temporary directory too, so tests never
touch the user's cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"
CIFAR_TAR = SHARED_DATA / "cifar10-train.tar"


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"test data missing: {path} (../shared/data must sit beside the repo)")
    return path


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("gobig-cache")
    os.environ["GOBIG_CACHE"] = str(cache)
    os.environ.setdefault("WANDB_SILENT", "true")
    return cache


@pytest.fixture(scope="session")
def text_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared text dataset directory (manifest, shards, tokenizer.model)."""
    from data_pipeline import train_tokenizer, write_text_shards

    root = tmp_path_factory.mktemp("shakespeare")
    tok = train_tokenizer([_require(SHAKESPEARE)], root / "tok", vocab_size=512)
    out = root / "shards"
    write_text_shards(
        [str(SHAKESPEARE)], tok.path, out, val_fraction=0.1, shard_size="64KB",
        doc_split="paragraph", progress=False,
    )  # fmt: skip
    return out


CIFAR_HEAD_PER_CLASS = 300


@pytest.fixture(scope="session")
def cifar_tar_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 images of each class of the CIFAR-10 tar, as a tar of the same
    layout and archive order (class by class).

    Writers that keep "the first N per class" (N <= 300) choose exactly the images
    they would from the whole archive, without reading 50,000 members each time.
    """
    import tarfile

    path = tmp_path_factory.mktemp("cifar-head") / "cifar10-head.tar"
    with tarfile.open(_require(CIFAR_TAR), "r|*") as src, tarfile.open(path, "w") as dst:
        for member in src:
            stem = member.name.rsplit("/", 1)[-1].split(".", 1)[0]
            if not member.isfile() or (stem.isdigit() and int(stem) < CIFAR_HEAD_PER_CLASS):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return path


@pytest.fixture(scope="session")
def image_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared image dataset directory: 12 CIFAR-10 images per class."""
    from data_pipeline import write_image_shards

    out = tmp_path_factory.mktemp("cifar") / "shards"
    write_image_shards(
        _require(CIFAR_TAR), out, val_fraction=0.25, max_per_class=12, shard_size="32KB",
        progress=False,
    )  # fmt: skip
    return out
