"""Finding a non-finite value in a state dict before it is written.

A checkpoint of weights or optimizer moments holding inf or NaN resumes into a
dead run, and with `keep` small it may push the last good checkpoint out. The
writer (writer.py) looks at every floating-point tensor of every file it
writes, before writing it, and refuses the checkpoint if one is not finite.

The test is a sum: a sum is finite only if every element is (inf and NaN
propagate through addition), so a finite sum clears the whole tensor in one
vectorized pass. A non-finite sum is either a real inf/NaN or finite values
whose sum overflowed; `torch.isfinite(t).all()` decides (exact, but it writes
a bool per element and ran 30 times slower than the sum here, so it runs only
then). Host tensors are summed by numpy, whose pairwise sum read 15 GB/s on
this CPU against torch's 3; half precision is summed in fp32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

NUMPY_SUMMABLE = (torch.float32, torch.float64)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element of a floating-point tensor is finite."""
    t = tensor.detach()
    if t.device.type == "cpu" and t.dtype in NUMPY_SUMMABLE:
        with np.errstate(all="ignore"):  # an overflow or a NaN is the answer, not a warning
            total = float(np.sum(t.numpy()))
    else:  # fp16/bf16 (no numpy bf16), or on an accelerator
        total = float(t.sum(dtype=torch.float32 if t.element_size() < 4 else t.dtype))
    if np.isfinite(total):
        return True
    return bool(torch.isfinite(t).all())


def first_non_finite(obj: Any, key: str = "") -> str | None:
    """The dotted key of the first floating-point tensor in `obj` holding inf or NaN.

    Args:
        obj: a state dict (nested dicts, lists, tuples; anything else is skipped).
        key: the key `obj` itself is found under.
    """
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() and not all_finite(obj):
            return key or "<tensor>"
        return None
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for name, value in items:
        found = first_non_finite(value, f"{key}.{name}" if key else str(name))
        if found is not None:
            return found
    return None
