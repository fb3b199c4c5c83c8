"""scikit-learn estimators on fastgd: `MLPClassifier` and `MLPRegressor`.

    from fastgd.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=50, random_state=0).fit(X, y)

Names and parameters follow `sklearn.neural_network` so the estimators drop into Pipeline,
GridSearchCV and cross_val_score; the training itself is one `fastgd.Trainer.fit` call over
`max_iter` epochs, with a per-epoch callback for scikit-learn's stopping rules (tol,
n_iter_no_change, early_stopping). What this module adds around the core, in one place each:

* `_Task`: turns y into what the network trains on and back (label encoding with LabelEncoder
  semantics, binary with one sigmoid unit, multilabel, regression targets standardised).
* `_BaseMLP._fit`: validation at the boundary, network and trainer construction, stopping rules.

scikit-learn is an optional extra; ``import fastgd`` never imports this module.
"""
from __future__ import annotations

import numbers
import os
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state, column_or_1d
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('fastgd.sklearn needs scikit-learn >= 1.6: pip install "fastgd[sklearn]"') from exc

from . import optim
from ._checks import available_cores
from .network import Network
from .trainer import Trainer

__all__ = ["MLPClassifier", "MLPRegressor"]

#: scikit-learn's activation names that differ from fastgd's; any other name goes to Network as is.
_ACTIVATION_ALIASES = {"logistic": "sigmoid"}
SOLVERS = ("sgd", "adam", "adamw")


class _Continued:
    """An optimiser that keeps its state when a Trainer resets it, once it has state of the right shape.

    The Trainer starts every fit() with fresh optimiser state; scikit-learn's partial_fit instead
    continues one optimiser across calls (Adam's moments and step count). Each estimator fit()
    makes a new one of these, so fit() still starts afresh; partial_fit passes the same one again.
    """

    def reset(self, params):
        if len(self.state) == self._state_arrays() and \
                all(s.shape == params.shape and s.dtype == params.dtype for s in self.state) and self._started:
            return self
        self._started = True
        return super().reset(params)

    _started = False


class _ContinuedSGD(_Continued, optim.SGD):
    pass


class _ContinuedAdam(_Continued, optim.Adam):
    pass


class _ContinuedAdamW(_Continued, optim.AdamW):
    pass


