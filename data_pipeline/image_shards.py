"""Image shard writer: an ImageFolder (directory or `.tar` of one) -> WebDataset shards.

Each sample is `{"__key__": "00000042", <image>, "cls": b"3"}` where the image is
- `pixels.npy`: the decoded [H, W, 3] uint8 array (`store="raw"`, and `"auto"` for images
  of at most 64 x 64 pixels: a CIFAR image is 3 kB either way, and loading it needs no
  JPEG decode, which costs more than a small ViT's step spends on it), or
- `jpg` | `png`: the encoded image, copied as given or re-encoded after a resize (JPEG
  quality 95, PNG stays PNG) (`store="encoded"`, and `"auto"` for larger images).
Images are resized to `image_size` x `image_size` when it is set; decoding and encoding
run in a process pool. Class indices follow the sorted class (sub-folder) names, as
torchvision's ImageFolder does.

Order. An ImageFolder lists its images class by class, so shards written in that order
hold one class each, and no shuffle buffer can mix them. By default (`shuffle_seed` set)
the validation images are drawn from a seeded random order of the input, per class
(exactly floor(n * F) of a class's n images), and each split is written in a seeded
random order (`shard_writer.SplitWriter`); `shuffle_seed=None` keeps the input order.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from data_pipeline.errors import DataError
from data_pipeline.manifest import Manifest
from data_pipeline.reader import PIXELS_KEY
from data_pipeline.shard_writer import SplitWriter, parse_size, prepare_out_dir, seeded_ranks
from data_pipeline.text_shards import is_val

IMAGE_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".bmp": "png", ".webp": "png"}
STORES = ("auto", "raw", "encoded")
SPLITS = ("train", "val")
RAW_MAX_PIXELS = 64 * 64  # "auto" stores images up to this many pixels as arrays


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


def _encode(job: tuple[str, bytes, int | None, str]) -> tuple[str, dict[str, bytes]]:
    """(name, {extension: bytes}) of one image: its pixels, or its encoded bytes (kept as
    they are unless resized or neither JPEG nor PNG)."""
    name, data, size, store = job
    suffix = PurePosixPath(name).suffix.lower()
    ext = IMAGE_EXTS[suffix]
    try:
        with Image.open(io.BytesIO(data)) as img:
            final = (size, size) if size is not None else img.size
            raw = store == "raw" or (store == "auto" and final[0] * final[1] <= RAW_MAX_PIXELS)
            if not raw and size is None and suffix in (".jpg", ".jpeg", ".png"):
                img.verify()  # cheap header check; the bytes are kept as they are
                return name, {ext: data}
            img = img.convert("RGB")
            if size is not None:
                img = img.resize((size, size), Image.BICUBIC)
            out = io.BytesIO()
            if raw:
                np.save(out, np.asarray(img, dtype=np.uint8), allow_pickle=False)
                return name, {PIXELS_KEY: out.getvalue()}
            img.save(out, format="JPEG", quality=95) if ext == "jpg" else img.save(out, "PNG")
            return name, {ext: out.getvalue()}
    except (UnidentifiedImageError, OSError, SyntaxError) as exn:
        raise DataError(f"image {name} cannot be decoded: {exn}") from None


def _choose(
    listing: list[tuple[str, str]], class_index: dict[str, int], val_fraction: float,
    max_per_class: int | None, shuffle_seed: int | None,
) -> dict[str, tuple[int, str]]:  # fmt: skip
    """name -> (class index, split) of the images to write: the first `max_per_class` of
    each class in input order; per class, every 1/F-th image of the seeded random order
    (or of the input order without a seed) goes to "val"."""
    kept, seen = [], [0] * len(class_index)
    for name, cls in listing:
        ci = class_index[cls]
        if max_per_class is None or seen[ci] < max_per_class:
            kept.append((name, ci))
            seen[ci] += 1
    order = range(len(kept))
    if shuffle_seed is not None:
        order = np.argsort(seeded_ranks(len(kept), shuffle_seed), kind="stable")
    position = [0] * len(class_index)
    chosen = {}
    for i in order:
        name, ci = kept[i]
        chosen[name] = (ci, "val" if is_val(position[ci], val_fraction) else "train")
        position[ci] += 1
    return chosen


def write_image_shards(
    source: str | Path,
    out_dir: str | Path,
    *,
    image_size: int | None = None,
    val_fraction: float = 0.0,
    shard_size: str | int = "64MB",
    max_per_class: int | None = None,
    store: str = "auto",
    shuffle_seed: int | None = 0,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Manifest:
    """Write an ImageFolder (directory or `.tar`) as `train/val-NNNNNN.tar` shards + manifest.

    Args:
        source: a directory with one sub-folder per class, or a tar of such a layout.
        out_dir: output directory.
        image_size: resize to this square size (None: keep each image's size).
        val_fraction: share of each class for the "val" split, in [0, 1).
        shard_size: bytes per shard (archive size), e.g. "64MB".
        max_per_class: keep only the first N images of each class (quick subsets).
        store: "raw" (uint8 pixel arrays), "encoded" (JPEG/PNG) or "auto" (raw up to
            64 x 64 pixels).
        shuffle_seed: seed of the validation choice and the written order (recorded
            in the manifest); None writes the input order.
        workers: encoding processes (default: all cores).
        progress: show a tqdm bar on stderr.
        overwrite: replace an earlier dataset in `out_dir`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if image_size is not None and image_size <= 0:
        raise DataError(f"--image-size must be positive, got {image_size}")
    if store not in STORES:
        raise DataError(f"--store must be one of {', '.join(STORES)}, got {store!r}")
    if shuffle_seed is not None and shuffle_seed < 0:
        raise DataError(f"--seed must be >= 0, got {shuffle_seed}")
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
    chosen = _choose(listing, class_index, val_fraction, max_per_class, shuffle_seed)
    out = prepare_out_dir(out_dir, overwrite)
    max_bytes = parse_size(shard_size)
    writers = {s: SplitWriter(out, s, max_bytes, 8, shuffle_seed=shuffle_seed) for s in SPLITS}
    counts = {s: [0] * len(classes) for s in SPLITS}
    if src.is_dir():
        raw: Iterator[tuple[str, bytes]] = ((n, (src / n).read_bytes()) for n in chosen)
    else:
        raw = _iter_tar_bytes(src, set(chosen))
    jobs = ((n, data, image_size, store) for n, data in raw)
    workers = max(1, workers or os.cpu_count() or 1)
    if multiprocessing.current_process().daemon:  # daemons (DataLoader workers) can't fork
        workers = 1
    pool = None
    if workers > 1 and (image_size is not None or store != "encoded"):
        ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        pool = ctx.Pool(workers)
        encoded = pool.imap(_encode, jobs, chunksize=16)
    else:
        encoded = map(_encode, jobs)
    bar = tqdm(total=len(chosen), desc="images", unit="img", file=sys.stderr, disable=not progress)
    try:
        for name, fields in encoded:
            ci, split = chosen[name]
            counts[split][ci] += 1
            writers[split].add({**fields, "cls": str(ci).encode()})
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
        shuffle_seed=shuffle_seed,
    )
    manifest.save(out)
    return manifest
