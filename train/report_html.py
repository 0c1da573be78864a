"""`gobig report`'s page: report.json's runs and plots as one self-contained HTML file.

The PNGs are embedded as base64 data URIs, so report.html can be mailed or
copied alone; text from the runs (names, paths, samples) is escaped.
"""

from __future__ import annotations

import base64
import datetime
import html
from pathlib import Path
from typing import Any

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gobig report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }}
img {{ max-width: 100%; }}
pre {{ white-space: pre-wrap; background: #f6f6f6; padding: 0.4em; }}
</style>
</head>
<body>
<h1>gobig report: {title}</h1>
<p>Made {made} from each run's metrics.jsonl. Vertical lines in each run's colour:
checkpoints (dotted), restarts, i.e. resumed or restarted attempts (dashed), anomalies
(dash-dot, a red cross on top).</p>
{body}
</body>
</html>
"""
COLUMNS = ("run", "metrics", "unit", "train records", "eval records", "last step", "last loss",
           "last val_loss", "checkpoints", "restarts at step", "anomalies")  # fmt: skip


def _runs_table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        cells = [
            run["name"], run["metrics"], run["unit"] or "", run["steps"]["train"],
            run["steps"]["eval"], run["steps"]["last"], run["last"].get("loss", ""),
            run["last"].get("val_loss", ""), len(run["checkpoints"]),
            ", ".join(map(str, run["restarts"])) or "none", len(run["anomalies"]),
        ]  # fmt: skip
        cells = [f"{c:.4g}" if isinstance(c, float) else c for c in cells]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>"
    return f"<h2>Runs</h2>\n<table>\n{head}\n" + "\n".join(rows) + "\n</table>"


def _figures(out: Path, plots: list[dict[str, Any]]) -> str:
    parts = []
    for x in dict.fromkeys(plot["x"] for plot in plots):
        parts.append(f"<h2>Against {html.escape(x.replace('_', ' '))}</h2>")
        for plot in (p for p in plots if p["x"] == x):
            data = base64.b64encode((out / plot["file"]).read_bytes()).decode()
            alt = html.escape(f"{plot['title']} against {x.replace('_', ' ')}")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                f"<figcaption>{html.escape(plot['file'])}</figcaption></figure>"
            )
    return "\n".join(parts)


def _text(value: object) -> str:
    """Escaped, with control characters (an untrained model writes them) shown as U+FFFD."""
    text = "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in str(value))
    return html.escape(text)


def _samples(runs: list[dict[str, Any]]) -> str:
    parts = []
    for run in runs:
        record = run["samples"]
        if not record:
            continue
        parts.append(f"<h3>{html.escape(run['name'])}, step {record['step']}</h3>")
        for sample in record["samples"]:
            prompt, text = _text(sample.get("prompt", "")), _text(sample.get("text", ""))
            parts.append(f"<p>prompt <b>{prompt}</b></p><pre>{text}</pre>")
    return "<h2>Latest samples</h2>\n" + "\n".join(parts) if parts else ""


def write_html(out: Path, report: dict[str, Any]) -> Path:
    """Write `out/report.html` from report.json's content and the PNGs beside it.

    Args:
        out: the report directory holding the PNGs named in `report["plots"]`.
        report: what write_report puts in report.json.
    """
    title = ", ".join(run["name"] for run in report["runs"])
    body = "\n".join(
        [_runs_table(report["runs"]), _figures(out, report["plots"]), _samples(report["runs"])]
    )
    made = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    path = out / "report.html"
    path.write_text(PAGE.format(title=html.escape(title), made=made, body=body))
    return path
