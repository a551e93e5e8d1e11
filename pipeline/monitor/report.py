"""The monitor's outputs: report.json, and report.html with the drift table and the
over-time chart (a PNG inside the page, so the one file can be mailed or attached)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from pipeline.core.data import atomic_write

TEMPLATE = jinja2.Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ r.model_name }} v{{ r.model_version }}: monitoring</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 60em; }
table { border-collapse: collapse; } td, th { border: 1px solid #bbb; padding: .3em .6em; }
.drifted { background: #fdd; } .ok { background: #dfd; }
</style></head><body>
<h1>{{ r.model_name }} v{{ r.model_version }}: {{ r.images }} images</h1>
<p id="verdict" class="{{ 'drifted' if r.drift.detected else 'ok' }}">
Drift {{ 'detected' if r.drift.detected else 'not detected' }}:
{{ "%.0f" % (100 * r.drift.share) }} % of the columns drifted
(threshold {{ "%.0f" % (100 * r.drift.threshold_share) }} %).
Estimated accuracy {{ "%.1f" % (100 * r.accuracy.estimated) }} %
{% if r.accuracy.estimated_ci95 %}[{{ "%.1f" % (100 * r.accuracy.estimated_ci95[0]) }},
{{ "%.1f" % (100 * r.accuracy.estimated_ci95[1]) }}]{% endif %}
({{ r.accuracy.method }}; validation: {{ "%.1f" % (100 * r.accuracy.reference) }} %;
average confidence {{ "%.1f" % (100 * r.accuracy.average_confidence) }} %).
{% if r.accuracy.labeled is not none %}Measured on {{ r.accuracy.labeled_images }} labelled
images: {{ "%.1f" % (100 * r.accuracy.labeled) }} %.{% endif %}</p>
<p>Window: {{ r.window.first }} to {{ r.window.last }} (UTC).</p>
<h2>Drift by column</h2>
<table id="drift-table"><tr><th>column</th><th>test</th><th>statistic</th><th>threshold</th>
<th>drifted</th></tr>
{% for name, c in r.drift.features.items() %}<tr class="{{ 'drifted' if c.drifted else 'ok' }}">
<td>{{ name }}</td><td>{{ c.test }}</td><td>{{ "%.4f" % c.statistic }}</td>
<td>{{ c.threshold }}</td><td>{{ 'yes' if c.drifted else 'no' }}</td></tr>
{% endfor %}</table>
<h2>Over time</h2>
{% if chart %}<img id="over-time" alt="drift share and estimated accuracy per window"
 src="data:image/png;base64,{{ chart }}">{% else %}<p>One window only.</p>{% endif %}
</body></html>
"""
)


def chart(steps: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Drift share and estimated accuracy per window, as a PNG (None for one window)."""
    if len(steps) < 2:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), dpi=100)
    ax = fig.add_subplot()
    x = [s["window"] for s in steps]
    ax.plot(x, [s["drift_share"] for s in steps], marker="o", label="drift share")
    ax.plot(x, [s["estimated_accuracy"] for s in steps], marker="s", label="estimated accuracy")
    if any(s.get("labeled_accuracy") is not None for s in steps):
        labeled = [s.get("labeled_accuracy") for s in steps]
        ax.plot(x, [v if v is not None else float("nan") for v in labeled], marker="^",
                label="labelled accuracy")  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # windows are whole numbers
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(f"window ({steps[0]['images']} images each)")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write(out: Path, report: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> Path:
    """report.json and report.html in ``out``; the HTML's path."""
    out.mkdir(parents=True, exist_ok=True)
    body = json.dumps({**report, "windows": list(steps)}, indent=2, default=str)
    atomic_write(out / "report.json", lambda t: t.write_text(body + "\n"))
    png = chart(steps)
    html = TEMPLATE.render(r=report, chart=base64.b64encode(png).decode() if png else None)
    atomic_write(out / "report.html", lambda t: t.write_text(html))
    return out / "report.html"
