"""Writing a benchmark's Markdown report: one helper for every bench script."""

from __future__ import annotations

from pathlib import Path


def write_report(lines: list[str], out: str | Path) -> str:
    """Join `lines`, write them to `out` (creating its folder), print and return the text."""
    text = "\n".join(lines) + "\n"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
    return text
