"""Built-in datasets, prepared (tokenizer + shards) on first use.

`builtin:stdlib` is the Python standard library's own `.py` sources (docs included: the
`pydoc_data` topics), found via `sysconfig`, sorted, tests and site-packages left out, up
to 12 MB: a corpus every machine has. `builtin:stdlib-mini` is its first 1 MB, for smoke
tests. Preparation trains a 4096-piece BPE tokenizer and writes shards with 5% validation
documents; it takes a few seconds on two cores.

`builtin:sst2` is SST-2 (movie-review sentences labelled 0 negative, 1 positive) from the
shared data folder beside the repository (`../shared/data/sst2/{train,dev}.tsv`, or
`$GOBIG_SHARED_DATA/sst2`): a 4096-piece BPE tokenizer trained on train.tsv, then
classification shards with dev.tsv as the validation split, exactly what
`gobig data tokenizer` and `gobig data text --labels` make of them (about 5 s).

`builtin:multi30k-en-de` is Multi30k English-German (image-caption translations) from the
shared data folder (`multi30k/{train,val}.{en,de}`): an 8000-piece BPE tokenizer trained
jointly on train.en and train.de, then parallel-text shards (`gobig data pairs`) with
val.en/val.de as the validation split (about 6 s).

The cache directory is `<root>/<name>-<fingerprint>` where root is the `cache_dir`
argument, else `$GOBIG_CACHE/data`, else `~/.cache/gobig/data`, and the fingerprint hashes
the selected files' contents and the preparation settings (another Python version gives
another directory). Concurrent preparers (several workers starting at once) serialise on a
file lock, build in a temporary directory and publish it with an atomic rename, so a
reader never sees a half-written dataset.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import DataError
from data_pipeline.labelled_text import write_labelled_shards
from data_pipeline.manifest import MANIFEST_FILE
from data_pipeline.pair_shards import write_pair_shards
from data_pipeline.text_shards import write_text_shards
from data_pipeline.tokenizer import train_tokenizer

PREP_VERSION = 2  # 2: shards written in a seeded random order
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass(frozen=True)
class BuiltinCorpus:
    """A named built-in corpus: how much of the stdlib it takes and how it is tokenized."""

    max_bytes: int
    vocab_size: int = 4096
    val_fraction: float = 0.05
    shard_size: str = "4MB"

    def files(self) -> list[Path]:
        """The input files (their names and bytes make the cache's fingerprint)."""
        return stdlib_files(self.max_bytes)

    def build(self, files: list[Path], tmp: Path, progress: bool) -> Path:
        """Write the dataset under `tmp`; its directory."""
        tok = train_tokenizer(
            files, tmp / "tok", vocab_size=self.vocab_size, model_type="bpe", num_threads=2
        )
        write_text_shards(
            [str(f) for f in files],
            tok.path,
            tmp / "ds",
            val_fraction=self.val_fraction,
            shard_size=self.shard_size,
            doc_split="file",
            progress=progress,
        )
        return tmp / "ds"


@dataclass(frozen=True)
class LabelledCorpus:
    """A labelled dataset of the shared data folder: `text<TAB>label` training and
    validation files, a BPE tokenizer trained on the training file."""

    folder: str
    train: str
    val: str
    vocab_size: int = 4096
    shard_size: str = "64MB"

    def files(self) -> list[Path]:
        """[training file, validation file]."""
        return shared_files(self.folder, [self.train, self.val])

    def build(self, files: list[Path], tmp: Path, progress: bool) -> Path:
        """Write the dataset under `tmp`; its directory."""
        train, val = files
        tok = train_tokenizer(
            [train], tmp / "tok", vocab_size=self.vocab_size, model_type="bpe", num_threads=2
        )
        # one process: this may run inside a training worker, whose threads make fork unsafe
        write_labelled_shards(
            [str(train)], tok.path, tmp / "ds", val_inputs=[str(val)],
            shard_size=self.shard_size, workers=1, progress=progress,
        )  # fmt: skip
        return tmp / "ds"


@dataclass(frozen=True)
class ParallelCorpus:
    """A translation dataset of the shared data folder: line-aligned `train.<src>` /
    `train.<tgt>` and `val.<src>` / `val.<tgt>` files, one BPE tokenizer trained on both
    training files (a joint vocabulary)."""

    folder: str
    source: str  # language suffixes, e.g. "en"
    target: str
    vocab_size: int = 8000
    shard_size: str = "8MB"  # a few shards: their seeded order varies the blocks per epoch

    def files(self) -> list[Path]:
        """[train source, train target, val source, val target]."""
        names = [
            f"{split}.{lang}" for split in ("train", "val") for lang in (self.source, self.target)
        ]
        return shared_files(self.folder, names)

    def build(self, files: list[Path], tmp: Path, progress: bool) -> Path:
        """Write the dataset under `tmp`; its directory."""
        train_src, train_tgt, val_src, val_tgt = files
        tok = train_tokenizer(
            [train_src, train_tgt], tmp / "tok", vocab_size=self.vocab_size, model_type="bpe",
            num_threads=2,
        )  # fmt: skip
        # one process: this may run inside a training worker, whose threads make fork unsafe
        write_pair_shards(
            train_src, train_tgt, tok.path, tmp / "ds", val_source=val_src, val_target=val_tgt,
            shard_size=self.shard_size, workers=1, progress=progress,
        )  # fmt: skip
        return tmp / "ds"


Corpus = BuiltinCorpus | LabelledCorpus | ParallelCorpus
BUILTINS: dict[str, Corpus] = {
    "stdlib": BuiltinCorpus(max_bytes=12_000_000),
    "stdlib-mini": BuiltinCorpus(max_bytes=1_000_000, vocab_size=1024, shard_size="256KB"),
    "sst2": LabelledCorpus("sst2", train="train.tsv", val="dev.tsv"),
    "multi30k-en-de": ParallelCorpus("multi30k", source="en", target="de"),
}


def shared_data_dir() -> Path:
    """The shared data folder: $GOBIG_SHARED_DATA, else `../shared/data` beside the
    repository (where tests, benchmarks and recipes find their datasets)."""
    if os.environ.get("GOBIG_SHARED_DATA"):
        return Path(os.environ["GOBIG_SHARED_DATA"])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_files(folder: str, names: list[str]) -> list[Path]:
    """The files `names` of `folder` in the shared data folder; DataError if one is
    missing."""
    paths = [shared_data_dir() / folder / name for name in names]
    for path in paths:
        if not path.is_file():
            raise DataError(
                f"built-in dataset {folder} needs {path} (the shared data folder "
                "beside the repository; set GOBIG_SHARED_DATA to where it is)"
            )
    return paths


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding prepared built-in datasets."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("GOBIG_CACHE"):
        return Path(os.environ["GOBIG_CACHE"]) / "data"
    return Path.home() / ".cache" / "gobig" / "data"


def stdlib_files(max_bytes: int) -> list[Path]:
    """Sorted standard-library sources, stopping before `max_bytes` in total."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        # _sysconfigdata describes this machine's build, not Python: keep it out
        if _EXCLUDED_DIRS & set(rel.parts[:-1]) or path.name.startswith("_sysconfigdata"):
            continue
        size = path.stat().st_size
        if total + size > max_bytes:
            break
        files.append(path)
        total += size
    if not files:
        raise DataError(f"no Python standard library sources found under {root}")
    return files


def _fingerprint(files: list[Path], corpus: Corpus) -> str:
    h = hashlib.sha256(f"{PREP_VERSION}|{corpus}".encode())
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def prepare_builtin(
    name: str, cache_dir: str | os.PathLike | None = None, progress: bool = False
) -> Path:
    """Path of the prepared dataset directory of built-in corpus `name` (built if needed).

    Args:
        name: "stdlib", "stdlib-mini", "sst2" or "multi30k-en-de".
        cache_dir: cache root (see module docstring).
        progress: show progress bars while preparing.
    """
    if name not in BUILTINS:
        raise DataError(f"unknown built-in source {name!r} (known: {', '.join(BUILTINS)})")
    corpus = BUILTINS[name]
    files = corpus.files()
    root = cache_root(cache_dir)
    final = root / f"{name}-{_fingerprint(files, corpus)}"
    if (final / MANIFEST_FILE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (final / MANIFEST_FILE).is_file():  # another process finished meanwhile
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
        try:
            built = corpus.build(files, tmp, progress)
            if final.exists():  # a broken earlier attempt (no manifest): replace it
                shutil.rmtree(final)
            os.rename(built, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
