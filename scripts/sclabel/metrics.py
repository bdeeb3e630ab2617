"""Classification metrics computed from a confusion matrix or from ranks (checked against scikit-learn in the tests).

Prediction tables have columns ``true``, ``predicted`` and ``confidence``, and may carry one ``proba:<label>`` column
per class the model was trained on, holding that class's predicted probability.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

UNASSIGNED = "unassigned"
PROBA_PREFIX = "proba:"
# the one column of a prediction file written by a method (a peer) that could not run; it holds the reason
NOT_RUN = "not_run"
HEADLINE_METRICS = ("accuracy", "cohen_kappa", "macro_f1")


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
    """Mean, standard deviation (ddof=1) and count of each metric over splits, per method (and scheme when given)."""
    keys = ["method", "scheme", "metric"] if "scheme" in long else ["method", "metric"]
    grouped = long.groupby(keys)["value"]
    summary = grouped.agg(mean="mean", sd="std", n_splits="count").reset_index()
    summary["sd"] = summary["sd"].fillna(0.0)
    summary["mean_sd"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(summary["mean"], summary["sd"])]
    return summary


def add_not_run(summary: pd.DataFrame, not_run: pd.DataFrame) -> pd.DataFrame:
    """``summary`` (per method, scheme, metric) with the methods that did not run on some splits marked.

    ``not_run`` has columns method, split, scheme, reason. A method that ran on no split of a scheme gets a row for
    every metric of that scheme (the headline metrics when no method has any) with NaN mean and sd, ``n_splits`` 0
    and ``mean_sd`` ``not run: <reason>``; one that ran on some splits keeps its scores, with ``(not run on <splits>:
    <reason>)`` appended to ``mean_sd``. Reasons that differ between splits are listed per split.
    """
    if not_run.empty:
        return summary
    summary = summary.copy()
    added = []
    for (method, scheme), rows in not_run.groupby(["method", "scheme"], sort=True):
        reasons = rows["reason"].astype(str).unique()
        if len(reasons) == 1:
            why = reasons[0]
        else:
            why = "; ".join(f"{split}: {reason}" for split, reason in zip(rows["split"], rows["reason"]))
        mine = (summary["method"] == method) & (summary["scheme"] == scheme)
        if mine.any():
            splits = ", ".join(rows["split"])
            summary.loc[mine, "mean_sd"] = summary.loc[mine, "mean_sd"] + f" (not run on {splits}: {why})"
            continue
        known = summary.loc[summary["scheme"] == scheme, "metric"].unique()
        for metric in sorted(known) if len(known) else HEADLINE_METRICS:
            added.append({"method": method, "scheme": scheme, "metric": metric, "mean": np.nan, "sd": np.nan,
                          "n_splits": 0, "mean_sd": f"not run: {why}"})
    if added:
        summary = pd.concat([summary, pd.DataFrame(added, columns=summary.columns)], ignore_index=True)
    return summary.sort_values(["method", "scheme", "metric"], kind="stable", ignore_index=True)


def probability_columns(table: pd.DataFrame) -> list[str]:
    """The table's ``proba:<label>`` columns, in table order."""
    return [column for column in table.columns if str(column).startswith(PROBA_PREFIX)]


def rare_classes(train_labels: Sequence[str], rare_fraction: float = 0.05) -> list[str]:
    """Sorted training classes holding fewer than ``rare_fraction`` of the training cells."""
    shares = pd.Series(list(map(str, train_labels))).value_counts(normalize=True)
    return sorted(shares.index[shares < rare_fraction])


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: chance a positive outscores a negative, ties half (Mann-Whitney U)."""
    ranks = pd.Series(score).rank(method="average").to_numpy()
    n_positive = int(positive.sum())
    n_negative = positive.size - n_positive
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def auprc(positive: np.ndarray, score: np.ndarray) -> float:
    """Average precision: precision at each distinct score threshold, weighted by the recall it adds."""
    order = np.argsort(-score, kind="stable")
    ordered = score[order]
    threshold_ends = np.append(ordered[1:] != ordered[:-1], True)
    hits = np.cumsum(positive[order])[threshold_ends]
    precision = hits / (np.flatnonzero(threshold_ends) + 1)
    return float(np.diff(hits, prepend=0) @ precision / hits[-1])


def _mean_or_nan(values: np.ndarray | pd.Series) -> float:
    """Mean of ``values``; NaN when there are none."""
    return float(np.mean(values)) if len(values) else float("nan")


def ranking_scores(table: pd.DataFrame) -> dict[str, float]:
    """Macro one-vs-rest AUROC and AUPRC from the ``proba:`` columns, over classes with positives and negatives."""
    true = table["true"].astype(str).to_numpy()
    per_class = []
    for column in probability_columns(table):
        positive = true == column.removeprefix(PROBA_PREFIX)
        if 0 < positive.sum() < positive.size:
            score = table[column].to_numpy(dtype=float)
            per_class.append((auroc(positive, score), auprc(positive, score)))
    by_metric = np.array(per_class).reshape(-1, 2).T
    return {"macro_auroc": _mean_or_nan(by_metric[0]), "macro_auprc": _mean_or_nan(by_metric[1])}


def benchmark_scores(table: pd.DataFrame, train_labels: Sequence[str], threshold: float,
                     rare_fraction: float) -> dict[str, float]:
    """Benchmark metrics for one prediction table after thresholding at ``threshold``; NaN where undefined.

    A novel cell (true label absent from ``train_labels``) counts as truly ``unassigned``: right only when the method
    leaves it unassigned. ``accuracy``, ``cohen_kappa`` and ``macro_f1`` are ``summary_scores`` over all test cells
    on that truth; ``macro_f1_test_classes`` averages F1 over the test set's classes only (``unassigned`` among them
    when novel cells exist); ``rare_accuracy`` and ``rare_f1`` cover
    the ``rare_classes`` present in the test set. ``known_accuracy`` is exact-match accuracy on known-type cells
    (``unassigned`` is wrong), ``novel_accuracy`` the share of novel cells predicted ``unassigned`` and
    ``novel_fraction`` the share of test cells that are novel. ``macro_auroc`` and ``macro_auprc`` are
    ``ranking_scores`` on known-type cells.
    """
    true = table["true"].astype(str)
    predicted = apply_threshold(table["predicted"], table["confidence"], threshold).astype(str)
    known = true.isin(set(map(str, train_labels)))
    scored_true = true.where(known, UNASSIGNED)
    labels = label_order(scored_true, predicted)
    per_class = per_class_scores(confusion(scored_true, predicted, labels), labels)
    tested = per_class[per_class["support"] > 0]
    rare = rare_classes(train_labels, rare_fraction)
    is_rare = true.isin(rare)
    correct = true == predicted
    return summary_scores(scored_true, predicted) | {
        "macro_f1_test_classes": _mean_or_nan(tested["f1"]),
        "rare_accuracy": _mean_or_nan(correct[is_rare]),
        "rare_f1": _mean_or_nan(tested.loc[tested["cell_type"].isin(rare), "f1"]),
        "known_accuracy": _mean_or_nan(correct[known]),
        "novel_accuracy": _mean_or_nan(predicted[~known] == UNASSIGNED),
        "novel_fraction": _mean_or_nan(~known),
    } | ranking_scores(table[known])
