"""What a trained network learned, as numbers: confusion, confident mistakes, noise, random labels.

The computations live here, apart from the pictures (`fastgd.viz`), so they run and are tested
without matplotlib. Every function is seeded and returns plain NumPy arrays or JSON-ready dicts.

"Confidence" is the largest output activation of a sample: a probability for a softmax output,
and for a sigmoid output (the lesson's MSE network) the activation of the most active output unit
in [0, 1], which is how that network reports how sure it is. A linear output is clipped to [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import _checks

#: Mean and standard deviation of the MNIST training pixels scaled to [0, 1].
MNIST_PIXEL_MEAN = 0.1307
MNIST_PIXEL_STD = 0.3081
NOISE_KINDS = ("uniform", "gaussian")


# ---- basic measurements ------------------------------------------------------------------------
def top_confidence(outputs, output="softmax"):
    """(confidence, predicted class) of each row of output activations `outputs` (n, n_classes)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim != 2 or outputs.shape[0] == 0:
        raise ValueError(f"outputs must be a non-empty (n, n_classes) array, got shape {outputs.shape}")
    _checks.check_choice(output, _checks.OUTPUTS, "output")
    predicted = np.argmax(outputs, axis=1)
    confidence = outputs[np.arange(len(outputs)), predicted]
    if output == "linear":
        confidence = np.clip(confidence, 0.0, 1.0)
    return confidence, predicted


