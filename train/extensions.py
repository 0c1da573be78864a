"""Where DeepSpeed's compiled ops are built: once per Python environment, and never
waited on forever.

DeepSpeed compiles some ops the first time a process needs them (on CPU its
shared-memory collective, built whenever a process group is set up; the CPU
Adam of optimizer offload) into torch's extensions folder. By default that is
one folder per user and Python version, shared by every environment on the
machine: two checkouts, or a Ray job's runtime environment beside the one that
submitted it, each find the other's build made with other paths and rebuild it,
every time they alternate. And torch guards a build with a lock file that only
the builder removes: a process killed while it builds (or while it checks that
nothing needs building) leaves the file behind, and every later process waits
for it, with no timeout, before DeepSpeed is even set up.

gobig gives each Python environment a folder of its own (a TORCH_EXTENSIONS_DIR
the user set wins) and removes a lock file older than any build takes, saying so.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

# A build of DeepSpeed's CPU ops takes one to three minutes on two busy cores; a
# lock this old was left by a builder that died.
STALE_LOCK_S = 600.0


def extensions_dir() -> Path:
    """This environment's folder for compiled ops (TORCH_EXTENSIONS_DIR wins)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    from torch.utils.cpp_extension import get_default_build_root

    env = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:10]
    return Path(get_default_build_root()) / f"env-{env}"


def prepare_extensions_dir(now: float | None = None) -> Path:
    """Point torch's op builds at this environment's folder and clear stale locks.

    Call before DeepSpeed sets up a process group or an optimizer (both may build).
    """
    folder = extensions_dir()
    os.environ["TORCH_EXTENSIONS_DIR"] = str(folder)
    now = time.time() if now is None else now
    for lock in folder.glob("*/lock"):
        try:
            age = now - lock.stat().st_mtime
            if age > STALE_LOCK_S:
                lock.unlink()
                why = f"a build lock left {age / 60:.0f} min ago by a process that died building"
                print(f"gobig: warning: removed {lock}, {why}", file=sys.stderr, flush=True)
        except FileNotFoundError:
            pass  # its builder finished meanwhile
    return folder
