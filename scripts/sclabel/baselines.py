"""Classical baselines trained per split on the normalised matrix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import MaxAbsScaler
from sklearn.pipeline import Pipeline, make_pipeline


def logistic_regression(settings: Mapping[str, Any], seed: int) -> Pipeline:
    """Multinomial logistic regression on max-abs scaled log expression (sparse-safe scaling)."""
    penalty = settings.get("penalty", "l2")
    model = LogisticRegression(
        C=settings.get("C", 1.0), max_iter=settings.get("max_iter", 1000), random_state=seed,
        solver="saga" if penalty == "l1" else "lbfgs", class_weight=settings.get("class_weight"),
        l1_ratio=1.0 if penalty == "l1" else 0.0,
    )
    return make_pipeline(MaxAbsScaler(), model)


def predictions_table(cell_ids: pd.Index, y_true: np.ndarray, probabilities: np.ndarray,
                      classes: np.ndarray) -> pd.DataFrame:
    """The prediction contract: cell_id, true, predicted, confidence (max class probability)."""
    best = probabilities.argmax(axis=1)
    return pd.DataFrame({"cell_id": np.asarray(cell_ids), "true": np.asarray(y_true, dtype=str),
                         "predicted": np.asarray(classes)[best].astype(str),
                         "confidence": probabilities[np.arange(len(best)), best]})


def fit_predict_baseline(name: str, settings: Mapping[str, Any], X_train: sp.csr_matrix, y_train: np.ndarray,
                         X_test: sp.csr_matrix, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train baseline ``name`` and return (test class probabilities, class names)."""
    builders = {"logreg": logistic_regression}
    model = builders[name](settings, seed)
    model.fit(X_train, y_train)
    return model.predict_proba(X_test), model.classes_
