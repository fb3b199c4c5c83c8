"""fastgd.sklearn: scikit-learn's estimator checks, label and target handling, meta-estimators."""
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")  # the `sklearn` extra; CI installs it

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_iris, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastgd  # noqa: E402
from fastgd.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# The defaults users get (Adam, float32, backend "auto"), and the other solvers in float64 on
# small networks. scikit-learn itself skips check_array_api_input unless SCIPY_ARRAY_API=1 is set
# before scipy is imported (it passes then: `SCIPY_ARRAY_API=1 pytest tests/test_sklearn.py -k
# array_api`), and the multilabel decision_function format check (we have no decision_function).
CHECKED = [
    MLPClassifier(random_state=0),
    MLPRegressor(random_state=0),
    MLPClassifier((16,), solver="sgd", learning_rate_init=0.05, dtype="float64", random_state=0),
    MLPRegressor((16,), solver="adamw", learning_rate_init=0.01, dtype="float64", random_state=0),
]


def expected_failed_checks(estimator):
    return EXPECTED_FAILURES.get(type(estimator).__name__, {})


#: Every check we expect to fail, with the reason (none today).
EXPECTED_FAILURES = {}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---- data ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args, **kwargs)


# ---- classification -----------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["sgd", "adam", "adamw"])
def test_classifier_learns_iris_with_each_solver(iris, solver):
    X, y = iris
    clf = quiet(MLPClassifier((16,), solver=solver, learning_rate_init=0.02, max_iter=150, random_state=0).fit, X, y)
    assert clf.score(X, y) > 0.93
    proba = clf.predict_proba(X)
    assert proba.shape == (150, 3) and np.allclose(proba.sum(axis=1), 1)
    assert np.array_equal(clf.predict(X), clf.classes_[np.argmax(proba, axis=1)])
    assert clf.net_.output == "softmax" and clf.n_outputs_ == 3 and clf.out_activation_ == "softmax"


@pytest.mark.parametrize("labels", [
    np.array(["setosa", "versicolor", "virginica"]),
    np.array([3, 7, 11]),
    np.array([-1.0, 0.0, 2.0]),
])
def test_any_label_type_with_label_encoder_order(iris, labels):
    X, y = iris
    y_lab = labels[y]
    clf = quiet(MLPClassifier((16,), learning_rate_init=0.02, max_iter=100, random_state=0).fit, X, y_lab)
    assert np.array_equal(clf.classes_, np.unique(y_lab))
    pred = clf.predict(X)
    assert pred.dtype == clf.classes_.dtype and set(pred) <= set(clf.classes_)
    assert clf.score(X, y_lab) > 0.9


def test_binary_task_trains_one_sigmoid_unit():
    X, y = make_classification(400, 8, random_state=0)
    y = np.where(y == 1, "yes", "no")
    from sklearn.neural_network import MLPClassifier as SkMLP

    clf = quiet(MLPClassifier((16,), learning_rate_init=0.01, max_iter=80, random_state=0).fit, X, y)
    sk = quiet(SkMLP((16,), learning_rate_init=0.01, max_iter=80, random_state=0).fit, X, y)
    assert clf.net_.sizes[-1] == 1 and clf.net_.output == "sigmoid" and clf.out_activation_ == "logistic"
    assert list(clf.classes_) == ["no", "yes"]
    proba = clf.predict_proba(X)
    assert proba.shape == (400, 2) and np.allclose(proba.sum(axis=1), 1)
    # the column for classes_[1] is the network's unit; predict thresholds it at 0.5
    p1 = clf.net_.predict_proba(X.astype(np.float32))[:, 0]
    assert np.allclose(proba[:, 1], p1)
    assert np.array_equal(clf.predict(X), np.where(p1 > 0.5, "yes", "no"))
    assert clf.score(X, y) > 0.85 and clf.score(X, y) >= sk.score(X, y) - 0.03


def test_multilabel_indicator_targets():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 6))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] < 0.5]).astype(int)
    clf = quiet(MLPClassifier((32,), learning_rate_init=0.01, max_iter=150, random_state=0).fit, X, Y)
    pred = clf.predict(X)
    assert pred.shape == Y.shape and set(np.unique(pred)) <= {0, 1}
    assert clf.predict_proba(X).shape == (600, 3)
    assert (pred == Y).mean() > 0.95


