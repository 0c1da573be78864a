"""Process-group set-up that works the same under Ray, torchrun or alone.

Ray Train and torchrun export RANK / WORLD_SIZE / MASTER_ADDR (Ray may also
have created the group already); a plain `python -m train` gets a group of
one on 127.0.0.1. The backend comes from DeepSpeed's accelerator (gloo on
CPU, nccl on CUDA), so no code here names a device.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> DistInfo:
    """Join (or create) the default process group and pick this rank's device."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if not dist.is_initialized() and "WORLD_SIZE" not in os.environ:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
        )  # fmt: skip
    accelerator = get_accelerator()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=torch.device(accelerator.device_name(local_rank)),
    )


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum floats over all ranks (float64, so counters stay exact)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_text(text: str, src: int = 0) -> str:
    """Rank `src`'s short string on every rank (as bytes in a tensor, not pickled)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return text
    device = torch.device("cpu") if dist.get_backend() == "gloo" else _device()
    data = torch.zeros(256, dtype=torch.uint8, device=device)
    raw = text.encode()[:256]
    data[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    dist.broadcast(data, src=src)
    return bytes(data.cpu().tolist()).rstrip(b"\0").decode()


def _device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """The largest of each value over all ranks (one collective for the whole list)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()