# ---- targets: encoding for the network and decoding of its outputs -----------------------------
class _Task:
    """What the network is asked to learn from y, and how its outputs turn back into predictions.

    kind is "binary" (one sigmoid unit, binary cross-entropy), "multiclass" (softmax,
    cross-entropy), "multilabel" (one sigmoid unit per label) or "regression" (linear units,
    MSE). The network keeps what a saved model needs: its class labels (`net.classes`) and, for
    regression, target scalers (`net.fit_scalers(y=...)`, the first fit's mean and standard
    deviation per output) that the Trainer trains through and `net.predict_proba` undoes.
    """

    def __init__(self, kind, classes=None, n_targets=None):
        self.kind = kind
        self.classes = classes
        self.n_targets = n_targets

    @property
    def n_outputs(self):
        if self.kind == "binary":
            return 1
        if self.kind in ("multiclass", "multilabel"):
            return len(self.classes)
        return self.n_targets

    @property
    def output(self):
        return {"binary": "sigmoid", "multiclass": "softmax", "multilabel": "sigmoid", "regression": "linear"}[self.kind]

    @property
    def loss(self):
        return "mse" if self.kind == "regression" else "cross_entropy"

    def configure(self, net, y):
        """Store in a new network what its saved file needs to predict on its own."""
        if self.kind == "regression":
            # Standardised targets keep a learning rate like 1e-3 sensible for targets of any scale.
            net.fit_scalers(y=y)
        elif self.kind in ("binary", "multiclass") and self.classes.dtype.kind in "biufU":
            net.classes = self.classes

    # classification ------------------------------------------------------------------------
    @classmethod
    def for_classes(cls, y, classes=None):
        """The task for labels y (and, for partial_fit, the full list of classes)."""
        if y.ndim == 2:  # a label indicator matrix
            return cls("multilabel", classes=np.arange(y.shape[1]))
        classes = np.unique(y) if classes is None else np.unique(np.asarray(classes))
        if len(classes) < 2:
            raise ValueError(f"MLPClassifier needs samples of at least 2 classes; got 1 class: {classes.tolist()}")
        return cls("binary" if len(classes) == 2 else "multiclass", classes=classes)

    def encode_labels(self, y):
        """What the Trainer takes: class indices 0..K-1 (LabelEncoder's), or the 0/1 indicator matrix."""
        if self.kind == "multilabel":
            if y.shape[1] != len(self.classes):
                raise ValueError(f"y has {y.shape[1]} labels per sample; this classifier was fit with {len(self.classes)}")
            return np.ascontiguousarray(y, dtype=np.float64)
        index = np.minimum(np.searchsorted(self.classes, y), len(self.classes) - 1)
        unseen = self.classes[index] != y
        if unseen.any():
            raise ValueError(f"y contains labels not in classes_ {self.classes.tolist()}: "
                             f"{np.unique(np.asarray(y)[unseen]).tolist()[:10]}")
        return index.astype(np.int64)

    def proba(self, out):
        """Class probabilities from the network's outputs, float64, rows summing to 1 (not multilabel)."""
        out = out.astype(np.float64)
        if self.kind == "binary":
            return np.column_stack([1.0 - out[:, 0], out[:, 0]])
        if self.kind == "multiclass":
            return out / out.sum(axis=1, keepdims=True)  # exact in float64 when the net ran in float32
        return out

    def labels(self, out):
        if self.kind == "binary":  # > 0.5 as scikit-learn's LabelBinarizer (and argmax of proba) decide
            return self.classes[(out[:, 0] > 0.5).astype(np.intp)]
        if self.kind == "multiclass":
            return self.classes[np.argmax(out, axis=1)]
        return (out > 0.5).astype(np.int64)

    # regression ----------------------------------------------------------------------------
    @classmethod
    def for_targets(cls, y):
        return cls("regression", n_targets=y.shape[1])

    def encode_targets(self, y):
        if y.shape[1] != self.n_targets:
            raise ValueError(f"y has {y.shape[1]} outputs per sample; this regressor was fit with {self.n_targets}")
        return y  # raw: the Trainer standardises it through the network's target scalers

    @staticmethod
    def values(out):
        return out.astype(np.float64)  # net.predict_proba has already undone the target scaling


def _check_hidden(hidden_layer_sizes):
    sizes = [hidden_layer_sizes] if isinstance(hidden_layer_sizes, numbers.Integral) else hidden_layer_sizes
    try:
        sizes = list(sizes)
    except TypeError:
        raise TypeError(f"hidden_layer_sizes must be an int or a sequence of ints like (100,), "
                        f"got {hidden_layer_sizes!r}") from None
    for s in sizes:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) or s < 1:
            raise ValueError(f"hidden_layer_sizes must hold integers >= 1, got {hidden_layer_sizes!r}")
    return [int(s) for s in sizes]


def _check_number(value, what, lo, hi=np.inf, lo_open=False, hi_open=False, integral=False):
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kind):
        raise TypeError(f"{what} must be {'an integer' if integral else 'a real number'}, got {value!r}")
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok or value != value:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{what} must lie in {left}{lo}, {hi}{right}, got {value!r}")
    return value