def test_one_class_is_a_clear_error():
    X = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(ValueError, match="at least 2 classes"):
        MLPClassifier().fit(X, np.full(10, "a"))


def test_continuous_labels_are_rejected():
    X = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier().fit(X, np.linspace(0, 1, 10))


# ---- regression ---------------------------------------------------------------------------------
def test_regressor_unscaled_targets_and_multi_output():
    X, Y = make_regression(2000, 10, n_targets=3, noise=5.0, random_state=0)
    Y = Y * 1000 + 5e4  # far from unit scale: trains because the estimator standardises targets
    reg = quiet(MLPRegressor((32,), learning_rate_init=0.01, max_iter=60, random_state=0).fit, X, Y)
    pred = reg.predict(X)
    assert pred.shape == (2000, 3)
    assert reg.score(X, Y) > 0.95
    # the network learns standardised targets (its scalers, saved with it); predictions are mapped back
    assert np.allclose(reg.net_.y_mean, Y.mean(axis=0)) and np.allclose(reg.net_.y_std, Y.std(axis=0))
    assert np.array_equal(pred, reg.net_.predict(X))
    y1 = Y[:, 0]
    reg1 = quiet(MLPRegressor((32,), learning_rate_init=0.01, max_iter=60, random_state=0).fit, X, y1)
    assert reg1.predict(X).shape == (2000,) and reg1.n_outputs_ == 1 and reg1.out_activation_ == "identity"


def test_constant_target_is_predicted():
    X = np.random.default_rng(0).standard_normal((50, 3))
    reg = quiet(MLPRegressor((4,), max_iter=300, tol=0.0, learning_rate_init=0.01, random_state=0).fit, X, np.full(50, 7.0))
    assert reg.net_.y_std.tolist() == [1.0]  # no division by a zero spread
    assert reg.loss_curve_[-1] < reg.loss_curve_[0] / 100
    assert abs(reg.predict(X).mean() - 7.0) < 0.05


# ---- parameters and their mapping onto the Trainer ----------------------------------------------
def test_alpha_is_scaled_like_sklearn_and_solver_keywords_reach_the_trainer(iris):
    X, y = iris
    est = MLPClassifier((4,), alpha=0.5, batch_size=25, solver="sgd", momentum=0.8, nesterovs_momentum=False,
                        learning_rate_init=0.03, max_iter=1, random_state=0)
    quiet(est.fit, X, y)
    trainer = est._trainer(25, 1, seed=0)
    assert trainer.batch_size == 25 and trainer.lr == 0.03
    assert trainer.weight_decay == pytest.approx(0.5 / 25)
    assert trainer.momentum == 0.8 and trainer.nesterov is False and trainer.optimizer.name == "sgd"
    est.set_params(solver="adam", beta_1=0.8, beta_2=0.99, epsilon=1e-6)
    opt = est._trainer(25, 1, seed=0).optimizer
    assert (opt.name, opt.beta1, opt.beta2, opt.eps, opt.weight_decay) == ("adam", 0.8, 0.99, 1e-6, 0.5 / 25)
    est.set_params(solver="adamw")
    opt = est._trainer(25, 1, seed=0).optimizer
    assert opt.name == "adamw" and opt.weight_decay == 0.5  # decoupled decay: alpha as given


def test_partial_fit_continues_the_optimiser_and_fit_starts_afresh(iris):
    X, y = iris
    clf = MLPClassifier((8,), batch_size=50, random_state=0)
    clf.partial_fit(X, y, classes=[0, 1, 2])
    opt = clf._optimizer_
    assert opt.step_count == 3
    m = opt.state[0].copy()
    clf.partial_fit(X, y)
    assert clf._optimizer_ is opt and opt.step_count == 6 and not np.array_equal(m, opt.state[0])
    # the same as one Trainer run of 2 epochs over the same data with the same visiting orders
    ref = MLPClassifier((8,), batch_size=50, random_state=0, shuffle=False)
    two = MLPClassifier((8,), batch_size=50, random_state=0, shuffle=False, max_iter=2)
    ref.partial_fit(X, y, classes=[0, 1, 2])
    ref.partial_fit(X, y)
    quiet(two.fit, X, y)
    assert np.allclose(ref.net_.params, two.net_.params, rtol=1e-5, atol=1e-6)
    quiet(clf.fit, X, y)  # fit() makes a new optimiser
    assert clf._optimizer_ is not opt


