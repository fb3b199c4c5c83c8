"""Pictures of what a network learned: first-layer weights, confusion matrix, confident mistakes,
training curves, noise confidence and random-label memorisation.

Needs matplotlib (``pip install "fastgd[plot]"``), imported only when a function here runs. Every
function builds a `matplotlib.figure.Figure` directly, without pyplot, so nothing touches the
global backend or opens a window: figures render with the Agg canvas. Pass ``path=`` to write a
PNG; the figure is returned either way (``fig.axes`` holds its panels).

The numbers behind the pictures come from `fastgd.experiments`, which needs only NumPy.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import experiments

DIVERGING_CMAP = "RdBu_r"  # red positive, blue negative, white at zero
DEFAULT_DPI = 100


def _figure(width, height):
    """A pyplot-free Figure rendered by Agg, or a clear ImportError without matplotlib."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as exc:
        raise ImportError(
            'fastgd.viz needs matplotlib, which is not installed; install it with: pip install "fastgd[plot]"'
        ) from exc
    fig = Figure(figsize=(width, height), dpi=DEFAULT_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, dpi=DEFAULT_DPI):
    """Write `fig` as a PNG to `path` (parent folders are created); returns the Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _finish(fig, path, dpi):
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def _image_shape(n_pixels, image_shape):
    if image_shape is not None:
        h, w = (int(s) for s in image_shape)
        if h * w != n_pixels:
            raise ValueError(f"image_shape {tuple(image_shape)} has {h * w} pixels but the inputs have {n_pixels}")
        return h, w
    side = math.isqrt(n_pixels)
    if side * side != n_pixels:
        raise ValueError(
            f"cannot draw {n_pixels} inputs as a square image; pass image_shape=(rows, cols) "
            f"with rows * cols = {n_pixels}")
    return side, side


def _grid(n):
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


# ---- weights ------------------------------------------------------------------------------------
def plot_weights(net, layer=0, image_shape=None, max_units=None, cmap=DIVERGING_CMAP, path=None,
                 dpi=DEFAULT_DPI, tile_inches=None):
    """One tile per unit of `layer`: the weights into that unit, drawn as an image of the inputs.

    For the first layer of an MNIST network each tile is 28x28: the pixel pattern that excites
    (red) or inhibits (blue) that hidden unit. The colour map is diverging and centred at zero,
    with the same symmetric limits ±max|W| for every tile so that tiles compare. Inputs that are
    not a square image need `image_shape`. `max_units` draws only the first units of a wide layer
    (matplotlib needs about 20 ms per tile). Returns the Figure: one axes per drawn unit, then one
    for the colour bar.
    """
    if not isinstance(layer, int) or not 0 <= layer < net.n_layers:
        raise ValueError(f"layer must be an integer in [0, {net.n_layers}) for a network with "
                         f"{net.n_layers} weight layers, got {layer!r}")
    W = np.asarray(net.weights[layer], dtype=np.float64)
    n_in, n_units = W.shape
    shape = _image_shape(n_in, image_shape)
    if max_units is not None:
        if max_units < 1:
            raise ValueError(f"max_units must be >= 1, got {max_units}")
        n_units = min(n_units, int(max_units))
    limit = float(np.abs(W[:, :n_units]).max()) or 1.0
    rows, cols = _grid(n_units)
    tile = tile_inches or max(0.45, min(1.0, 6.0 / cols))
    gap, left, bottom, right, top = 0.06 * tile, 0.1, 0.1, 0.9, 0.45  # inches
    width = left + cols * tile + (cols - 1) * gap + right
    height = bottom + rows * tile + (rows - 1) * gap + top
    fig = _figure(width, height)
    image = None
    for unit in range(n_units):
        r, c = divmod(unit, cols)
        x0 = left + c * (tile + gap)
        y0 = height - top - (r + 1) * tile - r * gap
        ax = fig.add_axes([x0 / width, y0 / height, tile / width, tile / height])
        image = ax.imshow(W[:, unit].reshape(shape), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    drawn = f"the first {n_units} of {W.shape[1]}" if n_units < W.shape[1] else f"each of {n_units}"
    fig.suptitle(f"layer {layer} weights into {drawn} units\n({shape[0]}x{shape[1]} tiles; red +, blue -)",
                 fontsize=9, y=1 - 0.05 / height, va="top")
    grid_top = height - top
    cax = fig.add_axes([(width - right + 0.15) / width, bottom / height, 0.15 / width,
                        (grid_top - bottom) / height])
    fig.colorbar(image, cax=cax)
    cax.tick_params(labelsize=7)
    return _finish(fig, path, dpi)


# ---- confusion matrix and errors ---------------------------------------------------------------------
def plot_confusion_matrix(cm, path=None, dpi=DEFAULT_DPI, title=None):
    """Confusion matrix: rows are true classes, columns predicted; cells show counts."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {cm.shape}")
    n = cm.shape[0]
    fig = _figure(0.45 * n + 1.8, 0.45 * n + 1.3)
    ax = fig.add_subplot(1, 1, 1)
    # log-ish colouring so that the off-diagonal mistakes stay visible next to the large diagonal
    shown = np.log1p(cm.astype(np.float64))
    ax.imshow(shown, cmap="Blues", interpolation="nearest")
    threshold = shown.max() * 0.6
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=6 if cm[i, j] >= 1000 else 7,
                        color="white" if shown[i, j] > threshold else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(title or f"confusion matrix ({cm.sum()} samples, accuracy {100 * accuracy:.2f}%)", fontsize=9)
    fig.tight_layout()
    return _finish(fig, path, dpi)


