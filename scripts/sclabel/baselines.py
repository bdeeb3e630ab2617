"""Classical baselines trained per split on the training cells only.

Every baseline is a scikit-learn estimator built from a per-baseline settings dict (missing keys take the defaults
below, unknown keys are refused) and an explicit seed. ``BaselineAnnotator`` is the ``sclabel.annotator.Annotator``
of every baseline: it fits the estimator on a split's training cells (the validation cells only set its abstention
threshold), gives class probabilities in the order of ``classes`` (the sorted training classes), and saves the fitted
estimator with skops (``model.skops``), loaded back only with the types of ``TRUSTED_TYPES``. The embedding
baselines' annotator, which also embeds cells with a pretrained encoder, is ``sclabel.embedding_baselines``'s
(torch).

Registry (``BASELINES``; settings and defaults in brackets):

* ``logreg`` [C=[0.1, 1, 10], penalty=l2, max_iter=1000, class_weight=None, max_nnz=50,000,000, sgd_epochs=5] and
  ``logreg_l1`` [the same without ``penalty``: always L1, max_iter=5000]: multinomial logistic regression on max-abs
  scaled log expression, sparse throughout. L2 uses lbfgs, L1 uses saga (slower: a few seconds per thousand cells).
  ``max_nnz`` and ``sgd_epochs``: see "At scale" below; ``C``: see "Chosen on validation cells".
* ``knn_pca`` [n_neighbors=15, n_components=50, pca_max_cells=20,000]: k nearest neighbours, distance-weighted votes.
* ``rf_pca`` [n_estimators=200, max_features=sqrt, class_weight=None, max_cells=50,000, n_components=50,
  pca_max_cells=20,000]: random forest.
* ``svm_pca`` [C=1.0, kernel=rbf, class_weight=None, n_folds=5, max_cells=20,000, n_components=50,
  pca_max_cells=20,000]: support-vector machine with Platt-scaled probabilities (see ``CalibratedSVM``).
* ``knn_embedding``, ``rf_embedding``, ``svm_embedding``: the same three classifiers (same settings, no
  ``n_components`` or ``pca_max_cells``) on a dense embedding passed as X_train / X_test, standardised with
  training means / sds.
* ``majority`` and ``random`` [no settings]: controls (see ``RandomLabelClassifier`` for the random one).

PCA (``TrainingPCA``): scikit-learn ``PCA`` with the ARPACK solver, fitted on the training cells only. On sparse
input it centres implicitly (training gene means, through a linear operator), so the cells × genes matrix is never
densified; test cells are projected with the training means and components. The number of components is capped at
min(n_train, n_genes) - 1 (ARPACK's limit). Genes are not scaled to unit variance before PCA (log expression
keeps its natural weighting, as in the usual single-cell workflow); the components are not standardised either.

At scale (``fit_baseline``; the training cells may be a ``store.RowView`` read from disk chunk by chunk). Below
each threshold the fit is exactly the in-memory one above; above it:

* ``logreg`` / ``logreg_l1`` with more than ``max_nnz`` stored values in the training matrix: mini-batch SGD
  (``SGDClassifier(loss="log_loss")``, one-vs-rest, penalty L2 / L1 with ``alpha = 1 / (C * n_cells)``, the same
  objective per cell as ``LogisticRegression``'s) streamed over the training cells: a first pass fits the
  ``MaxAbsScaler`` (``partial_fit``), then ``sgd_epochs`` epochs each read the cells in blocks of ``BLOCK_CELLS``
  consecutive cells in a seeded random block order, ``chunk_cells`` cells per ``partial_fit``.
  ``class_weight: balanced`` becomes the equivalent per-class weights computed from all training labels.
* ``*_pca``: PCA fitted on a seeded stratified sample of at most ``pca_max_cells`` training cells
  (``stratified_sample``), every training cell projected chunk by chunk; kNN uses every projected cell, RF and SVM
  a stratified sample of at most ``max_cells`` (SVM training is quadratic in cells). ``*_embedding``: the same
  ``max_cells`` bound for RF and SVM.

``log`` records each fit's mode (``scale mode: ...``) in the job's log.

Chosen on validation cells (``BaselineAnnotator.fit``). A ``C`` given as a list (the linear baselines' default, and
``svm_*`` when configured so) is a grid: each value is fitted on the training cells, in the same mode (in memory or
streamed SGD), and the one with the best ``annotator.validation_macro_f1`` on the validation cells is kept; a tie
goes to the smaller ``C`` (stronger regularisation). Without validation cells the grid's middle value (the lower
of the two middle ones) is used. A scalar ``C`` is fitted as given. The choice and every candidate's score are
logged and saved in the model's ``annotator.json`` (``meta.selection``), as is ``meta.converged``: false when
scikit-learn warned that the solver did not converge (``ConvergenceWarning``, also logged).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import sklearn
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted

from sclabel import registry
from sclabel.annotator import Annotator, LabelledCells, best_on_validation, validation_macro_f1
from sclabel.errors import InputError
from sclabel.ranking import coefficient_top_genes
from sclabel.store import DEFAULT_CHUNK_CELLS, RowView, in_memory, row_chunks, take_rows

log = logging.getLogger("sclabel")

CONFIG = "config"
PENALTIES = ("l1", "l2")
BLOCK_CELLS = 256  # consecutive training cells read together by a streamed SGD epoch (a few HDF5 chunks)
MIN_PER_CLASS = 10  # a stratified sample keeps at least this many cells of every class (all of a smaller one)


def stored_values(X: Any) -> int:
    """Values a matrix holds in memory (non-zeros of a sparse one), counted from the store's index for a RowView."""
    if isinstance(X, RowView):
        indptr = np.asarray(X.store.matrix().group["indptr"])
        return int((indptr[X.rows + 1] - indptr[X.rows]).sum())
    return int(X.nnz) if sp.issparse(X) else int(np.size(X))


