"""The monitor's outputs: report.json, and report.html, the page a person decides from:
the verdict (with the label-free accuracy estimate only where it can be trusted), each
column's reference and current distributions side by side (as Evidently's reports show
them), the window's images beside reference ones, the images the model is least sure of,
the drift table and the over-time chart. Every picture is a PNG inside the page, so the
one file can be mailed or attached."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from pipeline.core.data import atomic_write

SHOWN = 48  # images of each grid
LEAST_SURE = 24

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
{% if r.accuracy.trusted is not defined or r.accuracy.trusted %}
Estimated accuracy {{ "%.1f" % (100 * r.accuracy.estimated) }} %
{% if r.accuracy.estimated_ci95 %}[{{ "%.1f" % (100 * r.accuracy.estimated_ci95[0]) }},
{{ "%.1f" % (100 * r.accuracy.estimated_ci95[1]) }}]{% endif %}
({{ r.accuracy.method }}; validation: {{ "%.1f" % (100 * r.accuracy.reference) }} %;
average confidence {{ "%.1f" % (100 * r.accuracy.average_confidence) }} %).
{% else %}<strong id="estimate-untrusted">No accuracy estimate: {{ r.accuracy.untrusted }}</strong>
(validation: {{ "%.1f" % (100 * r.accuracy.reference) }} %).{% endif %}
{% if r.accuracy.labeled is not none %}Measured on {{ r.accuracy.labeled_images }} labelled
images: {{ "%.1f" % (100 * r.accuracy.labeled) }} %.{% endif %}</p>
<p>Window: {{ r.window.first }} to {{ r.window.last }} (UTC).</p>
{% if distributions %}<h2>Reference and current, column by column</h2>
<img id="distributions" alt="each column: reference and current distributions"
 src="data:image/png;base64,{{ distributions }}">{% endif %}
{% if window_images %}<h2>What the model saw</h2>
<table id="images"><tr><th>this window (first {{ shown }})</th><th>reference (validation)</th></tr>
<tr><td><img id="window-images" alt="images of the window"
 src="data:image/png;base64,{{ window_images }}"></td>
<td>{% if reference_images %}<img id="reference-images" alt="reference images"
 src="data:image/png;base64,{{ reference_images }}">{% else %}none in this version's
reference (evaluated before it kept images: dvc repro -f evaluate){% endif %}</td></tr></table>
<h2>Least sure</h2>
<p>The {{ least|length }} images the model answered with the lowest confidence.</p>
<div id="least-sure">{% for item in least %}<figure style="display:inline-block;margin:.3em">
<img alt="answered {{ item.digit }}" src="data:image/png;base64,{{ item.png }}" width="56">
<figcaption>{{ item.digit }} ({{ "%.0f" % (100 * item.confidence) }} %)</figcaption>
</figure>{% endfor %}</div>{% endif %}
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


def distributions(columns: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> bytes | None:
    """One small chart per column: the reference's and the window's distributions, as
    density histograms on shared bins (bars of each digit's share for the digits)."""
    if not columns:
        return None
    from matplotlib.figure import Figure

    cols = 3
    rows = -(-len(columns) // cols)
    fig = Figure(figsize=(9, 2.3 * rows), dpi=90)
    for i, (name, (ref, cur)) in enumerate(columns.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        if name == "predicted_digit":
            width = 0.4
            digits = np.arange(10)
            for shift, values, label in (
                (-width / 2, ref, "reference"),
                (width / 2, cur, "current"),
            ):
                ax.bar(digits + shift, np.bincount(values, minlength=10)[:10] / max(1, len(values)),
                       width, label=label)  # fmt: skip
            ax.set_xticks(digits)
        else:
            both = np.concatenate([ref, cur])
            bins = np.histogram_bin_edges(both, bins=30)
            ax.hist(ref, bins, density=True, alpha=0.55, label="reference")
            ax.hist(cur, bins, density=True, alpha=0.55, label="current")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def grid(images: np.ndarray, cols: int = 8, scale: int = 2) -> bytes:
    """Images (N×28×28 uint8) as one PNG grid, white on black as the model sees them."""
    from PIL import Image

    n = len(images)
    rows = -(-n // cols)
    canvas = np.full((rows * 30, cols * 30), 64, np.uint8)  # grey gutters
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        canvas[r * 30 + 1 : r * 30 + 29, c * 30 + 1 : c * 30 + 29] = image
    picture = Image.fromarray(canvas).resize((cols * 30 * scale, rows * 30 * scale), Image.NEAREST)
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    return buf.getvalue()


def _b64(png: bytes | None) -> str | None:
    return base64.b64encode(png).decode() if png else None


def write(
    out: Path, report: Mapping[str, Any], steps: Sequence[Mapping[str, Any]],
    views: Mapping[str, Any] | None = None,
) -> Path:  # fmt: skip
    """report.json and report.html in ``out``; the HTML's path. ``views`` (optional):
    ``columns`` {name: (reference values, current values)}, ``pixels`` (the window's
    images or None), ``reference_images`` (or None), ``confidence`` and ``digit`` (the
    window's)."""
    views = views or {}
    out.mkdir(parents=True, exist_ok=True)
    body = json.dumps({**report, "windows": list(steps)}, indent=2, default=str)
    atomic_write(out / "report.json", lambda t: t.write_text(body + "\n"))
    pixels, least = views.get("pixels"), []
    if pixels is not None and len(pixels):
        confidence, digit = views["confidence"], views["digit"]
        for k in np.argsort(confidence, kind="stable")[:LEAST_SURE]:
            least.append({"png": _b64(grid(pixels[k : k + 1], cols=1, scale=1)),
                          "digit": int(digit[k]), "confidence": float(confidence[k])})  # fmt: skip
    ref_images = views.get("reference_images")
    html = TEMPLATE.render(
        r=report,
        chart=_b64(chart(steps)),
        distributions=_b64(distributions(views.get("columns") or {})),
        shown=min(SHOWN, len(pixels)) if pixels is not None else 0,
        window_images=_b64(grid(pixels[:SHOWN])) if pixels is not None and len(pixels) else None,
        reference_images=_b64(grid(ref_images[:SHOWN])) if ref_images is not None else None,
        least=least,
    )
    atomic_write(out / "report.html", lambda t: t.write_text(html))
    return out / "report.html"
