"""Reading one shard with webdataset, and checking every record on the way.

All readers see the same bytes, so every check here fails the same way on every rank and
worker, which is what keeps `on_error: skip` consistent across the job. A shard is bad
when it cannot be opened, its tar stream is damaged, it holds a different number of
samples than the manifest says (tarfile treats a damaged header after the first as the end
of the archive, so the count is what catches it), or a record fails to parse.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_pipeline.errors import ShardError

_NPY_MAGIC = b"\x93NUMPY"
_SHAPE = re.compile(rb"'shape':\s*\((\d+),?\)")
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp")


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
        files = tar_file_expander([{"url": url, "stream": stream}])
        for sample in group_by_keys(files):
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


def parse_tokens(data: bytes, dtype: np.dtype, vocab_size: int) -> np.ndarray:
    """Token ids of a `tokens.npy` payload, checked (format, dtype, length, id range).

    Parsed by hand from the fixed .npy v1/v2 layout: `np.load` costs ~20 us per call,
    which the GPT loader cannot afford per document.
    """
    if data[:6] != _NPY_MAGIC:
        raise ValueError("tokens.npy is not a .npy array")
    if data[6] == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    else:
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    header = data[start : start + hlen]
    if f"'descr': '{dtype.str}'".encode() not in header:
        raise ValueError(f"tokens.npy is not a {dtype.name} array")
    m = _SHAPE.search(header)
    if m is None:
        raise ValueError("tokens.npy is not a 1-d array")
    n = int(m.group(1))
    if len(data) - start - hlen != n * dtype.itemsize:
        raise ValueError(
            f"tokens.npy holds {len(data) - start - hlen} bytes, expected {n * dtype.itemsize}"
        )
    ids = np.frombuffer(data, dtype=dtype, offset=start + hlen)
    if n and int(ids.max()) >= vocab_size:
        raise ValueError(f"token id {int(ids.max())} is outside the vocabulary ({vocab_size})")
    return ids


def parse_image(sample: dict, num_classes: int) -> tuple[bytes, int]:
    """(encoded image bytes, class index) of an image sample, checked."""
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None:
        raise ValueError(f"no image ({'/'.join(IMAGE_KEYS)}) in sample")
    try:
        cls = int(sample["cls"])
    except (KeyError, ValueError):
        raise ValueError("missing or non-integer 'cls'") from None
    if not 0 <= cls < max(num_classes, 1):
        raise ValueError(f"class index {cls} is outside 0..{num_classes - 1}")
    return data, cls