def _draw_per_class(codes: np.ndarray, quota: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(codes == code), size=int(n), replace=False) for code, n in enumerate(quota)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def stratified_sample(labels: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of about ``max_cells`` cells, classes in proportion (all cells if fewer).

    Every class keeps at least ``MIN_PER_CLASS`` cells (all of a smaller class), so the sample may exceed
    ``max_cells`` by up to that many cells per class.
    """
    labels = np.asarray(labels)
    if len(labels) <= max_cells:
        return np.arange(len(labels), dtype=np.int64)
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    proportional = np.floor(counts * max_cells / len(labels)).astype(np.int64)
    return _draw_per_class(codes, np.minimum(counts, np.maximum(proportional, MIN_PER_CLASS)), seed)


def capped_per_class(labels: np.ndarray, max_per_class: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of at most ``max_per_class`` cells of each class (all of a smaller one)."""
    _, codes, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    if counts.max(initial=0) <= max_per_class:
        return np.arange(len(codes), dtype=np.int64)
    return _draw_per_class(codes, np.minimum(counts, max_per_class), seed)


class TrainingPCA(TransformerMixin, BaseEstimator):
    """PCA fitted on the training cells (sparse-safe implicit centring); components capped by the training shape."""

    def __init__(self, n_components: int = 50, random_state: int | None = None) -> None:
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> TrainingPCA:
        self.n_components_ = min(int(self.n_components), min(X.shape) - 1)
        if self.n_components_ < 1:
            raise InputError("training data", "X", f"{X.shape[0]} cells x {X.shape[1]} genes is too small for PCA",
                             "train on at least 3 cells and 2 genes")
        self.pca_ = PCA(n_components=self.n_components_, svd_solver="arpack", random_state=self.random_state).fit(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "pca_")
        return self.pca_.transform(X)


class CalibratedSVM(ClassifierMixin, BaseEstimator):
    """``SVC`` with Platt (sigmoid, one-vs-rest, renormalised) probabilities from ``CalibratedClassifierCV``.

    ``SVC(probability=True)`` is deprecated in scikit-learn 1.9. The calibrated ensemble has one SVC per fold of a
    seeded stratified k-fold over the training cells, each calibrated on its held-out fold; probabilities are their
    mean. Rare classes are kept: the folds are passed as an explicit list, so classes with fewer cells than folds
    are allowed (a fold member that never saw a class gives it probability 0). The number of folds is at most the
    second-largest class size, so every fold trains on at least two classes.
    """

    def __init__(self, C: float = 1.0, kernel: str = "rbf", class_weight: str | None = None, n_folds: int = 5,
                 random_state: int | None = None) -> None:
        self.C = C
        self.kernel = kernel
        self.class_weight = class_weight
        self.n_folds = n_folds
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> CalibratedSVM:
        counts = np.sort(np.unique(y, return_counts=True)[1])
        n_folds = min(int(self.n_folds), int(counts[-2])) if len(counts) > 1 else 0
        if n_folds < 2:
            raise InputError("training data", "labels", f"class sizes {counts.tolist()} leave too few cells to "
                             "calibrate SVM probabilities", "train on at least two classes with two cells each")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class in y has only")
            folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=self.random_state).split(X, y))
        svc = SVC(C=self.C, kernel=self.kernel, class_weight=self.class_weight)
        self.calibrated_ = CalibratedClassifierCV(svc, method="sigmoid", cv=folds, ensemble=True).fit(X, y)
        self.classes_ = self.calibrated_.classes_
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "calibrated_")
        return self.calibrated_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class RandomLabelClassifier(ClassifierMixin, BaseEstimator):
    """Control: each test cell gets a training class drawn uniformly at random (seeded).

    Probabilities are one-hot on the drawn class (so ``argmax`` is the drawn label and its confidence is 1); the
    draws depend only on the seed and the number of test cells, so the same call gives the same labels.
    """

    def __init__(self, random_state: int | None = None) -> None:
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> RandomLabelClassifier:
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "classes_")
        drawn = np.random.default_rng(self.random_state).integers(len(self.classes_), size=X.shape[0])
        return np.eye(len(self.classes_))[drawn]

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def penalty_arguments(penalty: str) -> dict[str, Any]:
    """``LogisticRegression``'s arguments for an L1 or L2 penalty: ``penalty`` before scikit-learn 1.8, ``l1_ratio``
    from 1.8 on (1.8 deprecated ``penalty``; 1.7 ignores ``l1_ratio`` unless the penalty is elastic-net)."""
    if tuple(int(part) for part in sklearn.__version__.split(".")[:2]) < (1, 8):
        return {"penalty": penalty}
    return {"l1_ratio": 1.0 if penalty == "l1" else 0.0}