@pytest.mark.parametrize("params, match", [
    (dict(solver="lbfgs"), "solver"),
    (dict(activation="identity"), "identity"),
    (dict(activation="swish"), "activation"),
    (dict(hidden_layer_sizes=(0,)), "hidden_layer_sizes"),
    (dict(alpha=-1.0), "alpha"),
    (dict(learning_rate_init=0.0), "learning_rate_init"),
    (dict(max_iter=0), "max_iter"),
    (dict(momentum=1.0), "momentum"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(batch_size=0), "batch_size"),
    (dict(dtype="float16"), "dtype"),
    (dict(backend="gpu"), "backend"),
])
def test_bad_parameters_raise_clear_errors(iris, params, match):
    X, y = iris
    with pytest.raises(ValueError, match=match):
        MLPClassifier(**params).fit(X, y)


def test_batch_size_larger_than_data_is_clipped_with_a_warning(iris):
    X, y = iris
    with pytest.warns(UserWarning, match="clipped"):
        quiet(MLPClassifier((4,), batch_size=1000, max_iter=2).fit, X, y)


def test_same_random_state_same_model_and_different_state_different_model(iris):
    X, y = iris
    a = quiet(MLPClassifier((8,), max_iter=5, random_state=1).fit, X, y)
    b = quiet(MLPClassifier((8,), max_iter=5, random_state=1).fit, X, y)
    c = quiet(MLPClassifier((8,), max_iter=5, random_state=2).fit, X, y)
    assert np.array_equal(a.net_.params, b.net_.params)
    assert not np.array_equal(a.net_.params, c.net_.params)


def test_float64_dtype(iris):
    X, y = iris
    clf = quiet(MLPClassifier((8,), max_iter=5, dtype="float64", random_state=0).fit, X, y)
    assert clf.net_.dtype == np.float64 and clf.coefs_[0].dtype == np.float64