def plot_errors(X, errors, image_shape=None, path=None, dpi=DEFAULT_DPI, cols=None):
    """A gallery of misclassified images with "true → predicted (confidence)" captions.

    `errors` is the dict from `fastgd.experiments.most_confident_errors` (or `Inspection.errors`);
    `X` the images it indexes. Returns the Figure with one axes per error.
    """
    index = np.asarray(errors["index"])
    n = len(index)
    if n == 0:
        raise ValueError("there are no errors to draw: the network classified every sample correctly")
    X = np.asarray(X)
    shape = _image_shape(X.shape[1], image_shape)
    cols = cols or min(n, 8)
    rows = math.ceil(n / cols)
    width, height = cols * 1.1, rows * 1.3 + 0.35  # inches: 1.1 per tile, 0.2 of it for the caption
    fig = _figure(width, height)
    for k in range(n):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(X[index[k]].reshape(shape), cmap="gray_r", interpolation="nearest")
        ax.set_title(f"{int(errors['true'][k])}→{int(errors['predicted'][k])} ({float(errors['confidence'][k]):.2f})",
                     fontsize=8, pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("most confident mistakes: true→predicted (confidence)", fontsize=9, y=1 - 0.05 / height, va="top")
    # fixed margins (tight_layout costs a second for a large gallery)
    fig.subplots_adjust(left=0.1 / width, right=1 - 0.1 / width, bottom=0.1 / height, top=1 - 0.5 / height,
                        wspace=0.1, hspace=0.3)
    return _finish(fig, path, dpi)


# ---- training curves --------------------------------------------------------------------------------
def plot_history(history, path=None, dpi=DEFAULT_DPI):
    """Loss and accuracy per epoch from ``net.history`` (or a `fastgd.History`): two axes."""
    records = list(history or [])
    if not records:
        raise ValueError("the history is empty: this model carries no training curves")
    epochs = [r["epoch"] for r in records]
    fig = _figure(9, 3.4)
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in records], marker=".", label="train (running)")
    if any(r.get("val_loss") is not None for r in records):
        ax_loss.plot(epochs, [r.get("val_loss") for r in records], marker=".", label="validation")
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in records], marker=".", label="train (running)")
    if any(r.get("val_accuracy") is not None for r in records):
        ax_acc.plot(epochs, [100 * r["val_accuracy"] if r.get("val_accuracy") is not None else None
                             for r in records], marker=".", label="validation")
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig, path, dpi)