def logistic_regression(settings: Mapping[str, Any], seed: int, penalty: str | None = None) -> Pipeline:
    """Multinomial logistic regression on max-abs scaled log expression (sparse-safe scaling).

    ``penalty`` fixes L1 or L2; ``None`` reads ``settings['penalty']`` (default L2).
    """
    penalty = penalty or settings.get("penalty", "l2")
    if penalty not in PENALTIES:
        raise InputError(CONFIG, "baseline.logreg.penalty", f"unknown penalty '{penalty}'", "use l1 or l2")
    model = LogisticRegression(
        C=settings.get("C", 1.0), max_iter=settings.get("max_iter", 1000), random_state=seed,
        solver="saga" if penalty == "l1" else "lbfgs", class_weight=settings.get("class_weight"),
        **penalty_arguments(penalty),
    )
    return make_pipeline(MaxAbsScaler(), model)


def class_weights(class_weight: str | Mapping[str, float] | None, y: np.ndarray,
                  classes: np.ndarray) -> Mapping[str, float] | None:
    """``class_weight`` as per-class weights (``balanced`` computed from all labels, as a full fit does)."""
    if class_weight != "balanced":
        return class_weight
    return dict(zip(classes, compute_class_weight("balanced", classes=classes, y=y), strict=True))


def shuffled_blocks(n_cells: int, buffer_cells: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Positions ``0..n_cells-1`` as blocks of ``BLOCK_CELLS`` consecutive cells in random order, about
    ``buffer_cells`` at a time (sorted within, so a store reads each block in one go)."""
    starts = rng.permutation(np.arange(0, n_cells, BLOCK_CELLS))
    per_buffer = max(1, buffer_cells // BLOCK_CELLS)
    for first in range(0, len(starts), per_buffer):
        blocks = [np.arange(start, min(start + BLOCK_CELLS, n_cells)) for start in starts[first:first + per_buffer]]
        yield np.sort(np.concatenate(blocks))


def streamed_logistic_regression(settings: Mapping[str, Any], penalty: str, X: Any, y: np.ndarray, seed: int,
                                 chunk_cells: int) -> Pipeline:
    """Logistic regression by mini-batch SGD streamed over ``X``'s rows (see the module notes, "At scale")."""
    scaler = MaxAbsScaler()
    for chunk in row_chunks(X, chunk_cells):
        scaler.partial_fit(chunk)
    classes = np.unique(y)
    model = SGDClassifier(loss="log_loss", penalty=penalty, alpha=1.0 / (settings["C"] * len(y)), random_state=seed,
                          class_weight=class_weights(settings["class_weight"], y, classes))
    rng = np.random.default_rng(seed)
    for _ in range(settings["sgd_epochs"]):
        for rows in shuffled_blocks(len(y), chunk_cells, rng):
            model.partial_fit(scaler.transform(in_memory(take_rows(X, rows))), y[rows], classes=classes)
    return make_pipeline(scaler, model)


def fit_whole(model: BaseEstimator, settings: Mapping[str, Any], X: Any, y: np.ndarray, seed: int,
              chunk_cells: int) -> BaseEstimator:
    """Fit ``model`` on all training cells in memory."""
    log.info("scale mode: in memory, %d training cells", X.shape[0])
    return model.fit(in_memory(X), y)


def fit_logistic_regression(model: Pipeline, settings: Mapping[str, Any], X: Any, y: np.ndarray, seed: int,
                            chunk_cells: int, penalty: str | None = None) -> Pipeline:
    """``model`` fitted in memory, or streamed SGD when the training matrix holds more than ``max_nnz`` values."""
    values = stored_values(X)
    if values <= settings["max_nnz"]:
        return fit_whole(model, settings, X, y, seed, chunk_cells)
    penalty = penalty or settings.get("penalty", "l2")
    log.info("scale mode: mini-batch SGD (%s, %d epochs) streamed over %d training cells (%d stored values > "
             "max_nnz %d)", penalty, settings["sgd_epochs"], len(y), values, settings["max_nnz"])
    return streamed_logistic_regression(settings, penalty, X, y, seed, chunk_cells)


def fit_on_features(model: Pipeline, settings: Mapping[str, Any], X: Any, y: np.ndarray, seed: int,
                    chunk_cells: int) -> Pipeline:
    """Feature step fitted on a bounded sample, every cell projected chunk by chunk, classifier on a bounded sample."""
    features, classifier = model.named_steps["features"], model.named_steps["classifier"]
    feature_cells = stratified_sample(y, settings.get("pca_max_cells", len(y)), seed)
    features.fit(in_memory(take_rows(X, feature_cells)))
    projected = np.vstack([features.transform(chunk) for chunk in row_chunks(X, chunk_cells)])
    classifier_cells = stratified_sample(y, settings.get("max_cells", len(y)), seed)
    classifier.fit(projected[classifier_cells], y[classifier_cells])
    log.info("scale mode: %s fitted on %d of %d training cells, %s on %d", type(features).__name__,
             len(feature_cells), len(y), type(classifier).__name__, len(classifier_cells))
    return model


def knn(settings: Mapping[str, Any], seed: int) -> KNeighborsClassifier:
    """k nearest neighbours with distance-weighted votes (deterministic: the seed is unused)."""
    return KNeighborsClassifier(n_neighbors=settings["n_neighbors"], weights="distance")


def random_forest(settings: Mapping[str, Any], seed: int) -> RandomForestClassifier:
    """Seeded random forest."""
    return RandomForestClassifier(n_estimators=settings["n_estimators"], max_features=settings["max_features"],
                                  class_weight=settings["class_weight"], random_state=seed)


def svm(settings: Mapping[str, Any], seed: int) -> CalibratedSVM:
    """SVM with calibrated probabilities; the seed shuffles the calibration folds."""
    return CalibratedSVM(C=settings["C"], kernel=settings["kernel"], class_weight=settings["class_weight"],
                         n_folds=settings["n_folds"], random_state=seed)


def feature_pipeline(features: str, classifier: Callable[[Mapping[str, Any], int], BaseEstimator],
                     settings: Mapping[str, Any], seed: int) -> Pipeline:
    """``features`` step then ``classifier``: ``pca`` (TrainingPCA on expression) or ``embedding`` (standardised)."""
    if features == "pca":
        step = TrainingPCA(n_components=settings["n_components"], random_state=seed)
    elif features == "embedding":
        step = StandardScaler()
    else:
        raise ValueError(f"unknown feature step {features!r}")
    return Pipeline([("features", step), ("classifier", classifier(settings, seed))])


# (built estimator, settings, training cells, labels, seed, chunk_cells) -> the fitted estimator
Fit = Callable[[BaseEstimator, Mapping[str, Any], Any, np.ndarray, int, int], BaseEstimator]


@dataclass(frozen=True)
class Baseline:
    """A registered baseline: its settings with defaults, how to build the estimator, and how to fit it at scale."""

    defaults: Mapping[str, Any]
    build: Callable[[Mapping[str, Any], int], BaseEstimator]
    fit: Fit = fit_whole


# max_nnz: above this many stored values in the training matrix, streamed SGD (about 33,000 cells of 1,500
# non-zeros; the in-memory lbfgs fit peaks at ~36 bytes per stored value: 1.9 GB measured at 53M)
C_GRID = [0.1, 1.0, 10.0]  # the linear baselines' default C: chosen per split on validation cells
LOGREG = {"C": C_GRID, "max_iter": 1000, "class_weight": None, "max_nnz": 50_000_000, "sgd_epochs": 5}
KNN = {"n_neighbors": 15}
RF = {"n_estimators": 200, "max_features": "sqrt", "class_weight": None, "max_cells": 50_000}
SVM = {"C": 1.0, "kernel": "rbf", "class_weight": None, "n_folds": 5, "max_cells": 20_000}
PCA_FEATURES = {"n_components": 50, "pca_max_cells": 20_000}


def on_features(features: str, classifier: Callable[[Mapping[str, Any], int], BaseEstimator],
                defaults: Mapping[str, Any]) -> Baseline:
    """Register ``classifier`` on PCA components or on a given embedding (one code path for both)."""
    extra = PCA_FEATURES if features == "pca" else {}
    return Baseline({**defaults, **extra}, partial(feature_pipeline, features, classifier), fit_on_features)


BASELINES: dict[str, Baseline] = {
    "logreg": Baseline({**LOGREG, "penalty": "l2"}, logistic_regression, fit_logistic_regression),
    "logreg_l1": Baseline({**LOGREG, "max_iter": 5000}, partial(logistic_regression, penalty="l1"),
                          partial(fit_logistic_regression, penalty="l1")),
    "knn_pca": on_features("pca", knn, KNN),
    "rf_pca": on_features("pca", random_forest, RF),
    "svm_pca": on_features("pca", svm, SVM),
    "knn_embedding": on_features("embedding", knn, KNN),
    "rf_embedding": on_features("embedding", random_forest, RF),
    "svm_embedding": on_features("embedding", svm, SVM),
    "majority": Baseline({}, lambda settings, seed: DummyClassifier(strategy="most_frequent")),
    "random": Baseline({}, lambda settings, seed: RandomLabelClassifier(random_state=seed)),
}
EMBEDDING_BASELINES = tuple(registry.names("embedding_baseline"))


def implementation(name: str) -> str:
    """The ``BASELINES`` entry that implements method ``name``: itself, or a ``@top`` variant's base."""
    method = registry.METHODS.get(name)
    return (method.base or name) if method else name


def resolve_settings(name: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The baseline's defaults updated with ``settings``; unknown names or settings raise a one-line InputError."""
    name = implementation(name)
    if name not in BASELINES:
        raise InputError(CONFIG, "methods", f"unknown baseline '{name}'", f"use one of {', '.join(BASELINES)}")
    defaults = BASELINES[name].defaults
    unknown = sorted(set(settings or {}) - set(defaults))
    if unknown:
        raise InputError(CONFIG, f"baseline.{name}.{unknown[0]}", "unknown setting",
                         f"use {', '.join(sorted(defaults))}" if defaults else f"{name} takes no settings")
    return {**defaults, **(settings or {})}


GRID_SETTING = "C"  # the setting a list turns into a grid chosen on validation cells


def settings_grid(name: str, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One settings dict per value of a list-valued ``C``, smallest first; just ``settings`` otherwise."""
    values = settings.get(GRID_SETTING)
    if not isinstance(values, list | tuple):
        return [dict(settings)]
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values):
        raise InputError(CONFIG, f"baseline.{name}.{GRID_SETTING}", f"{values!r} is not a list of positive numbers",
                         "give one positive number or a list of them, e.g. [0.1, 1, 10]")
    return [{**settings, GRID_SETTING: float(value)} for value in sorted(set(values))]


def without_validation(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings used when there is no validation cell to choose by: the grid's middle (lower middle) value."""
    return candidates[(len(candidates) - 1) // 2]


def grid_label(settings: Mapping[str, Any]) -> str:
    """'C=1.0': the grid setting's value, for logs."""
    return f"{GRID_SETTING}={settings.get(GRID_SETTING)}"


def fit_recording_convergence(fit: Callable[[], BaseEstimator]) -> tuple[BaseEstimator, bool]:
    """``fit()``'s estimator and whether it converged (no ``ConvergenceWarning``); other warnings pass through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = fit()
    converged = True
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            converged = False
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model, converged


def build_baseline(name: str, settings: Mapping[str, Any] | None, seed: int) -> BaseEstimator:
    """The unfitted estimator for baseline ``name`` (a ``C`` grid's middle value: ``without_validation``)."""
    resolved = without_validation(settings_grid(name, resolve_settings(name, settings)))
    return BASELINES[implementation(name)].build(resolved, seed)


def fit_baseline(name: str, settings: Mapping[str, Any] | None, X_train: Any, y_train: np.ndarray, seed: int,
                 chunk_cells: int = DEFAULT_CHUNK_CELLS) -> BaseEstimator:
    """Baseline ``name`` fitted on the training cells (in memory or a store's ``RowView``), at scale when large.

    A ``C`` grid is not searched here (``BaselineAnnotator.fit`` does, on validation cells): its middle value is used.
    """
    resolved = without_validation(settings_grid(name, resolve_settings(name, settings)))
    if name in EMBEDDING_BASELINES and (sp.issparse(X_train) or isinstance(X_train, RowView)):
        raise InputError("training data", "X", f"{name} takes a dense embedding, got a sparse matrix",
                         "pass the cells' embedding (cells x dimensions), or use the *_pca baseline on expression")
    baseline = BASELINES[implementation(name)]
    return baseline.fit(baseline.build(resolved, seed), resolved, X_train, np.asarray(y_train), seed, chunk_cells)


MODEL_FILE = "model.skops"
# every type a fitted baseline holds beyond those skops trusts by default (tests/test_baselines.py checks the list)
TRUSTED_TYPES = (
    "sclabel.baselines.CalibratedSVM", "sclabel.baselines.RandomLabelClassifier", "sclabel.baselines.TrainingPCA",
    "sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration",
    "sklearn.metrics._dist_metrics.EuclideanDistance32", "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._ball_tree.BallTree", "sklearn.neighbors._kd_tree.KDTree", "sklearn.tree._tree.Tree",
)


def save_estimator(model: BaseEstimator, path: Path) -> None:
    """Write a fitted estimator with skops (no pickle)."""
    import skops.io

    skops.io.dump(model, path)


def load_estimator(path: Path) -> BaseEstimator:
    """A skops-saved baseline estimator; a one-line InputError when the file holds a type outside ``TRUSTED_TYPES``."""
    import skops.io

    unexpected = sorted(set(skops.io.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
    if unexpected:
        raise InputError(path, "types", f"holds types no baseline uses ({', '.join(unexpected)})",
                         "load only models the workflow saved, or retrain it")
    return skops.io.load(path, trusted=list(TRUSTED_TYPES))


class BaselineAnnotator(Annotator):
    """A classical baseline (``BASELINES``) as an annotator: fitted on the training cells, saved with skops."""

    version_bound: ClassVar[tuple[str, ...]] = ("scikit-learn",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model: BaseEstimator | None = None
        self.selection: dict[str, Any] | None = None  # the grid setting chosen on validation cells, with the scores
        self.converged = True

    def estimator_settings(self) -> dict[str, Any]:
        """The settings of the estimator itself (``BASELINES[method].defaults`` keys)."""
        return self.settings

    def features(self, X: Any) -> Any:
        """What the estimator is fitted on and predicts from: the cells' expression itself."""
        return X

    def fit_candidate(self, settings: Mapping[str, Any], train: LabelledCells) -> bool:
        """Fit the estimator with ``settings`` on ``train`` into ``self.model``; whether the solver converged."""
        self.model, converged = fit_recording_convergence(lambda: fit_baseline(
            self.method, settings, self.features(train.X), np.asarray(train.labels), self.seed,
            self.context.chunk_cells))
        self.classes = np.asarray(self.model.classes_).astype(str)
        if not converged:
            log.warning("%s (%s) did not converge: scikit-learn's ConvergenceWarning (raise max_iter)", self.method,
                        grid_label(settings))
        return converged

    def fit(self, train: LabelledCells, validation: LabelledCells | None = None) -> BaselineAnnotator:
        candidates = settings_grid(self.method, resolve_settings(self.method, self.estimator_settings()))
        if len(candidates) == 1 or validation is None or not len(validation.labels):
            chosen = without_validation(candidates)
            self.converged = self.fit_candidate(chosen, train)
            self.selection = None if len(candidates) == 1 else {GRID_SETTING: chosen[GRID_SETTING], "scores": {}}
            return self
        fitted, scores = {}, {}
        for settings in candidates:
            converged = self.fit_candidate(settings, train)
            value = settings[GRID_SETTING]
            fitted[value], scores[value] = (self.model, self.classes, converged), validation_macro_f1(self, validation)
            log.info("%s with %s: validation macro F1 %.4f", self.method, grid_label(settings), scores[value])
        value = best_on_validation(scores)  # candidates run from the smallest C: a tie keeps the smaller
        self.model, self.classes, self.converged = fitted[value]
        scores = {str(key): score for key, score in scores.items()}
        self.selection = {GRID_SETTING: value, "scores": scores}
        log.info("%s: chose %s=%s on %d validation cells (macro F1 by %s: %s)", self.method, GRID_SETTING, value,
                 len(validation.labels), GRID_SETTING, scores)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.asarray(self.model.predict_proba(in_memory(self.features(X))), dtype=float)

    def own_abstention(self, rejection: np.ndarray, predicted: np.ndarray) -> np.ndarray | None:
        """Controls never abstain (every cell keeps its label); the other baselines follow the workflow's threshold."""
        if registry.get(self.method).family == "control":
            return np.zeros(len(rejection), dtype=bool)
        return None

    def top_genes(self) -> pd.DataFrame:
        """Per-class coefficients (MaxAbsScaler folded in) of the linear baselines; others rank no genes."""
        if registry.get(self.method).explains != "coefficients":
            return super().top_genes()
        return coefficient_top_genes(self.model, self.genes, list(self.classes))

    def save_arrays(self, folder: Path) -> dict[str, Any]:
        save_estimator(self.model, folder / MODEL_FILE)
        return {"model": MODEL_FILE, "selection": self.selection, "converged": self.converged}

    def load_arrays(self, folder: Path, meta: Mapping[str, Any]) -> None:
        self.model = load_estimator(folder / meta["model"])
        self.selection, self.converged = meta.get("selection"), meta.get("converged", True)
