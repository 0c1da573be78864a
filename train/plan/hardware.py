"""Defaults for what the plan runs on, when the command line does not say.

Device memory: `--device-memory`; else, for a config whose workers run on the CPU
(cluster.use_gpu false), this machine's memory shared by the workers; else the local
accelerator's (device 0, through torch.cuda); else an assumed 80 GiB (an 80 GB A100 or
H100). Peak: `--peak-tflops`, else train.peak_tflops, else the H100 SXM
datasheet's dense figure for the precision. Each default taken is said in a note.
"""

from __future__ import annotations

import os

import torch

from train.config.schema import ExperimentConfig

ASSUMED_DEVICE_MEMORY = 80 * 2**30
# H100 SXM, dense: bf16 / fp16 tensor cores; fp32 without TF32 (gobig leaves TF32 off).
DATASHEET_PEAK_TFLOPS = {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}
MAX_DEVICES_PER_NODE = 8


def host_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_device_memory(config: ExperimentConfig, devices: int) -> tuple[int, str]:
    """(bytes per device, the note that says where the figure came from)."""
    if not config.cluster.use_gpu:
        ram = host_memory()
        return ram // devices, (
            f"device memory: CPU workers (cluster.use_gpu false) sharing this machine's "
            f"{ram / 1e9:.1f} GB, {devices} of them (--device-memory)"
        )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"device memory: the local {props.name}'s (--device-memory)"
    return ASSUMED_DEVICE_MEMORY, (
        "device memory assumed 80 GiB (an 80 GB A100/H100): no local accelerator (--device-memory)"
    )


def default_peak_tflops(config: ExperimentConfig) -> tuple[float, str | None]:
    """(peak TFLOP/s per device, a note when it is the datasheet's assumption)."""
    if config.train.peak_tflops:
        return config.train.peak_tflops, None
    precision = config.train.precision
    peak = DATASHEET_PEAK_TFLOPS[precision]
    note = f"peak {peak:g} TFLOP/s assumed: an H100 SXM's dense {precision} (--peak-tflops"
    if not config.cluster.use_gpu:
        note += "; this config trains on CPUs: `python -m train.peak_flops` measures one"
    return peak, note + ")"


def default_devices_per_node(devices: int) -> int:
    """The most devices per node, at most 8, that divides the devices evenly."""
    return max(n for n in range(1, min(devices, MAX_DEVICES_PER_NODE) + 1) if devices % n == 0)
