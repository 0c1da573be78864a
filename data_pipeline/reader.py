"""Reading one shard, and checking every record on the way.

Shards are opened with `webdataset.gopen` (paths, http(s), `pipe:`) and parsed by
`tar_stream.iter_samples`. All readers see the same bytes, so every check here fails the
same way on every rank and worker, which is what keeps `on_error: skip` consistent across
the job. A shard is bad when it cannot be opened, its tar stream is damaged (a header
checksum, a member cut short), it holds a different number of samples than the manifest
says, or a record fails to parse.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import webdataset as wds

from data_pipeline.errors import ShardError
from data_pipeline.tar_stream import iter_samples

_NPY_MAGIC = b"\x93NUMPY"
_SHAPE = re.compile(rb"'shape':\s*\(([\d,\s]*)\)")
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp")
PIXELS_KEY = "pixels.npy"  # decoded images stored as [H, W, 3] uint8 arrays


def _describe(exn: BaseException) -> str:
    """A one-line reason; webdataset appends streams and URLs to exception args."""
    first = exn.args[0] if exn.args else ""
    text = str(first).split(" @ ")[0].strip() if first else ""
    return f"{type(exn).__name__}: {text}" if text else type(exn).__name__


def read_shard(url: str, name: str, expected: int) -> Iterator[dict]:
    """Raw samples (dicts of bytes) of one shard, in archive order.

    Args:
        url: path, http(s) URL or `pipe:` command (anything `webdataset.gopen` opens).
        name: shard name used in errors.
        expected: samples the manifest lists; a different count is an error.
    """
    try:
        stream = wds.gopen(url)
    except FileNotFoundError as exn:
        # (for http and pipe: the missing file would be the helper program, e.g. curl)
        what = "not found" if exn.filename == url else f"cannot open: {exn}"
        raise ShardError(name, f"{what} ({url})") from None
    except Exception as exn:
        raise ShardError(name, f"cannot open {url}: {_describe(exn)}") from None
    count = 0
    complete = False
    try:
        for sample in iter_samples(stream):
            count += 1
            if count > expected:
                raise ShardError(name, f"holds more than the {expected} samples the manifest lists")
            yield sample
        complete = True
    except ShardError:
        raise
    except Exception as exn:  # tarfile and pipes raise many types on damaged input
        raise ShardError(
            name, f"damaged or unreadable after {count} samples ({_describe(exn)})"
        ) from None
    finally:
        try:
            stream.close()
        except Exception:
            if complete:  # a failing pipe: command shows up here
                raise ShardError(name, f"reading {url} failed") from None
    if count < expected:
        raise ShardError(
            name,
            f"holds {count} samples but the manifest lists {expected} (truncated or corrupted)",
        )


def _npy_layout(data: bytes, what: str) -> tuple[bytes, tuple[int, ...], int]:
    """(header, shape, offset of the data) of a `.npy` payload (v1/v2 layout).

    Parsed by hand from the fixed layout: `np.load` costs ~20 us per call, which the
    loaders cannot afford per record.
    """
    if data[:6] != _NPY_MAGIC:
        raise ValueError(f"{what} is not a .npy array")
    if data[6] == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    else:
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    header = data[start : start + hlen]
    if b"'fortran_order': False" not in header:
        raise ValueError(f"{what} is not a C-ordered array")
    m = _SHAPE.search(header)
    if m is None:
        raise ValueError(f"{what} has no readable shape")
    shape = tuple(int(d) for d in m.group(1).split(b",") if d.strip())
    return header, shape, start + hlen


def parse_tokens(data: bytes, dtype: np.dtype, vocab_size: int) -> np.ndarray:
    """Token ids of a `tokens.npy` payload, checked (format, dtype, length, id range)."""
    header, shape, offset = _npy_layout(data, "tokens.npy")
    if f"'descr': '{dtype.str}'".encode() not in header:
        raise ValueError(f"tokens.npy is not a {dtype.name} array")
    if len(shape) != 1:
        raise ValueError("tokens.npy is not a 1-d array")
    n = shape[0]
    if len(data) - offset != n * dtype.itemsize:
        raise ValueError(
            f"tokens.npy holds {len(data) - offset} bytes, expected {n * dtype.itemsize}"
        )
    ids = np.frombuffer(data, dtype=dtype, offset=offset)
    if n and int(ids.max()) >= vocab_size:
        raise ValueError(f"token id {int(ids.max())} is outside the vocabulary ({vocab_size})")
    return ids


def parse_pixels(data: bytes) -> np.ndarray:
    """The [H, W, 3] uint8 image of a `pixels.npy` payload, checked, without a copy."""
    header, shape, offset = _npy_layout(data, PIXELS_KEY)
    if b"'descr': '|u1'" not in header:
        raise ValueError(f"{PIXELS_KEY} is not a uint8 array")
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"{PIXELS_KEY} has shape {shape}, expected (height, width, 3)")
    if len(data) - offset != shape[0] * shape[1] * 3:
        raise ValueError(f"{PIXELS_KEY} holds {len(data) - offset} bytes for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def parse_image(sample: dict, num_classes: int) -> tuple[bytes | np.ndarray, int]:
    """(encoded image bytes or pixel array, class index) of an image sample, checked."""
    if PIXELS_KEY in sample:
        data: bytes | np.ndarray | None = parse_pixels(sample[PIXELS_KEY])
    else:
        data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None:
        raise ValueError(f"no image ({'/'.join((*IMAGE_KEYS, PIXELS_KEY))}) in sample")
    return data, parse_class(sample, num_classes)


def parse_class(sample: dict, num_classes: int) -> int:
    """The class index of a sample's `cls` member (images, labelled text), checked."""
    try:
        cls = int(sample["cls"])
    except (KeyError, ValueError):
        raise ValueError("missing or non-integer 'cls'") from None
    if not 0 <= cls < max(num_classes, 1):
        raise ValueError(f"class index {cls} is outside 0..{num_classes - 1}")
    return cls
