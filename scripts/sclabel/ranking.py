"""Gene rankings as a tidy table, and the ranking of a fitted linear model's coefficients (no torch needed).

``rank_table`` is the one table every ranking returns (``RANK_COLUMNS``: ``cell_type, gene, score, rank``, rank 1 =
highest score within the cell type, ties broken by gene order). ``coefficient_top_genes`` ranks a linear model's
per-class coefficients; a ``MaxAbsScaler`` in front of the model is folded in (``coef / max_abs``), so scores are
per unit of log expression as the user sees it rather than per unit of scaled expression, which would favour rarely
and weakly expressed genes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MaxAbsScaler

RANK_COLUMNS = ("cell_type", "gene", "score", "rank")


def rank_table(scores: np.ndarray, cell_types: Sequence[str], genes: Sequence[str]) -> pd.DataFrame:
    """Tidy ranking of a [cell types × genes] score matrix: rank 1 = highest score per type (ties: gene order)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(cell_types), len(genes)):
        raise ValueError(f"scores have shape {scores.shape}, expected ({len(cell_types)} cell types, "
                         f"{len(genes)} genes)")
    order = np.argsort(-scores, axis=1, kind="stable")
    n_types, n_genes = scores.shape
    type_index = np.repeat(np.arange(n_types), n_genes)
    return pd.DataFrame({
        "cell_type": np.asarray(cell_types, dtype=object)[type_index],
        "gene": np.asarray(genes, dtype=object)[order.ravel()],
        "score": scores[type_index, order.ravel()],
        "rank": np.tile(np.arange(1, n_genes + 1), n_types),
    })


def linear_coefficients(estimator_or_coefs: object, classes: Sequence[str]) -> np.ndarray:
    """[classes × genes] coefficients per unit of input: scalers folded in, a binary model's row expanded."""
    estimator, scale = estimator_or_coefs, 1.0
    if isinstance(estimator, Pipeline):
        for name, step in estimator.steps[:-1]:
            if not isinstance(step, MaxAbsScaler):
                raise ValueError(f"pipeline step {name!r} is a {type(step).__name__}; only MaxAbsScaler steps can "
                                 "be folded into the coefficients")
            scale = scale * step.scale_
        estimator = estimator.steps[-1][1]
    if isinstance(estimator, BaseEstimator) and not hasattr(estimator, "coef_"):
        raise ValueError(f"{type(estimator).__name__} has no coef_; pass a fitted linear model or a coefficient array")
    if hasattr(estimator, "classes_") and [str(c) for c in estimator.classes_] != [str(c) for c in classes]:
        raise ValueError(f"classes {list(classes)} differ from the estimator's {list(estimator.classes_)}")
    coefs = np.atleast_2d(np.asarray(getattr(estimator, "coef_", estimator), dtype=np.float64)) / scale
    if coefs.shape[0] == 1 and len(classes) == 2:  # sklearn's binary model: the row is the log-odds of classes[1]
        coefs = np.vstack([-coefs, coefs])
    return coefs


def coefficient_top_genes(estimator_or_coefs: object, genes: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """Per-class coefficients of a fitted linear model (or a [classes × genes] array), MaxAbsScaler folded in."""
    return rank_table(linear_coefficients(estimator_or_coefs, classes), classes, genes)
