"""Figures on tiny inputs: what each one draws, and that save writes a whole PNG."""

import numpy as np
import pandas as pd
import pytest
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from pipeline.core import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_digit_grid_is_one_mosaic_with_a_title_per_digit():
    images = np.full((3, 28, 28), 255, dtype=np.uint8)
    fig = plots.digit_grid(images, ["a", "b", "c", "unused"], cols=2)
    assert isinstance(fig, Figure)
    [ax] = fig.axes
    assert not ax.axison
    [image] = ax.get_images()
    assert image.get_array().shape == (2 * 40, 2 * 32)  # 2 rows, 2 columns of cells
    assert _texts(ax) == ["a", "b", "c"]


def test_digit_grid_of_no_images_is_still_a_figure():
    fig = plots.digit_grid(np.zeros((0, 28, 28), dtype=np.uint8), [])
    [ax] = fig.axes
    assert ax.get_images()[0].get_array().shape == (40, 10 * 32)
    assert _texts(ax) == []


def test_samples_per_class_takes_the_first_examples_of_each_digit():
    y = np.array([d for _ in range(3) for d in range(10)], dtype=np.uint8)  # 0..9 three times
    x = np.zeros((len(y), 28, 28), dtype=np.uint8)
    fig = plots.samples_per_class(x, y, per_class=2)
    [ax] = fig.axes
    assert _texts(ax) == [str(d) for d in range(10) for _ in range(2)]
    assert ax.get_images()[0].get_array().shape == (10 * 40, 2 * 32)


def test_learning_curves_plot_train_and_validation_per_epoch():
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "loss": [0.9, 0.5, 0.3],
            "val_loss": [1.0, 0.6, 0.4],
            "accuracy": [0.7, 0.85, 0.9],
            "val_accuracy": [0.65, 0.8, 0.88],
        }
    )
    fig = plots.learning_curves(history)
    ax_loss, ax_acc = fig.axes
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == metric
        train, val = ax.get_lines()
        assert train.get_label() == "train" and val.get_label() == "validation"
        assert list(train.get_xdata()) == [1, 2, 3]
        assert list(train.get_ydata()) == list(history[metric])
        assert list(val.get_ydata()) == list(history[f"val_{metric}"])
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "validation"]


def test_confusion_matrix_counts_every_cell():
    cm = np.eye(10, dtype=int) * 3
    cm[0, 1] = 1
    fig = plots.confusion_matrix(cm)
    ax, colorbar = fig.axes
    assert ax.get_title() == "Confusion matrix (31 test images)"
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert list(ax.get_xticks()) == list(range(10))
    texts = ax.texts
    assert len(texts) == 100
    by_cell = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in texts}
    assert by_cell[(0, 1)].get_text() == "1" and by_cell[(2, 2)].get_text() == "3"
    assert by_cell[(2, 2)].get_color() == "white"  # dark cell, light text
    assert by_cell[(0, 1)].get_color() == "black"
    assert colorbar is not ax


def test_save_writes_a_png_atomically_and_leaves_no_figure_open(tmp_path):
    fig = plots.learning_curves(
        pd.DataFrame(
            {
                "epoch": [1],
                "loss": [1.0],
                "val_loss": [1.0],
                "accuracy": [0.5],
                "val_accuracy": [0.5],
            }
        )  # fmt: skip
    )
    path = tmp_path / "sub" / "curves.png"
    plots.save(fig, path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]  # no temp file
    assert plt.get_fignums() == []  # made without pyplot: nothing to close, nothing leaks


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "grid.png"
    path.write_bytes(b"old")
    plots.save(plots.digit_grid(np.zeros((1, 28, 28), dtype=np.uint8), ["0"]), path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_a_failing_save_leaves_no_file(tmp_path, monkeypatch):
    fig = plots.digit_grid(np.zeros((1, 28, 28), dtype=np.uint8), ["0"])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.save(fig, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