def confusion_matrix(y_true, y_pred, n_classes=None):
    """Counts C[i, j] of samples with true class i predicted as class j (rows sum to class sizes)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D and of equal length, got {y_true.shape} and {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
            raise ValueError(f"{name} must hold non-negative integer class labels")
    if n_classes is None:
        n_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    n_classes = _checks.check_positive_int(n_classes, "n_classes")
    if y_true.size and max(y_true.max(), y_pred.max()) >= n_classes:
        raise ValueError(f"a label is >= n_classes ({n_classes})")
    counts = np.bincount(y_true.astype(np.int64) * n_classes + y_pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def top_confusions(cm, k=5):
    """The `k` most frequent mistakes in a confusion matrix: [(true, predicted, count), ...]."""
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:k]
    pairs = [(int(i // cm.shape[1]), int(i % cm.shape[1]), int(off.flat[i])) for i in order]
    return [p for p in pairs if p[2] > 0]


def most_confident_errors(outputs, y_true, k=25, output="softmax"):
    """The `k` misclassified samples the network was surest about, surest first.

    Returns a dict of arrays: ``index`` (row in the data), ``true``, ``predicted``, ``confidence``.
    """
    k = _checks.check_positive_int(k, "k", minimum=0)
    confidence, predicted = top_confidence(outputs, output)
    y_true = np.asarray(y_true).astype(np.int64)
    if y_true.shape != predicted.shape:
        raise ValueError(f"outputs have {len(predicted)} rows but y_true has shape {y_true.shape}")
    wrong = np.flatnonzero(predicted != y_true)
    # stable sort on -confidence: ties keep data order, so the result is reproducible
    pick = wrong[np.argsort(-confidence[wrong], kind="stable")][:k]
    return {"index": pick, "true": y_true[pick], "predicted": predicted[pick], "confidence": confidence[pick]}


def confidence_stats(outputs, output="softmax", threshold=0.9, bins=10):
    """Distribution of top-class confidence and of predicted classes, as a JSON-ready dict."""
    confidence, predicted = top_confidence(outputs, output)
    n_classes = np.asarray(outputs).shape[1]
    class_counts = np.bincount(predicted, minlength=n_classes)
    hist, edges = np.histogram(confidence, bins=bins, range=(0.0, 1.0))
    return {
        "n": int(len(confidence)),
        "mean_confidence": float(confidence.mean()),
        "median_confidence": float(np.median(confidence)),
        "fraction_above_threshold": float(np.mean(confidence > threshold)),
        # for a sigmoid output each unit answers "is it this class?": above 0.5 means yes
        "fraction_above_half": float(np.mean(confidence > 0.5)),
        "predicted_class_histogram": [int(c) for c in class_counts],
        "top_class_share": float(class_counts.max() / len(predicted)),
        "confidence_histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in hist]},
    }


# ---- inspecting a model on its test set -----------------------------------------------------------
@dataclass
class Inspection:
    """A model measured on labelled data: accuracy, confusion matrix, its surest mistakes."""

    accuracy: float
    confusion: np.ndarray
    errors: dict
    n: int
    output: str
    outputs: np.ndarray = field(repr=False)

    def to_dict(self):
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "confusion_matrix": self.confusion.tolist(),
            "top_confusions": [{"true": t, "predicted": p, "count": c} for t, p, c in top_confusions(self.confusion)],
            "most_confident_errors": [
                {"index": int(i), "true": int(t), "predicted": int(p), "confidence": float(c)}
                for i, t, p, c in zip(self.errors["index"], self.errors["true"], self.errors["predicted"],
                                      self.errors["confidence"])
            ],
        }


def inspect_model(net, X, y, k=25, backend="auto", threads=None):
    """Accuracy, confusion matrix and the `k` most confident errors of `net` on (X, y)."""
    outputs = net.predict_proba(X, backend=backend, threads=threads)
    _, labels = _checks.check_y(y, outputs.shape[0], net.sizes[-1], net.dtype, "mse")
    _, predicted = top_confidence(outputs, net.output)
    return Inspection(
        accuracy=float(np.mean(predicted == labels)),
        confusion=confusion_matrix(labels.astype(np.int64), predicted, n_classes=net.sizes[-1]),
        errors=most_confident_errors(outputs, labels, k=k, output=net.output),
        n=int(len(labels)),
        output=net.output,
        outputs=outputs,
    )


# ---- noise ----------------------------------------------------------------------------------------
def _normal_cdf(z):
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _normal_pdf(z):
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def clipped_normal_moments(mu, sigma):
    """Mean and standard deviation of clip(N(mu, sigma²), 0, 1), in closed form."""
    a, b = -mu / sigma, (1.0 - mu) / sigma
    pa, pb, ca, cb = _normal_pdf(a), _normal_pdf(b), _normal_cdf(a), _normal_cdf(b)
    inside = cb - ca
    mean = mu * inside + sigma * (pa - pb) + (1.0 - cb)
    second = (mu * mu * inside + 2.0 * mu * sigma * (pa - pb)
              + sigma * sigma * (inside + a * pa - b * pb) + (1.0 - cb))
    return mean, math.sqrt(max(second - mean * mean, 0.0))


def clipped_normal_params(mean=MNIST_PIXEL_MEAN, std=MNIST_PIXEL_STD, iterations=60):
    """(mu, sigma) such that clip(N(mu, sigma²), 0, 1) has the given mean and std.

    Clipping at 0 raises the mean of a normal centred near 0, so drawing N(mean, std²) and
    clipping would give brighter noise than the digits; this solves for the pre-clip parameters
    (Newton's method with a finite-difference Jacobian) so the noise matches the data's moments.
    """
    mean = _checks.check_positive_float(mean, "mean")
    std = _checks.check_positive_float(std, "std")
    if not (mean < 1 and std < math.sqrt(mean * (1 - mean))):
        raise ValueError(f"no [0, 1]-valued noise has mean {mean} and std {std} (need std < sqrt(mean(1-mean)))")
    mu, sigma = mean, std
    for _ in range(iterations):
        m, s = clipped_normal_moments(mu, sigma)
        r = np.array([m - mean, s - std])
        if np.abs(r).max() < 1e-12:
            break
        h = 1e-7
        J = np.empty((2, 2))
        J[:, 0] = (np.array(clipped_normal_moments(mu + h, sigma)) - (m, s)) / h
        J[:, 1] = (np.array(clipped_normal_moments(mu, sigma + h)) - (m, s)) / h
        d_mu, d_sigma = np.linalg.solve(J, -r)
        mu += d_mu
        sigma = max(sigma + d_sigma, sigma / 4)  # keep sigma positive
    return float(mu), float(sigma)


def noise_images(kind, n, n_pixels=784, seed=0, mean=MNIST_PIXEL_MEAN, std=MNIST_PIXEL_STD, dtype=np.float32):
    """`n` noise images with pixels in [0, 1], shape (n, n_pixels).

    kind "uniform": every pixel uniform on [0, 1]. kind "gaussian": every pixel drawn from a
    normal and clipped to [0, 1], with pre-clip parameters chosen so that the clipped pixels have
    mean `mean` and standard deviation `std` (by default MNIST's).
    """
    _checks.check_choice(kind, NOISE_KINDS, "noise kind")
    n = _checks.check_positive_int(n, "n")
    n_pixels = _checks.check_positive_int(n_pixels, "n_pixels")
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        images = rng.random((n, n_pixels))
    else:
        mu, sigma = clipped_normal_params(mean, std)
        images = np.clip(rng.normal(mu, sigma, (n, n_pixels)), 0.0, 1.0)
    return images.astype(dtype)


@dataclass
class NoiseResult:
    """Top-class confidence and predicted classes for noise images and for real test images."""

    stats: dict  # set name -> confidence_stats dict (plus pixel moments)
    confidences: dict  # set name -> (n,) array
    predictions: dict  # set name -> (n,) array
    threshold: float
    seed: int
    output: str
    test_accuracy: float | None = None

    def to_dict(self):
        return {"threshold": self.threshold, "seed": self.seed, "output": self.output,
                "test_accuracy": self.test_accuracy, "sets": self.stats}


def noise_experiment(net, X_test, y_test=None, n=1000, seed=0, threshold=0.9, kinds=NOISE_KINDS,
                     backend="auto", threads=None):
    """Feed `n` uniform and `n` Gaussian noise images to `net`, beside the real test images `X_test`.

    The Gaussian noise matches the pixel mean and std of `X_test` (uint8 images are scaled by
    1/255). Returns a `NoiseResult`; ``result.to_dict()`` is JSON-ready.
    """
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    X_checked, scale = _checks.check_X(X_test, net.sizes[0], net.dtype)
    pixels = X_checked.astype(np.float64) * scale
    data_mean, data_std = float(pixels.mean()), float(pixels.std())
    sets = {}
    for i, kind in enumerate(kinds):
        sets[kind] = noise_images(kind, n, net.sizes[0], seed=[seed, i], mean=data_mean, std=data_std,
                                  dtype=net.dtype)
    sets["test"] = X_test
    stats, confidences, predictions = {}, {}, {}
    test_accuracy = None
    for name, images in sets.items():
        outputs = net.predict_proba(images, backend=backend, threads=threads)
        confidences[name], predictions[name] = top_confidence(outputs, net.output)
        s = confidence_stats(outputs, net.output, threshold=threshold)
        px = pixels if name == "test" else np.asarray(images, dtype=np.float64)
        s["pixel_mean"], s["pixel_std"] = float(px.mean()), float(px.std())
        stats[name] = s
        if name == "test" and y_test is not None:
            _, labels = _checks.check_y(y_test, len(outputs), net.sizes[-1], net.dtype, "mse")
            test_accuracy = float(np.mean(predictions[name] == labels))
    return NoiseResult(stats=stats, confidences=confidences, predictions=predictions, threshold=threshold,
                       seed=seed, output=net.output, test_accuracy=test_accuracy)


# ---- random labels ----------------------------------------------------------------------------------
def shuffle_labels(y, fraction, rng):
    """Shuffle the labels of a random `fraction` of the samples among themselves.

    Returns (new labels, mask of the samples whose label changed). Shuffling (rather than drawing
    new labels) keeps the class frequencies; about 1/n_classes of the shuffled samples keep their
    true label by chance and count as unchanged.
    """
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    y = np.asarray(y)
    chosen = rng.permutation(len(y))[: int(round(fraction * len(y)))]
    new = y.copy()
    new[chosen] = y[rng.permutation(chosen)]
    return new, new != y


@dataclass
class RandomLabelsResult:
    """Per-epoch accuracies of a network trained on (partly) shuffled labels."""

    fraction: float
    records: list  # per-epoch dicts
    config: dict
    n_changed: int
    chance: float

    def series(self, key):
        return [r[key] for r in self.records]

    def to_dict(self):
        return {"fraction": self.fraction, "chance": self.chance, "n_changed": self.n_changed,
                "config": self.config, "epochs": self.records}


def random_labels_experiment(X_train, y_train, X_test, y_test, fraction=1.0, n_train=5000, hidden=(512,),
                             activation="relu", output="softmax", loss="cross_entropy", lr=0.05, batch_size=10,
                             epochs=30, backend="auto", threads=None, seed=0, dtype=np.float32, n_test=None,
                             callback=None):
    """Train a network on `n_train` MNIST-like samples after shuffling a `fraction` of their labels.

    After every epoch it measures, with the current weights: ``train_accuracy`` on the training
    subset against the labels it was trained on (the shuffled ones: memorisation),
    ``test_accuracy`` on the test set against the true labels (generalisation), and for
    0 < fraction < 1 ``changed_accuracy`` (samples whose label changed, against their new label),
    ``changed_true_accuracy`` (the same samples against their true label) and ``clean_accuracy``
    (the samples whose label is still true). ``running_train_accuracy`` is the Trainer's
    accuracy measured during the epoch. `n_test` measures test accuracy on a fixed random
    subset of the test set (default: all of it). `callback(record)` is called after each epoch.

    The defaults (5,000 samples, 784-512-10 ReLU/softmax, lr 0.05, batch 10, 30 epochs) memorise
    fully shuffled MNIST labels to over 90% training accuracy.
    """
    from .network import Network
    from .trainer import Trainer

    X_train = _checks._as_array(X_train, "X_train")
    X_test = _checks._as_array(X_test, "X_test")
    y_train = np.asarray(y_train)
    y_test = np.asarray(y_test)
    if X_train.ndim != 2 or len(X_train) != len(y_train):
        raise ValueError(f"X_train {X_train.shape} and y_train {y_train.shape} do not match")
    n_train = _checks.check_positive_int(n_train, "n_train")
    if n_train > len(X_train):
        raise ValueError(f"n_train={n_train} is more than the {len(X_train)} training samples")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable")
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    # independent streams: the subset, the shuffle and the test subset do not shift one another
    rng_subset, rng_labels, rng_test = (np.random.default_rng([seed, i]) for i in range(3))
    subset = np.sort(rng_subset.choice(len(X_train), n_train, replace=False))
    if n_test is not None:
        n_test = _checks.check_positive_int(n_test, "n_test")
        if n_test < len(X_test):
            keep = np.sort(rng_test.choice(len(X_test), n_test, replace=False))
            X_test, y_test = X_test[keep], y_test[keep]
    X, y_true = X_train[subset], y_train[subset].astype(np.int64)
    y_noisy, changed = shuffle_labels(y_true, fraction, rng_labels)
    net = Network([X.shape[1], *hidden, n_classes], activation=activation, output=output, dtype=dtype, seed=seed)
    trainer = Trainer(net, loss=loss, lr=lr, batch_size=batch_size, epochs=epochs, backend=backend,
                      threads=threads, seed=seed)
    partial = 0.0 < fraction < 1.0
    records = []

    def measure(record, tr):
        # one forward pass over the training subset with the weights as they are after this epoch
        train_pred = net.predict(X, backend=tr.backend.name, threads=tr.threads)
        rec = {
            "epoch": record["epoch"],
            "train_accuracy": float(np.mean(train_pred == y_noisy)),
            "test_accuracy": tr.evaluate(X_test, y_test)["accuracy"],
            "running_train_accuracy": record["train_accuracy"],
            "train_loss": record["train_loss"],
            "seconds": record["seconds"],
        }
        if partial:
            rec["changed_accuracy"] = float(np.mean(train_pred[changed] == y_noisy[changed]))
            rec["changed_true_accuracy"] = float(np.mean(train_pred[changed] == y_true[changed]))
            rec["clean_accuracy"] = float(np.mean(train_pred[~changed] == y_true[~changed]))
        records.append(rec)
        if callback is not None:
            callback(rec)

    trainer.fit(X, y_noisy, callbacks=[measure])
    config = {"n_train": n_train, "sizes": [int(s) for s in net.sizes], "activation": activation,
              "output": output, "loss": trainer.loss, "lr": trainer.lr, "batch_size": trainer.batch_size,
              "epochs": trainer.epochs, "backend": trainer.backend.name, "seed": seed, "n_test": int(len(X_test))}
    return RandomLabelsResult(fraction=float(fraction), records=records, config=config,
                              n_changed=int(changed.sum()), chance=1.0 / n_classes)
