"""Classical baselines trained per split on the training cells only.

Every baseline is a scikit-learn estimator built from a per-baseline settings dict (missing keys take the defaults
below, unknown keys are refused) and an explicit seed. ``fit_predict_baseline`` fits it on the training cells and
returns class probabilities for the test cells, columns in the order of ``classes`` (the sorted training classes).

Registry (``BASELINES``; settings and defaults in brackets):

* ``logreg`` [C=1.0, penalty=l2, max_iter=1000, class_weight=None] and ``logreg_l1`` [the same without
  ``penalty``: always L1]: multinomial logistic regression on max-abs scaled log expression, sparse throughout.
  L2 uses lbfgs, L1 uses saga (slower: a few seconds per thousand cells at max_iter=1000).
* ``knn_pca`` [n_neighbors=15, n_components=50]: k nearest neighbours, distance-weighted votes.
* ``rf_pca`` [n_estimators=200, max_features=sqrt, class_weight=None, n_components=50]: random forest.
* ``svm_pca`` [C=1.0, kernel=rbf, class_weight=None, n_folds=5, n_components=50]: support-vector machine
  with Platt-scaled probabilities (see ``CalibratedSVM``).
* ``knn_embedding``, ``rf_embedding``, ``svm_embedding``: the same three classifiers (same settings, no
  ``n_components``) on a dense embedding passed as X_train / X_test, standardised with training means / sds.
* ``majority`` and ``random`` [no settings]: controls (see ``RandomLabelClassifier`` for the random one).

PCA (``TrainingPCA``): scikit-learn ``PCA`` with the ARPACK solver, fitted on the training cells only. On sparse
input it centres implicitly (training gene means, through a linear operator), so the cells × genes matrix is never
densified; test cells are projected with the training means and components. The number of components is capped at
min(n_train, n_genes) - 1 (ARPACK's limit). Genes are not scaled to unit variance before PCA (log expression
keeps its natural weighting, as in the usual single-cell workflow); the components are not standardised either.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted

from sclabel.errors import InputError

CONFIG = "config"
PENALTIES = ("l1", "l2")


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
        l1_ratio=1.0 if penalty == "l1" else 0.0,
    )
    return make_pipeline(MaxAbsScaler(), model)


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


@dataclass(frozen=True)
class Baseline:
    """A registered baseline: its settings with defaults, and how to build the estimator from them and a seed."""

    defaults: Mapping[str, Any]
    build: Callable[[Mapping[str, Any], int], BaseEstimator]


LOGREG = {"C": 1.0, "max_iter": 1000, "class_weight": None}
KNN = {"n_neighbors": 15}
RF = {"n_estimators": 200, "max_features": "sqrt", "class_weight": None}
SVM = {"C": 1.0, "kernel": "rbf", "class_weight": None, "n_folds": 5}
PCA_FEATURES = {"n_components": 50}


def on_features(features: str, classifier: Callable[[Mapping[str, Any], int], BaseEstimator],
                defaults: Mapping[str, Any]) -> Baseline:
    """Register ``classifier`` on PCA components or on a given embedding (one code path for both)."""
    extra = PCA_FEATURES if features == "pca" else {}
    return Baseline({**defaults, **extra}, partial(feature_pipeline, features, classifier))


BASELINES: dict[str, Baseline] = {
    "logreg": Baseline({**LOGREG, "penalty": "l2"}, logistic_regression),
    "logreg_l1": Baseline(LOGREG, partial(logistic_regression, penalty="l1")),
    "knn_pca": on_features("pca", knn, KNN),
    "rf_pca": on_features("pca", random_forest, RF),
    "svm_pca": on_features("pca", svm, SVM),
    "knn_embedding": on_features("embedding", knn, KNN),
    "rf_embedding": on_features("embedding", random_forest, RF),
    "svm_embedding": on_features("embedding", svm, SVM),
    "majority": Baseline({}, lambda settings, seed: DummyClassifier(strategy="most_frequent")),
    "random": Baseline({}, lambda settings, seed: RandomLabelClassifier(random_state=seed)),
}
EMBEDDING_BASELINES = ("knn_embedding", "rf_embedding", "svm_embedding")


def resolve_settings(name: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The baseline's defaults updated with ``settings``; unknown names or settings raise a one-line InputError."""
    if name not in BASELINES:
        raise InputError(CONFIG, "methods", f"unknown baseline '{name}'", f"use one of {', '.join(BASELINES)}")
    defaults = BASELINES[name].defaults
    unknown = sorted(set(settings or {}) - set(defaults))
    if unknown:
        raise InputError(CONFIG, f"baseline.{name}.{unknown[0]}", "unknown setting",
                         f"use {', '.join(sorted(defaults))}" if defaults else f"{name} takes no settings")
    return {**defaults, **(settings or {})}


def build_baseline(name: str, settings: Mapping[str, Any] | None, seed: int) -> BaseEstimator:
    """The unfitted estimator for baseline ``name``."""
    resolved = resolve_settings(name, settings)
    return BASELINES[name].build(resolved, seed)


def fit_predict_baseline(name: str, settings: Mapping[str, Any], X_train: sp.csr_matrix, y_train: np.ndarray,
                         X_test: sp.csr_matrix, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train baseline ``name`` on the training cells; return (test class probabilities, sorted class names)."""
    model = build_baseline(name, settings, seed)
    if name in EMBEDDING_BASELINES and (sp.issparse(X_train) or sp.issparse(X_test)):
        raise InputError("training data", "X", f"{name} takes a dense embedding, got a sparse matrix",
                         "pass the cells' embedding (cells x dimensions), or use the *_pca baseline on expression")
    model.fit(X_train, np.asarray(y_train))
    return np.asarray(model.predict_proba(X_test), dtype=float), np.asarray(model.classes_)