# ---- noise -------------------------------------------------------------------------------------------
_SET_COLOURS = {"test": "tab:blue", "uniform": "tab:red", "gaussian": "tab:orange"}
_SET_LABELS = {"test": "real test digits", "uniform": "uniform noise", "gaussian": "Gaussian noise"}


def plot_noise(result, path=None, dpi=DEFAULT_DPI):
    """Confidence histograms and predicted-class histograms for noise and real digits (two axes)."""
    if not isinstance(result, experiments.NoiseResult):
        raise TypeError("result must be a fastgd.experiments.NoiseResult (from noise_experiment)")
    fig = _figure(10, 3.6)
    ax_conf, ax_cls = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = list(result.stats)
    bins = np.linspace(0, 1, 21)
    for name in names:
        s = result.stats[name]
        weights = np.full(s["n"], 100.0 / s["n"])
        ax_conf.hist(result.confidences[name], bins=bins, weights=weights, histtype="step", linewidth=1.6,
                     color=_SET_COLOURS.get(name),
                     label=f"{_SET_LABELS.get(name, name)} (median {s['median_confidence']:.2f})")
    ax_conf.axvline(result.threshold, color="gray", linestyle=":", linewidth=1)
    ax_conf.set_xlabel("top-class confidence (largest output)")
    ax_conf.set_ylabel("% of images")
    ax_conf.legend(fontsize=8, loc="upper center")
    n_classes = len(result.stats[names[0]]["predicted_class_histogram"])
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        s = result.stats[name]
        share = 100.0 * np.asarray(s["predicted_class_histogram"]) / s["n"]
        ax_cls.bar(np.arange(n_classes) + (k - (len(names) - 1) / 2) * width, share, width=width,
                   color=_SET_COLOURS.get(name), label=_SET_LABELS.get(name, name))
    ax_cls.set_xticks(range(n_classes))
    ax_cls.set_xlabel("predicted class")
    ax_cls.set_ylabel("% of images")
    ax_cls.legend(fontsize=8)
    fig.suptitle("what the network says about noise, beside real test digits", fontsize=10)
    fig.tight_layout()
    return _finish(fig, path, dpi)


# ---- random labels -----------------------------------------------------------------------------------
def plot_random_labels(results, path=None, dpi=DEFAULT_DPI):
    """Training accuracy (solid) and test accuracy (dashed) per epoch, one colour per label-shuffle fraction."""
    if isinstance(results, experiments.RandomLabelsResult):
        results = [results]
    results = list(results)
    if not results or not all(isinstance(r, experiments.RandomLabelsResult) for r in results):
        raise TypeError("results must be RandomLabelsResult objects (from random_labels_experiment)")
    fig = _figure(8.2, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for r in results:
        # blue for clean labels through purple to red for fully shuffled ones
        c = (1 - r.fraction) * np.array([0.12, 0.47, 0.71]) + r.fraction * np.array([0.84, 0.15, 0.16])
        epochs = r.series("epoch")
        label = f"{100 * r.fraction:g}% shuffled"
        ax.plot(epochs, [100 * a for a in r.series("train_accuracy")], color=c, linewidth=1.8,
                label=f"train, {label}")
        ax.plot(epochs, [100 * a for a in r.series("test_accuracy")], color=c, linestyle="--", linewidth=1.4,
                label=f"test (true labels), {label}")
    ax.axhline(100 * results[0].chance, color="gray", linestyle=":", linewidth=1, label="chance")
    ax.set_ylim(0, 100)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    cfg = results[0].config
    ax.set_title(f"memorising shuffled labels: {cfg['n_train']} samples, network "
                 f"{'-'.join(str(s) for s in cfg['sizes'])}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return _finish(fig, path, dpi)
