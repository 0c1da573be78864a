"""A failed checkpoint write as one line a user can act on, and the warning before one.

torch reports a full disk as `RuntimeError: basic_ios::clear: iostream error`
or an `inline_container` / `PytorchStreamWriter` error that never says "no
space"; the errno, when Python saw one, is in the exception's chain. When
nothing names the cause, a disk with (almost) no room left is taken to be it.
"""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# How torch words a failed write when the errno did not reach it.
TORCH_WRITE_FAILURES = ("iostream error", "inline_container", "PytorchStreamWriter",
                        "PyTorchStreamWriter", "file write failed", "unexpected pos")  # fmt: skip
NEARLY_FULL = 1 << 20  # bytes: below this, a write error without an errno is a full disk


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(path: str | Path) -> int | None:
    """Free space on the file system holding `path` (or its nearest existing parent)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def os_error_of(exn: BaseException) -> OSError | None:
    """The first OSError with an errno in `exn`'s chain (itself, its cause, its context)."""
    seen: set[int] = set()
    current: BaseException | None = exn
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        current = current.__cause__ or current.__context__
    return None


def describe_write_error(
    exn: BaseException,
    path: str | Path,
    expected_bytes: int | None,
    written_bytes: int,
    shown: str | None = None,
) -> str:
    """`PATH: CAUSE` in one line; for a full disk with the room needed and the room left.

    Args:
        exn: what writing raised.
        path: the file being written.
        expected_bytes: the size of the previous checkpoint (None if there is none).
        written_bytes: what this writer had written before it failed.
        shown: how to name the file in the message (default: `path`).
    """
    path, shown = Path(path), shown or str(path)
    os_error = os_error_of(exn)
    first_line = (str(exn).strip().splitlines() or [type(exn).__name__])[0]
    free = free_bytes(path)
    torch_failure = isinstance(exn, RuntimeError) and any(
        s in str(exn) for s in TORCH_WRITE_FAILURES
    )
    if os_error is not None and os_error.errno in NO_SPACE:
        cause = "disk quota exceeded" if os_error.errno == errno.EDQUOT else ""
    elif os_error is None and torch_failure and free is not None and free < NEARLY_FULL:
        cause = f"torch said: {first_line}"
    elif os_error is not None:
        return f"{shown}: {os_error.strerror or os_error}"
    elif torch_failure:
        return f"{shown}: write failed ({first_line})"
    else:
        return f"{shown}: {type(exn).__name__}: {first_line}"
    if expected_bytes:
        need = f"the checkpoint needs about {human_bytes(expected_bytes)}, the previous one's size"
    else:
        need = f"{human_bytes(written_bytes)} written before the failure"
    room = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    detail = "; ".join(part for part in (cause, need, room) if part)
    return f"{shown}: no space left on device ({detail})"


# Causes a restart would only meet again (until someone frees space, fixes permissions
# or lowers the learning rate).
LASTING = ("no space left on device", "non-finite values", "Permission denied",
           "Read-only file system")  # fmt: skip


def is_lasting(message: str) -> bool:
    """Whether a failed save's message names a cause that retrying would not cure."""
    return any(cause in message for cause in LASTING)


def warn_if_low_on_space(folder: Path, expected_bytes: int | None) -> bool:
    """Before a save: warn (one line on stderr) when the checkpoint disk has less than
    twice the previous checkpoint's size free: the next save still fits, the one
    after may not, and there is still time to act. Returns whether it warned.

    Args:
        folder: where the checkpoint goes.
        expected_bytes: the previous checkpoint's size (None: nothing to compare).
    """
    free = free_bytes(folder)
    if not expected_bytes or free is None or free >= 2 * expected_bytes:
        return False
    print(
        f"gobig: warning: {human_bytes(free)} free for checkpoints in {folder}, less than "
        f"twice the last checkpoint's {human_bytes(expected_bytes)}: free space (or lower "
        "checkpoint.keep) before a save fails",
        file=sys.stderr,
        flush=True,
    )
    return True
