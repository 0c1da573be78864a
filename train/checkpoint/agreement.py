"""Ranks agreeing on a failure: every rank learns whether any failed, and why, at once.

A checkpoint write or check that fails on one rank must end (or redirect) all
of them at the same point, with the same message: a rank that raised alone
would leave the others in the next collective until the group's timeout.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from train.distributed import DistInfo, all_reduce_max


def agree_on_error(error: str | None, info: DistInfo) -> str | None:
    """Every rank: the failing ranks' messages (rank order, "; "-joined), or None.

    A collective: every rank calls it at the same point. One all_reduce when no
    rank failed; then one broadcast per failing rank.

    Args:
        error: this rank's failure (one line), or None.
        info: this rank.
    """
    if not dist.is_initialized() or info.world_size == 1:
        return error
    flags = [0.0] * info.world_size
    flags[info.rank] = 1.0 if error is not None else 0.0
    failed = all_reduce_max(flags, info.device)
    messages = [
        broadcast_text(error or "", src, info.device) for src, flag in enumerate(failed) if flag > 0
    ]
    unique = list(dict.fromkeys(messages))  # ranks sharing a folder may say the same
    return "; ".join(unique) if unique else None


def broadcast_text(text: str, src: int, device: torch.device) -> str:
    """Rank `src`'s text on every rank, any length (bytes in a tensor, never pickled)."""
    raw = text.encode()
    size = torch.tensor([len(raw)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=src)
    data = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if dist.get_rank() == src and raw:
        data.copy_(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    dist.broadcast(data, src=src)
    return data.cpu().numpy().tobytes().decode(errors="replace")
