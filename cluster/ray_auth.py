"""Ray token authentication on the client side (DESIGN.md: keep it on).

When the cluster has token authentication on, a client needs RAY_AUTH_MODE=token
and the token (RAY_AUTH_TOKEN, or Ray's token file). Ray reads the mode once, when
it is imported, so `enable_token_auth_if_available` must run before that. Its own
module because both Ray Jobs (cluster/jobs.py) and Ray sessions
(cluster/ray_session.py) need it, and neither may import the other.
"""

from __future__ import annotations

import os
from pathlib import Path

TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def enable_token_auth_if_available() -> None:
    """Turn on Ray's token mode for this client when a token is at hand."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    token_sources = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    if any(os.environ.get(name) for name in token_sources) or TOKEN_FILE.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
