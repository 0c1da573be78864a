"""Image shard writer: an ImageFolder (directory or `.tar` of one) -> WebDataset shards.

Each sample is `{"__key__": "00000042", "jpg" | "png": <encoded image>, "cls": b"3"}`.
Images are copied as given, or resized to `image_size` x `image_size` and re-encoded
(JPEG quality 95, PNG stays PNG) in a process pool when `image_size` is set. Class
indices follow the sorted class (sub-folder) names, as torchvision's ImageFolder does.
Validation images are chosen per class by position (see `text_shards.is_val`).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from data_pipeline.errors import DataError
from data_pipeline.manifest import Manifest
from data_pipeline.shard_writer import SplitShardWriter, parse_size, prepare_out_dir
from data_pipeline.text_shards import is_val

IMAGE_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".bmp": "png", ".webp": "png"}


def _class_of(name: str) -> str | None:
    """Class (parent folder name) of an image path, None if not an image in a class dir."""
    p = PurePosixPath(name)
    if p.suffix.lower() not in IMAGE_EXTS or len(p.parts) < 2:
        return None
    return p.parts[-2]


def _list_folder(root: Path) -> list[tuple[str, str]]:
    """(relative path, class) of every image under root/<class>/, sorted."""
    items = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            cls = _class_of(rel)
            if cls is not None:
                items.append((rel, cls))
    return items


def _list_tar(path: Path) -> list[tuple[str, str]]:
    """(member name, class) of every image in a tar, in archive order (headers only)."""
    try:
        with tarfile.open(path, "r:*") as tf:
            return [(m.name, c) for m in tf if m.isfile() and (c := _class_of(m.name))]
    except (tarfile.TarError, OSError, EOFError) as exn:
        raise DataError(f"cannot read image archive {path}: {exn}") from None


def _iter_tar_bytes(path: Path, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of the wanted members, streamed with webdataset."""
    stream = wds.gopen(str(path))
    try:
        files = wds.tariterators.tar_file_expander([{"url": str(path), "stream": stream}])
        for item in files:
            if item and item["fname"] in wanted:
                yield item["fname"], item["data"]
    except Exception as exn:  # tarfile raises many types on damaged input
        raise DataError(f"cannot read image archive {path}: {exn}") from None
    finally:
        stream.close()


def _encode(job: tuple[str, bytes, int | None]) -> tuple[str, bytes, str]:
    """(name, encoded bytes, extension); re-encodes only when resizing or not jpg/png."""
    name, data, size = job
    suffix = PurePosixPath(name).suffix.lower()
    ext = IMAGE_EXTS[suffix]
    try:
        with Image.open(io.BytesIO(data)) as img:
            if size is None and suffix in (".jpg", ".jpeg", ".png"):
                img.verify()  # cheap header check; the bytes are kept as they are
                return name, data, ext
            img = img.convert("RGB")
            if size is not None:
                img = img.resize((size, size), Image.BICUBIC)
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=95) if ext == "jpg" else img.save(out, "PNG")
            return name, out.getvalue(), ext
    except (UnidentifiedImageError, OSError, SyntaxError) as exn:
        raise DataError(f"image {name} cannot be decoded: {exn}") from None


def write_image_shards(
    source: str | Path,
    out_dir: str | Path,
    *,
    image_size: int | None = None,
    val_fraction: float = 0.0,
    shard_size: str | int = "64MB",
    max_per_class: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Manifest:
    """Write an ImageFolder (directory or `.tar`) as `train/val-NNNNNN.tar` shards + manifest.

    Args:
        source: a directory with one sub-folder per class, or a tar of such a layout.
        out_dir: output directory.
        image_size: resize to this square size and re-encode (None: keep bytes).
        val_fraction: share of each class for the "val" split, in [0, 1).
        shard_size: bytes per shard (archive size), e.g. "64MB".
        max_per_class: keep only the first N images of each class (quick subsets).
        workers: encoding processes (default: all cores).
        progress: show a tqdm bar on stderr.
        overwrite: replace an earlier dataset in `out_dir`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if image_size is not None and image_size <= 0:
        raise DataError(f"--image-size must be positive, got {image_size}")
    src = Path(source)
    if src.is_dir():
        listing = _list_folder(src)
    elif src.is_file():
        listing = _list_tar(src)
    else:
        raise DataError(f"image input not found: {src}")
    if not listing:
        raise DataError(f"{src}: no images in an ImageFolder layout (<class>/<image>.jpg)")
    classes = sorted({c for _, c in listing})
    class_index = {c: i for i, c in enumerate(classes)}
    seen = [0] * len(classes)
    chosen: dict[str, tuple[int, str]] = {}  # name -> (class index, split)
    for name, cls in listing:
        ci = class_index[cls]
        if max_per_class is not None and seen[ci] >= max_per_class:
            continue
        chosen[name] = (ci, "val" if is_val(seen[ci], val_fraction) else "train")
        seen[ci] += 1
    out = prepare_out_dir(out_dir, overwrite)
    max_bytes = parse_size(shard_size)
    writers = {s: SplitShardWriter(out, s, max_bytes) for s in ("train", "val")}
    counts = {s: [0] * len(classes) for s in ("train", "val")}
    if src.is_dir():
        raw: Iterator[tuple[str, bytes]] = ((n, (src / n).read_bytes()) for n in chosen)
    else:
        raw = _iter_tar_bytes(src, set(chosen))
    jobs = ((n, data, image_size) for n, data in raw)
    workers = max(1, workers or os.cpu_count() or 1)
    if multiprocessing.current_process().daemon:  # daemons (DataLoader workers) can't fork
        workers = 1
    pool = None
    if workers > 1 and image_size is not None:
        ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        pool = ctx.Pool(workers)
        encoded = pool.imap(_encode, jobs, chunksize=16)
    else:
        encoded = map(_encode, jobs)
    bar = tqdm(total=len(chosen), desc="images", unit="img", file=sys.stderr, disable=not progress)
    try:
        for name, data, ext in encoded:
            ci, split = chosen[name]
            key = f"{sum(counts[split]):08d}"
            counts[split][ci] += 1
            writers[split].write({"__key__": key, ext: data, "cls": str(ci).encode()})
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    shards = writers["train"].close() + writers["val"].close()
    manifest = Manifest(
        kind="image",
        shards=shards,
        classes=classes,
        image_size=image_size,
        class_counts={s: c for s, c in counts.items() if sum(c)},
    )
    manifest.save(out)
    return manifest
