"""The embedded local Ray, and the process group of its workers, on loopback only.

Ray's servers (GCS, raylet, every worker's gRPC server, the dashboard agent, the
runtime-env agent, the autoscaler monitor) listen on 127.0.0.1 only when the node's
address is 127.0.0.1, and all interfaces otherwise. On Linux `ray.init` replaces a
`_node_ip_address` of 127.0.0.1 by the address it guesses for the machine; only its
single-machine switch, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (read once when Ray is
imported; `ENABLE_RAY_CLUSTER` in `ray._private.ray_constants` afterwards), keeps the
node on 127.0.0.1. `embedded_on_loopback()` sets both for the embedded session.

Ray Train's torch set-up starts the rendezvous store with an address only, and torch's
store then listens on every interface. For embedded runs gobig passes
`LoopbackTorchConfig`, whose backend creates no group, and each worker joins one through
`join_group_on_loopback()`: rank 0 opens a listener on 127.0.0.1, the port reaches the
other ranks through Ray Train's own broadcast, and `train.distributed` builds the group
on it with gloo and NCCL pinned to the loopback interface.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ray.train.backend import Backend
from ray.train.torch import TorchConfig

SINGLE_MACHINE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def embedded_on_loopback() -> Iterator[None]:
    """Within the block, a Ray started here takes 127.0.0.1 as its node address."""
    import ray._private.ray_constants as constants

    before_env = os.environ.get(SINGLE_MACHINE_SWITCH)
    before_flag = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[SINGLE_MACHINE_SWITCH] = "0"  # inherited by the processes Ray starts
    constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray already
    try:
        yield
    finally:
        if before_env is None:
            os.environ.pop(SINGLE_MACHINE_SWITCH, None)
        else:
            os.environ[SINGLE_MACHINE_SWITCH] = before_env
        if before_flag is not None:
            constants.ENABLE_RAY_CLUSTER = before_flag


class _NoGroupBackend(Backend):
    """Ray Train backend that leaves the process group to the workers."""

    # as Ray's torch backend: every worker sees the node's GPUs, picked by local rank
    share_cuda_visible_devices = True


class LoopbackTorchConfig(TorchConfig):
    """TorchConfig for a single-machine run whose workers join the group themselves
    (`join_group_on_loopback`); the device set-up of TorchConfig is kept."""

    @property
    def backend_cls(self):
        return _NoGroupBackend


def join_group_on_loopback() -> None:
    """In a Ray Train worker: join the run's process group over loopback sockets."""
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    from train.distributed import join_loopback_group, loopback_listener

    context = ray.train.get_context()
    rank = context.get_world_rank()
    listener = loopback_listener() if rank == 0 else None
    port = broadcast_from_rank_zero(listener.getsockname()[1] if listener else None)
    # what torchrun exports, which DeepSpeed and the worker read
    os.environ.update(
        LOCAL_RANK=str(context.get_local_rank()),
        LOCAL_WORLD_SIZE=str(context.get_local_world_size()),
        NODE_RANK=str(context.get_node_rank()),
    )
    join_loopback_group(rank, context.get_world_size(), port, listener)
