"""Built-in corpora every machine has, prepared (tokenizer + shards) on first use.

`builtin:stdlib` is the Python standard library's own `.py` sources (docs included: the
`pydoc_data` topics), found via `sysconfig`, sorted, tests and site-packages left out, up
to 12 MB. `builtin:stdlib-mini` is its first 1 MB, for smoke tests. Preparation trains a
4096-piece BPE tokenizer and writes shards with 5% validation documents; it takes a few
seconds on two cores.

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
from data_pipeline.manifest import MANIFEST_FILE
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


BUILTINS = {
    "stdlib": BuiltinCorpus(max_bytes=12_000_000),
    "stdlib-mini": BuiltinCorpus(max_bytes=1_000_000, vocab_size=1024, shard_size="256KB"),
}


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


def _fingerprint(files: list[Path], corpus: BuiltinCorpus) -> str:
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
        name: "stdlib" or "stdlib-mini".
        cache_dir: cache root (see module docstring).
        progress: show progress bars while preparing.
    """
    if name not in BUILTINS:
        raise DataError(f"unknown built-in source {name!r} (known: {', '.join(BUILTINS)})")
    corpus = BUILTINS[name]
    files = stdlib_files(corpus.max_bytes)
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
            tok = train_tokenizer(
                files, tmp / "tok", vocab_size=corpus.vocab_size, model_type="bpe", num_threads=2
            )
            write_text_shards(
                [str(f) for f in files],
                tok.path,
                tmp / "ds",
                val_fraction=corpus.val_fraction,
                shard_size=corpus.shard_size,
                doc_split="file",
                progress=progress,
            )
            if final.exists():  # a broken earlier attempt (no manifest): replace it
                shutil.rmtree(final)
            os.rename(tmp / "ds", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
