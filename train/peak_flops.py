"""The peak matmul FLOP/s of this worker's device, the denominator of MFU.

MFU (model FLOPs utilisation) = model training FLOP/s / peak FLOP/s. Set
`train.peak_tflops` to a datasheet figure (for example 989 for an H100 SXM in
bf16) or leave it unset: gobig then times a large square matmul in the
training precision on the worker's device once and caches the result in
~/.cache/gobig/peak_flops.json (keyed by device, dtype and thread count).
Measure a machine by hand with `python -m train.peak_flops`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

CACHE = Path(os.environ.get("GOBIG_CACHE", Path.home() / ".cache" / "gobig")) / "peak_flops.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure_matmul_flops(
    device: torch.device,
    dtype: torch.dtype,
    size: int = 1024,
    trials: int = 5,
    seconds_per_trial: float = 0.1,
) -> float:
    """Best sustained FLOP/s of `size`-square matmuls over a few short trials.

    The best trial, not the mean: a peak is what the hardware can do, and a
    neighbour's burst of load should not lower it.
    """
    # A private generator: measuring must not move the training RNG (dropout).
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    for _ in range(3):  # warm-up: allocator, kernel selection, clocks
        a @ b
    best = 0.0
    for _ in range(trials):
        _sync(device)
        count, start = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds_per_trial:
                break
        best = max(best, 2 * size**3 * count / elapsed)
    return best


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        from deepspeed.accelerator import get_accelerator

        get_accelerator().synchronize()


def _key(device: torch.device, precision: str) -> str:
    name = platform.processor() or platform.machine()
    if device.type != "cpu":
        from deepspeed.accelerator import get_accelerator

        name = get_accelerator().get_device_name(device.index or 0) or name
    return f"{device.type}|{name}|{precision}|threads={torch.get_num_threads()}"


def _read_cache() -> dict[str, float]:
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict[str, float]) -> None:
    try:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only home only costs a re-measurement next time


class PeakFlops:
    """The MFU denominator of one worker: configured, cached or measured.

    A measurement taken while the machine was busy reads low and would make
    MFU exceed 100% forever after; the model's own achieved FLOP/s is a lower
    bound on the peak, so `raise_to` lifts the figure (and the cache) to it.

    Args:
        device: the worker's device.
        precision: fp32, bf16 or fp16.
        configured_tflops: `train.peak_tflops`; when set it is used as given.
    """

    def __init__(self, device: torch.device, precision: str, configured_tflops: float | None):
        self.configured = bool(configured_tflops)
        self.key = _key(device, precision)
        if configured_tflops:
            self.value = configured_tflops * 1e12
            return
        cache = _read_cache()
        if self.key not in cache:
            cache[self.key] = measure_matmul_flops(device, DTYPES[precision])
            _write_cache(cache)
        self.value = float(cache[self.key])

    def raise_to(self, achieved: float) -> None:
        if self.configured or achieved <= self.value:
            return
        self.value = achieved
        cache = _read_cache()
        cache[self.key] = max(achieved, float(cache.get(self.key, 0.0)))
        _write_cache(cache)


def peak_flops(device: torch.device, precision: str, configured_tflops: float | None) -> float:
    """Peak FLOP/s: the configured figure, or a cached (else fresh) measurement."""
    return PeakFlops(device, precision, configured_tflops).value


if __name__ == "__main__":
    dev = torch.device("cpu")
    for prec in ("fp32", "bf16"):
        flops = measure_matmul_flops(dev, DTYPES[prec], trials=10, seconds_per_trial=0.2)
        print(f"{prec}: {flops / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads")
