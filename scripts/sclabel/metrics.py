"""Classification metrics computed from a confusion matrix (checked against scikit-learn in the tests)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

UNASSIGNED = "unassigned"


def label_order(y_true: Sequence[str], y_pred: Sequence[str]) -> list[str]:
    """Sorted union of true and predicted labels (scikit-learn's default label set)."""
    return sorted(set(map(str, y_true)) | set(map(str, y_pred)))


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts matrix: rows true label, columns predicted label, in ``labels`` order."""
    position = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, ([position[str(t)] for t in y_true], [position[str(p)] for p in y_pred]), 1)
    return matrix


def cohen_kappa(matrix: np.ndarray) -> float:
    """Cohen's kappa: agreement beyond what the row and column margins give by chance."""
    total = matrix.sum()
    observed = np.trace(matrix) / total
    expected = float(matrix.sum(axis=0) @ matrix.sum(axis=1)) / total**2
    return float((observed - expected) / (1.0 - expected)) if expected < 1.0 else 0.0


def per_class_scores(matrix: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per label (0 where undefined, as scikit-learn's zero_division=0)."""
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1).astype(float)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return pd.DataFrame({"cell_type": list(labels), "precision": precision, "recall": recall, "f1": f1,
                         "support": support.astype(int)})


def summary_scores(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """Accuracy, Cohen's kappa and macro F1 (over the union of true and predicted labels)."""
    labels = label_order(y_true, y_pred)
    matrix = confusion(y_true, y_pred, labels)
    scores = per_class_scores(matrix, labels)
    return {"accuracy": float(np.trace(matrix) / matrix.sum()), "cohen_kappa": cohen_kappa(matrix),
            "macro_f1": float(scores["f1"].mean())}


def apply_threshold(predicted: pd.Series, confidence: pd.Series, threshold: float) -> pd.Series:
    """Predictions with ``unassigned`` where the confidence is below ``threshold``."""
    return predicted.where(confidence >= threshold, UNASSIGNED)


def confusion_long(matrix: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """Confusion counts as a tidy table: true, predicted, count (non-zero cells only)."""
    rows, cols = np.nonzero(matrix)
    return pd.DataFrame({"true": np.asarray(labels)[rows], "predicted": np.asarray(labels)[cols],
                         "count": matrix[rows, cols]})


def summarise(long: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1) and count of each metric over splits, per method."""
    grouped = long.groupby(["method", "metric"])["value"]
    summary = grouped.agg(mean="mean", sd="std", n_splits="count").reset_index()
    summary["sd"] = summary["sd"].fillna(0.0)
    summary["mean_sd"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(summary["mean"], summary["sd"])]
    return summary