def test_fitted_attributes(iris):
    X, y = iris
    clf = quiet(MLPClassifier((8, 5), max_iter=7, random_state=0).fit, X, y)
    assert clf.n_features_in_ == 4 and clf.n_layers_ == 4 and clf.n_iter_ == 7 and len(clf.loss_curve_) == 7
    assert [c.shape for c in clf.coefs_] == [(4, 8), (8, 5), (5, 3)]
    assert [b.shape for b in clf.intercepts_] == [(8,), (5,), (3,)]
    assert clf.t_ == 7 * 150 and np.isfinite(clf.best_loss_)
    # coefs_ reproduce the network's outputs
    a = X
    for W, b in zip(clf.coefs_[:-1], clf.intercepts_[:-1]):
        a = np.maximum(a @ W + b, 0)
    z = a @ clf.coefs_[-1] + clf.intercepts_[-1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    assert np.allclose(p / p.sum(axis=1, keepdims=True), clf.predict_proba(X), atol=1e-5)


def test_feature_names_from_a_dataframe(iris):
    pd = pytest.importorskip("pandas")
    X, y = iris
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    clf = quiet(MLPClassifier((4,), max_iter=3, random_state=0).fit, df, y)
    assert list(clf.feature_names_in_) == ["a", "b", "c", "d"]
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(X)


def test_sparse_input_matches_dense(iris):
    sp = pytest.importorskip("scipy.sparse")
    X, y = iris
    dense = quiet(MLPClassifier((8,), max_iter=5, random_state=0).fit, X, y)
    sparse = quiet(MLPClassifier((8,), max_iter=5, random_state=0).fit, sp.csr_matrix(X), y)
    assert np.array_equal(dense.net_.params, sparse.net_.params)
    assert np.array_equal(dense.predict_proba(X), sparse.predict_proba(sp.csr_matrix(X)))


# ---- stopping rules -----------------------------------------------------------------------------
def test_tol_stops_when_the_training_loss_stalls_as_sklearn_does(iris):
    from sklearn.neural_network import MLPClassifier as SkMLP

    X, y = iris
    clf = MLPClassifier((8,), max_iter=500, tol=10.0, n_iter_no_change=3, random_state=0).fit(X, y)
    sk = SkMLP((8,), max_iter=500, tol=10.0, n_iter_no_change=3, random_state=0).fit(X, y)
    # with a huge tol only the first epoch improves (on inf): stop after n_iter_no_change + 1 more
    assert clf.n_iter_ == sk.n_iter_ == 5 and len(clf.loss_curve_) == 5


def test_max_iter_without_convergence_warns(iris):
    X, y = iris
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier((8,), max_iter=3, random_state=0).fit(X, y)


def test_early_stopping_keeps_the_best_validation_weights(iris):
    X, y = iris
    clf = MLPClassifier((8,), max_iter=300, early_stopping=True, validation_fraction=0.2, n_iter_no_change=5,
                        learning_rate_init=0.05, random_state=0, tol=0.0)
    quiet(clf.fit, X, y)
    scores = clf.validation_scores_
    assert len(scores) == clf.n_iter_ and clf.best_validation_score_ == max(scores)
    assert clf.best_loss_ is None
    assert clf.n_iter_ < 300
    # the weights kept are those of the best epoch: refit the same split and compare scores
    from sklearn.model_selection import train_test_split

    rng = np.random.RandomState(0)
    rng.randint(np.iinfo(np.int32).max)  # the network seed
    _, X_val, _, y_val = train_test_split(X, y, test_size=0.2, random_state=rng.randint(np.iinfo(np.int32).max),
                                          stratify=y)
    assert clf.score(X_val, y_val) == pytest.approx(clf.best_validation_score_)


def test_early_stopping_regressor_scores_r2():
    X, y = make_regression(500, 5, noise=1.0, random_state=0)
    reg = quiet(MLPRegressor((16,), max_iter=50, early_stopping=True, random_state=0, learning_rate_init=0.01).fit,
                X, y)
    assert len(reg.validation_scores_) == reg.n_iter_ and 0.9 < reg.best_validation_score_ <= 1.0


# ---- warm_start and partial_fit -----------------------------------------------------------------
def test_warm_start_continues_from_the_current_weights(iris):
    X, y = iris
    clf = MLPClassifier((8,), max_iter=3, warm_start=True, random_state=0)
    quiet(clf.fit, X, y)
    before = clf.net_.params.copy()
    net = clf.net_
    quiet(clf.fit, X, y)
    assert clf.net_ is net and clf.n_iter_ == 6 and len(clf.loss_curve_) == 6
    assert not np.array_equal(before, clf.net_.params)
    cold = MLPClassifier((8,), max_iter=3, random_state=0)
    quiet(cold.fit, X, y)
    first = cold.net_
    quiet(cold.fit, X, y)
    assert cold.net_ is not first and cold.n_iter_ == 3


def test_warm_start_may_switch_early_stopping_on_and_off(iris):
    X, y = iris
    clf = MLPClassifier((8,), max_iter=3, warm_start=True, random_state=0)
    quiet(clf.fit, X, y)
    quiet(clf.set_params(early_stopping=True).fit, X, y)
    assert len(clf.validation_scores_) == 3 and clf.best_loss_ is None
    quiet(clf.set_params(early_stopping=False).fit, X, y)
    assert np.isfinite(clf.best_loss_) and clf.n_iter_ == 9


def test_partial_fit_needs_classes_and_learns_over_calls(iris):
    X, y = iris
    clf = MLPClassifier((16,), learning_rate_init=0.02, random_state=0)
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, y)
    rng = np.random.default_rng(0)
    for epoch in range(60):
        idx = rng.permutation(150)[:50]
        clf.partial_fit(X[idx], y[idx], classes=[0, 1, 2])
    assert clf.n_iter_ == 60 and len(clf.loss_curve_) == 60
    assert clf.score(X, y) > 0.9
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, y, classes=[0, 1, 5])
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X[:3], np.array([0, 1, 9]))