# ---- the shared estimator ----------------------------------------------------------------------
class _BaseMLP(BaseEstimator):
    """Parameters and training shared by MLPClassifier and MLPRegressor (see their docstrings)."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=1e-4,
                 batch_size="auto", learning_rate_init=1e-3, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, backend="auto", threads=None, dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend
        self.threads = threads
        self.dtype = dtype

    # ---- subclasses say how y becomes a task -------------------------------------------------
    def _validate_y(self, y, incremental, classes):
        raise NotImplementedError

    def _encode(self, y):
        raise NotImplementedError

    def _validation_score(self, X, y):
        raise NotImplementedError

    # ---- parameters --------------------------------------------------------------------------
    def _check_params(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {self.solver!r} "
                             f"(fastgd trains by minibatch SGD and has no 'lbfgs')")
        if self.activation == "identity":
            raise ValueError("activation 'identity' is not available for hidden layers in fastgd; use "
                             "'relu', 'tanh' or 'logistic'")
        _check_number(self.alpha, "alpha", 0.0)
        _check_number(self.learning_rate_init, "learning_rate_init", 0.0, lo_open=True)
        _check_number(self.max_iter, "max_iter", 1, integral=True)
        _check_number(self.tol, "tol", 0.0)
        _check_number(self.momentum, "momentum", 0.0, 1.0, hi_open=True)
        _check_number(self.validation_fraction, "validation_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
        _check_number(self.beta_1, "beta_1", 0.0, 1.0, hi_open=True)
        _check_number(self.beta_2, "beta_2", 0.0, 1.0, hi_open=True)
        _check_number(self.epsilon, "epsilon", 0.0, lo_open=True)
        _check_number(self.n_iter_no_change, "n_iter_no_change", 1, integral=True)
        if self.batch_size != "auto":
            _check_number(self.batch_size, "batch_size", 1, integral=True)
        dtype = np.dtype(self.dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        return dtype

    def _batch_size(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn(f"batch_size {self.batch_size} is larger than the {n} samples; clipped to {n}", UserWarning)
            return n
        return int(self.batch_size)

    def _optimizer(self, batch_size, incremental):
        """scikit-learn's solver settings as a fastgd optimiser; partial_fit continues the last one."""
        lr = float(self.learning_rate_init)
        # scikit-learn adds alpha * W to the *summed* minibatch gradient before dividing by the
        # batch rows, so its L2 per mean-gradient step is alpha / batch_size. AdamW's decay is
        # decoupled (W -= lr * wd * W), and there alpha is that weight_decay as given.
        decay = float(self.alpha) if self.solver == "adamw" else float(self.alpha) / batch_size
        opt = getattr(self, "_optimizer_", None)
        if not incremental or opt is None or opt.name != self.solver:
            if self.solver == "sgd":
                momentum = float(self.momentum)
                opt = _ContinuedSGD(lr, momentum=momentum, nesterov=bool(self.nesterovs_momentum and momentum > 0))
            else:
                cls = _ContinuedAdam if self.solver == "adam" else _ContinuedAdamW
                opt = cls(lr, betas=(float(self.beta_1), float(self.beta_2)), eps=float(self.epsilon))
        opt.lr, opt.weight_decay = lr, decay  # may differ between partial_fit calls (set_params, batch size)
        self._optimizer_ = opt
        return opt

    def _threads(self):
        """threads=None: every core, unless OMP_NUM_THREADS says less. joblib sets it in the workers of
        GridSearchCV(n_jobs=k) and cross_val_score(n_jobs=k) to cores // k, and threads that wait for
        a core another worker holds slow training ~10x."""
        if self.threads is not None:
            return self.threads
        try:
            limit = int(os.environ.get("OMP_NUM_THREADS", ""))
        except ValueError:
            return None
        return max(1, limit) if limit < available_cores() else None

    def _trainer(self, batch_size, epochs, seed, incremental=False):
        """The Trainer for one fit/partial_fit call: scikit-learn's names mapped onto fastgd's."""
        return Trainer(self.net_, loss=self._task.loss, batch_size=batch_size, epochs=epochs,
                       backend=self.backend, threads=self._threads(), seed=seed, shuffle=bool(self.shuffle),
                       optimizer=self._optimizer(batch_size, incremental))

    # ---- training ----------------------------------------------------------------------------
    def _fit(self, X, y, incremental=False, classes=None):
        dtype = self._check_params()
        first = not (hasattr(self, "net_") and (incremental or self.warm_start))
        X, y = validate_data(self, X, y, reset=first, dtype=dtype, accept_sparse=("csr", "csc", "coo"),
                             multi_output=True, y_numeric=isinstance(self, RegressorMixin))
        if hasattr(X, "toarray"):  # the kernels take dense rows; a sparse X is densified once
            X = np.ascontiguousarray(X.toarray(), dtype=dtype)
        y = self._validate_y(y, first, classes)
        rng = check_random_state(self.random_state)
        if first:
            self._task = self._make_task(y, classes)
            sizes = [X.shape[1], *_check_hidden(self.hidden_layer_sizes), self._task.n_outputs]
            activation = _ACTIVATION_ALIASES.get(self.activation, self.activation)
            self.net_ = Network(sizes, activation=activation, output=self._task.output, dtype=dtype,
                                seed=int(rng.randint(np.iinfo(np.int32).max)))
            self._task.configure(self.net_, y)
            self.n_iter_, self.t_, self.loss_curve_ = 0, 0, []
            self.best_loss_ = np.inf
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = -np.inf if self.early_stopping else None
            self._no_improvement = 0
        elif self.net_.dtype != dtype:
            raise ValueError(f"dtype changed from {self.net_.dtype} to {dtype} since the first fit; refit from scratch")
        elif self.early_stopping and self.validation_scores_ is None:  # switched on between warm-started fits
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
        elif not self.early_stopping and self.best_loss_ is None:  # switched off
            self.best_loss_ = np.inf
        targets = self._encode(y)

        val = None
        if self.early_stopping and not incremental:
            stratify = y if (getattr(self._task, "kind", "") in ("binary", "multiclass")) else None
            X, X_val, targets, _, y, y_val = train_test_split(
                X, targets, y, test_size=self.validation_fraction, random_state=rng.randint(np.iinfo(np.int32).max),
                stratify=stratify)
            val = (X_val, y_val)
            if X.shape[0] < 1 or X_val.shape[0] < 1:
                raise ValueError(f"validation_fraction {self.validation_fraction} of {len(y)} samples leaves no "
                                 f"training or no validation data")
        n = X.shape[0]
        batch_size = self._batch_size(n)
        epochs = 1 if incremental else int(self.max_iter)
        if not incremental and not self.warm_start:
            self._no_improvement = 0
        trainer = self._trainer(batch_size, epochs, int(rng.randint(np.iinfo(np.int32).max)), incremental)
        best_params = [None]

        def after_epoch(record, _trainer):
            """scikit-learn's stopping rules; True stops the Trainer."""
            loss = float(record["train_loss"])
            self.loss_curve_.append(loss)
            self.n_iter_ += 1
            self.t_ += n
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
            if incremental:
                return False
            if val is not None:
                score = self._validation_score(*val)
                self.validation_scores_.append(score)
                improved = score >= self.best_validation_score_ + self.tol
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    best_params[0] = self.net_.params.copy()
            else:
                improved = loss <= self.best_loss_ - self.tol
                self.best_loss_ = min(self.best_loss_, loss)
            self._no_improvement = 0 if improved else self._no_improvement + 1
            return self._no_improvement > self.n_iter_no_change

        history = trainer.fit(X, targets, callbacks=(after_epoch,))
        if val is not None:
            self.best_loss_ = None
            if best_params[0] is not None:  # early stopping keeps the weights of the best validation score
                self.net_.params[...] = best_params[0]
        if not incremental and not history.stopped_early and len(history) == epochs and \
                self._no_improvement <= self.n_iter_no_change:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          f"optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def fit(self, X, y):
        """Train for up to max_iter epochs (continuing from the current weights with warm_start=True)."""
        return self._fit(X, y)

    # ---- inference ---------------------------------------------------------------------------
    def _forward(self, X):
        check_is_fitted(self, "net_")
        X = validate_data(self, X, reset=False, dtype=self.net_.dtype, accept_sparse=("csr", "csc", "coo"))
        if hasattr(X, "toarray"):
            X = np.ascontiguousarray(X.toarray(), dtype=self.net_.dtype)
        return self.net_.predict_proba(X, backend=self.backend, threads=self._threads())

    # ---- scikit-learn's fitted attributes, read from the network's flat parameter buffer ------
    @property
    def coefs_(self):
        """Weight matrices (n_in, n_out) per layer, as copies (the network owns the parameters)."""
        net = self.net_
        return [net.params[w:b].reshape(i, o).copy() for w, b, i, o in net.layout]

    @property
    def intercepts_(self):
        net = self.net_
        return [net.params[b:b + o].copy() for w, b, i, o in net.layout]

    @property
    def n_layers_(self):
        return len(self.net_.sizes)

    @property
    def n_outputs_(self):
        return self.net_.sizes[-1]

    @property
    def out_activation_(self):
        return {"sigmoid": "logistic", "linear": "identity"}.get(self.net_.output, self.net_.output)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.non_deterministic = False
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by fastgd's compiled epoch loops.

    Parameters follow `sklearn.neural_network.MLPClassifier` (solver "sgd", "adam" or "adamw";
    no "lbfgs" and no learning-rate schedule), plus fastgd's `backend` ("auto", "numpy",
    "cython", "numba"), `threads` (None: every core, or OMP_NUM_THREADS if that is lower, as in
    joblib's workers) and `dtype` ("float32" or "float64").

    Labels may be of any type (sorted as np.unique does, like LabelEncoder). Two classes train one
    sigmoid unit with binary cross-entropy, more classes a softmax with cross-entropy; a 2-D 0/1
    indicator y trains one sigmoid unit per label (multilabel). `alpha` is the L2 penalty with
    scikit-learn's scaling (alpha / batch rows per mean-gradient step, weights only).
    sample_weight is not supported. `loss_curve_` holds the data loss of each epoch, measured
    while it trained (without the L2 term).
    """

    def _make_task(self, y, classes):
        return _Task.for_classes(y, classes)

    def _validate_y(self, y, first, classes):
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        kind = type_of_target(y)
        if kind not in ("binary", "multiclass", "multilabel-indicator"):
            raise ValueError(f"MLPClassifier does not support {kind} targets")
        if first:
            return y
        task = self._task
        if (task.kind == "multilabel") != (y.ndim == 2):
            raise ValueError("y changed between multilabel and single-label since the first fit")
        if classes is not None and task.kind != "multilabel" and not np.array_equal(np.unique(classes), task.classes):
            raise ValueError(f"classes={list(classes)} differs from classes_ {task.classes.tolist()} of the first call")
        return y

    def _encode(self, y):
        return self._task.encode_labels(y)

    def _validation_score(self, X, y):
        pred = self._task.labels(self.net_.predict_proba(X, self.backend, self._threads()))
        return float(np.mean(np.all(pred == y, axis=1) if y.ndim == 2 else pred == y))  # subset accuracy

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y). The first call needs `classes` (every label that will ever appear)."""
        if not hasattr(self, "net_"):
            y_arr = np.asarray(y)
            if classes is None and y_arr.ndim == 1:
                raise ValueError("classes must be passed on the first call to partial_fit")
        return self._fit(X, y, incremental=True, classes=classes)

    @property
    def classes_(self):
        check_is_fitted(self, "net_")
        return self._task.classes

    def predict(self, X):
        out = self._forward(X)  # first: it raises NotFittedError before _task is looked up
        return self._task.labels(out)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns in the order of classes_."""
        out = self._forward(X)
        return self._task.proba(out)

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by fastgd's compiled epoch loops.

    Parameters follow `sklearn.neural_network.MLPRegressor` (see MLPClassifier for what differs),
    plus `backend`, `threads` and `dtype`. Linear output units and squared error; y may have
    several outputs. Unlike scikit-learn, each output is standardised with the mean and standard
    deviation of the first fit's y for training (predictions are mapped back), so targets of any
    scale train with the default learning rate; `loss_curve_` is therefore in standardised units.
    """

    def _make_task(self, y, classes):
        return _Task.for_targets(y)

    def _validate_y(self, y, first, classes):
        return np.asarray(y, dtype=np.float64).reshape(len(y), -1)

    def _encode(self, y):
        return self._task.encode_targets(y)

    def _validation_score(self, X, y):
        return float(r2_score(y, self._task.values(self.net_.predict_proba(X, self.backend, self._threads()))))

    def partial_fit(self, X, y):
        """One epoch over (X, y); the first call fixes the target standardisation."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """Predicted values: (n_samples,) for one output, else (n_samples, n_outputs)."""
        out = self._forward(X)
        out = self._task.values(out)
        return out[:, 0] if out.shape[1] == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
