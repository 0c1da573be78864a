"""Naming a run directory: a local path or a URI, and a URI run's staging directory.

Imports nothing heavy: the `gobig` driver uses these to name runs.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def is_uri(spec: str | Path) -> bool:
    """Whether `spec` names a run directory by URI rather than by local path."""
    return isinstance(spec, str) and "://" in spec


def join_run_dir(parent: str | Path, name: str) -> str | Path:
    """`parent/name` for a path or a URI (a URI keeps its query after the new path)."""
    if not is_uri(parent):
        return Path(parent) / name
    parts = urlsplit(str(parent))
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def split_run_dir(run_dir: str | Path) -> tuple[str, str]:
    """(parent, name) of a run directory path or URI, the inverse of `join_run_dir`."""
    if not is_uri(run_dir):
        return str(Path(run_dir).parent), Path(run_dir).name
    parts = urlsplit(str(run_dir))
    parent, _, name = parts.path.rstrip("/").rpartition("/")
    return urlunsplit(parts._replace(path=parent)), name


def staging_dir(uri: str) -> Path:
    """The local working copy of the run at `uri` (see storage.py).

    Only the scheme, host and path make the readable part; the hash covers the
    query too, whose credentials must not become a directory name.
    """
    parts = urlsplit(uri)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parts.scheme}_{parts.netloc}{parts.path}")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:10]
    root = Path(os.environ.get("GOBIG_CACHE", Path.home() / ".cache" / "gobig"))
    return root / "runs" / f"{readable.strip('_')[:80]}-{digest}"