def test_partial_fit_regressor_keeps_the_first_target_scaling():
    X, y = make_regression(600, 4, noise=0.5, random_state=0)
    reg = MLPRegressor((16,), learning_rate_init=0.01, random_state=0)
    for chunk in np.array_split(np.arange(600), 3):
        reg.partial_fit(X[chunk], y[chunk])
    mean = reg.net_.y_mean.copy()
    assert np.allclose(mean, y[:200].mean())
    for _ in range(30):
        reg.partial_fit(X, y)
    assert np.array_equal(mean, reg.net_.y_mean) and reg.n_iter_ == 33
    assert reg.score(X, y) > 0.9


# ---- copies, pickles, meta-estimators -----------------------------------------------------------
def test_pickle_round_trip_predicts_the_same_and_keeps_training(iris):
    X, y = iris
    clf = quiet(MLPClassifier((8,), max_iter=5, warm_start=True, random_state=0).fit, X, y)
    clone_ = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(clone_.predict_proba(X), clf.predict_proba(X))
    quiet(clone_.fit, X, y)  # training updates the buffer that coefs_ and predictions read
    W = clone_.net_.weights[0]
    assert np.shares_memory(W, clone_.net_.params)
    assert np.array_equal(clone_.coefs_[0], W)


def assert_joblib_workers_exit():
    """joblib's worker processes, which trained fastgd models, shut down when asked. Left to the
    end, a worker that could not would hold up the exit of the whole test process, untimed."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor  # the pool joblib used: the public getter would remake it
    assert executor is not None, "n_jobs=2 ran no joblib worker processes"
    workers = list(executor._processes.values())
    executor.shutdown(wait=True)
    assert workers and not any(p.is_alive() for p in workers)


@pytest.mark.timeout(300)
def test_pipeline_gridsearch_and_cross_val_score():
    X, y = make_classification(600, 10, n_informative=6, n_classes=3, random_state=0)
    X = X * 50 + 20  # badly scaled on purpose: the pipeline's scaler fixes it
    pipe = Pipeline([("scale", StandardScaler()),
                     ("mlp", MLPClassifier((16,), max_iter=40, learning_rate_init=0.01, random_state=0))])
    scores = quiet(cross_val_score, pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.7
    grid = GridSearchCV(pipe, {"mlp__hidden_layer_sizes": [(4,), (32,)], "mlp__alpha": [1e-4, 1e-2]}, cv=3, n_jobs=2)
    quiet(grid.fit, X, y)
    assert grid.best_score_ > 0.7 and grid.best_params_["mlp__hidden_layer_sizes"] in [(4,), (32,)]
    assert grid.predict(X).shape == (600,)
    assert_joblib_workers_exit()
    reg = Pipeline([("scale", StandardScaler()),
                    ("mlp", MLPRegressor((16,), max_iter=100, learning_rate_init=0.01, random_state=0, threads=1))])
    Xr, yr = make_regression(400, 6, noise=1.0, random_state=0)
    assert quiet(cross_val_score, reg, Xr, yr, cv=3).mean() > 0.8


def test_threads_none_follows_omp_num_threads_as_joblib_workers_set_it(iris, monkeypatch):
    X, y = iris
    clf = quiet(MLPClassifier((4,), max_iter=1, random_state=0).fit, X, y)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert clf._trainer(10, 1, seed=0).threads == 1
    assert clf.set_params(threads=2)._trainer(10, 1, seed=0).threads == 2  # an explicit count wins
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert clf.set_params(threads=None)._threads() is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert clf._threads() is None


def test_clone_gives_an_unfitted_copy(iris):
    X, y = iris
    clf = quiet(MLPClassifier((8,), max_iter=3, random_state=0, backend="numpy").fit, X, y)
    c = clone(clf)
    assert c.get_params() == clf.get_params() and not hasattr(c, "net_")


def test_importing_fastgd_does_not_import_sklearn():
    code = "import sys, fastgd; fastgd.Trainer; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ})
    assert out.stdout.strip() == "False"
    assert "sklearn" not in fastgd.__all__
