"""Process-group set-up that works the same under Ray, torchrun or alone.

Ray Train and torchrun export RANK / WORLD_SIZE / MASTER_ADDR (Ray may also
have created the group already); a plain `python -m train` gets a group of
one on 127.0.0.1. The backend comes from DeepSpeed's accelerator (gloo on
CPU, nccl on CUDA), so no code here names a device.

Single-machine groups (a plain run, gobig's embedded Ray) listen on loopback
only: `join_loopback_group` hands torch's rendezvous store a socket already
bound to 127.0.0.1 (given just an address, the store listens on every
interface) and pins gloo and NCCL to the loopback interface.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

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


LOOPBACK = "127.0.0.1"
# torch's default for process groups; collectives that take longer are hangs
GROUP_TIMEOUT = timedelta(minutes=30)


def loopback_listener() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 at a port the kernel picked (no race for it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    return sock


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in ("lo", "lo0") if n in names), None)


def join_loopback_group(rank: int, world_size: int, port: int, listener: socket.socket | None):
    """Create the default process group of a single-machine run, listening on loopback only.

    Args:
        rank: this process's rank.
        world_size: processes in the group.
        port: the port rank 0's `listener` is bound to.
        listener: rank 0 only: a `loopback_listener()`; the store takes its descriptor.
    """
    from deepspeed.accelerator import get_accelerator

    interface = _loopback_interface()
    if interface:  # gloo otherwise binds what the host name resolves to; a user's choice wins
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port)
    )
    if rank == 0:
        if listener is None:
            raise ValueError("rank 0 serves the store: pass its loopback listener")
        store = dist.TCPStore(
            LOOPBACK, port, world_size, True, GROUP_TIMEOUT, master_listen_fd=listener.detach()
        )
    else:
        store = dist.TCPStore(LOOPBACK, port, world_size, False, GROUP_TIMEOUT)
    backend = get_accelerator().communication_backend_name()
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world_size, timeout=GROUP_TIMEOUT
    )


def init_distributed() -> DistInfo:
    """Join (or create) the default process group and pick this rank's device."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    from train.extensions import prepare_extensions_dir

    prepare_extensions_dir()  # DeepSpeed may compile an op from here on
    if not dist.is_initialized() and "WORLD_SIZE" not in os.environ:
        listener = loopback_listener()  # a group of one, on loopback
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        join_loopback_group(0, 1, listener.getsockname()[1], listener)
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
