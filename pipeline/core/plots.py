"""Figures (matplotlib, headless): sample grid, learning curves, confusion matrix, errors.

Each function takes arrays and returns a Figure; :func:`save` writes it atomically.
Figures are made without pyplot (no global figure manager, no GUI backend to pick):
``Figure.savefig`` renders a PNG with Agg by itself, and a process that draws nothing
(the service, a sweep's trials) no longer loads pyplot through Keras: about 0.5 s
sooner on 2 cores (pipeline/core/backend.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.core.data import atomic_write


def save(fig: Figure, path: Path) -> None:
    """Write a PNG atomically."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100), suffix=".png")


def digit_grid(images: np.ndarray, titles: list[str], cols: int = 10) -> Figure:
    """A grid of 28×28 digits with a title each.

    One mosaic image on one Axes: a hundred separate subplots cost matplotlib seconds.
    """
    rows = max(1, -(-len(images) // cols))
    cell_h, cell = 40, 32  # 28 px digit + room for its title above
    mosaic = np.zeros((rows * cell_h, cols * cell), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        mosaic[r * cell_h + 10 : r * cell_h + 38, c * cell + 2 : c * cell + 30] = img
    fig = Figure(figsize=(cols * 0.9, rows * 1.1))
    ax = fig.subplots()
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    for i, title in enumerate(titles[: len(images)]):
        r, c = divmod(i, cols)
        ax.text(c * cell + cell / 2, r * cell_h + 6, title, ha="center", va="center", fontsize=7)
    ax.axis("off")
    fig.tight_layout(pad=0.2)
    return fig


def samples_per_class(x: np.ndarray, y: np.ndarray, per_class: int = 10) -> Figure:
    """One row per digit 0–9, ``per_class`` examples each (the first ones, deterministic)."""
    idx = np.concatenate([np.flatnonzero(y == d)[:per_class] for d in range(10)])
    return digit_grid(x[idx], [str(int(y[i])) for i in idx], cols=per_class)


def learning_curves(history: pd.DataFrame) -> Figure:
    """Loss and accuracy per epoch, train vs validation."""
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(history["epoch"], history[metric], marker=".", label="train")
        ax.plot(history["epoch"], history[f"val_{metric}"], marker=".", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(cm: np.ndarray) -> Figure:
    """Counts with true labels on rows, predictions on columns."""
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2
    for (i, j), n in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(n),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if n > threshold else "black",
        )
    ax.set_title(f"Confusion matrix ({cm.sum()} test images)")
    fig.tight_layout()
    return fig
