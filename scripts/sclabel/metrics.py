"""Classification metrics computed from a confusion matrix or from ranks (checked against scikit-learn in the tests).

Prediction tables have columns ``true``, ``predicted`` and ``confidence``, usually ``rejection_score`` (higher = more
likely a novel cell) and ``abstained`` (1 where the method's own rule leaves the cell unassigned), and may carry one
``proba:<label>`` column per class the model was trained on, holding that class's predicted probability. Tables
without the two rejection columns get ``1 - confidence`` and ``confidence < threshold`` (``abstention``).

One truth everywhere: a test cell whose type is absent from training (novel) is truly ``unassigned``, and a cell the
method abstained on is predicted ``unassigned`` (``scored_labels``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest, t

from sclabel.split_names import group_columns

UNASSIGNED = "unassigned"
PROBA_PREFIX = "proba:"
# the one column of a prediction file written by a method (a peer) that could not run; it holds the reason
NOT_RUN = "not_run"
REJECTION = "rejection_score"
ABSTAINED = "abstained"
HEADLINE_METRICS = ("known_accuracy", "known_kappa", "known_macro_f1", "known_abstention")
PAIRED_COLUMNS = ["scheme", "method", "best_peer", "metric", "n_splits", "mean_difference", "sd_difference", "wins",
                  "losses", "ties", "sign_test_p"]
EFFECT_COLUMNS = ["scheme", "method", "counterpart", *PAIRED_COLUMNS[3:]]
EFFICIENCY_METRICS = ("known_kappa", "known_macro_f1")
EFFICIENCY_COLUMNS = ["scheme", "label_fraction", "method", "metric", "n", "mean", "sd", "counterpart", "n_pairs",
                      "difference", "difference_low", "difference_high"]


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


def headline_scores(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """Accuracy, Cohen's kappa and macro F1 over the true labels' classes (a predicted-only label is not averaged)."""
    labels = label_order(y_true, y_pred)
    matrix = confusion(y_true, y_pred, labels)
    scores = per_class_scores(matrix, labels)
    return {"accuracy": float(np.trace(matrix) / matrix.sum()), "kappa": cohen_kappa(matrix),
            "macro_f1": float(scores.loc[scores["support"] > 0, "f1"].mean())}


def abstention(table: pd.DataFrame, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's rejection score and whether the method abstained, from the table's own columns when it has them.

    Without them: rejection score ``1 - confidence``, abstained where ``confidence < threshold``.
    """
    confidence = table["confidence"].to_numpy(dtype=float)
    rejection = table[REJECTION].to_numpy(dtype=float) if REJECTION in table else 1.0 - confidence
    abstained = table[ABSTAINED].to_numpy(dtype=int) == 1 if ABSTAINED in table else confidence < threshold
    return rejection, abstained


def scored_labels(table: pd.DataFrame, known_labels: Sequence[str], threshold: float) -> tuple[pd.Series, pd.Series]:
    """The truth and prediction every metric uses: novel cells' truth and abstained cells' prediction ``unassigned``."""
    true = table["true"].astype(str)
    predicted = table["predicted"].astype(str).where(~abstention(table, threshold)[1], UNASSIGNED)
    return true.where(true.isin(set(map(str, known_labels))), UNASSIGNED), predicted


def confusion_long(matrix: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """Confusion counts as a tidy table: true, predicted, count (non-zero cells only)."""
    rows, cols = np.nonzero(matrix)
    return pd.DataFrame({"true": np.asarray(labels)[rows], "predicted": np.asarray(labels)[cols],
                         "count": matrix[rows, cols]})


def summarise(long: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1) and count of each metric over splits, per method (and ``group_columns``)."""
    keys = ["method", *group_columns(long), "metric"]
    grouped = long.groupby(keys)["value"]
    summary = grouped.agg(mean="mean", sd="std", n_splits="count").reset_index()
    summary["sd"] = summary["sd"].fillna(0.0)
    summary["mean_sd"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(summary["mean"], summary["sd"])]
    return summary


def add_not_run(summary: pd.DataFrame, not_run: pd.DataFrame) -> pd.DataFrame:
    """``summary`` (per method, ``group_columns``, metric) with the methods that did not run on some splits marked.

    ``not_run`` has columns method, split, the ``group_columns`` of ``summary`` and reason. A method that ran on no
    split of a scheme (and label fraction) gets a row for every metric of that group (the headline metrics when no
    method has any) with NaN mean and sd, ``n_splits`` 0 and ``mean_sd`` ``not run: <reason>``; one that ran on some
    splits keeps its scores, with ``(not run on <splits>: <reason>)`` appended to ``mean_sd``. Reasons that differ
    between splits are listed per split.
    """
    if not_run.empty:
        return summary
    summary = summary.copy()
    keys = group_columns(summary)
    added = []
    for (method, *group), rows in not_run.groupby(["method", *keys], sort=True):
        reasons = rows["reason"].astype(str).unique()
        if len(reasons) == 1:
            why = reasons[0]
        else:
            why = "; ".join(f"{split}: {reason}" for split, reason in zip(rows["split"], rows["reason"]))
        in_group = (summary[keys] == group).all(axis=1)
        mine = in_group & (summary["method"] == method)
        if mine.any():
            splits = ", ".join(rows["split"])
            summary.loc[mine, "mean_sd"] = summary.loc[mine, "mean_sd"] + f" (not run on {splits}: {why})"
            continue
        known = summary.loc[in_group, "metric"].unique()
        for metric in sorted(known) if len(known) else HEADLINE_METRICS:
            added.append({"method": method, **dict(zip(keys, group)), "metric": metric, "mean": np.nan,
                          "sd": np.nan, "n_splits": 0, "mean_sd": f"not run: {why}"})
    if added:
        summary = pd.concat([summary, pd.DataFrame(added, columns=summary.columns)], ignore_index=True)
    return summary.sort_values(["method", *keys, "metric"], kind="stable", ignore_index=True)


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


def ontology_corrected(true: pd.Series, predicted: pd.Series, finer: Mapping[str, Collection[str]]) -> pd.Series:
    """``predicted`` with every prediction that ``finer`` allows for the truth (the same Cell Ontology term or a
    descendant of it: a finer subtype) replaced by the true label, so that it counts as right (scTab's rule)."""
    allowed = np.array([p in finer.get(t, ()) for t, p in zip(true, predicted)], dtype=bool)
    return predicted.where(~allowed, true)


def ontology_scores(true: pd.Series, predicted: pd.Series, finer: Mapping[str, Collection[str]]) -> dict[str, float]:
    """``ontology_accuracy`` and ``ontology_macro_f1``: ``headline_scores`` of the ``ontology_corrected``
    predictions (equal to the exact ones when no prediction is a finer subtype of the truth)."""
    headline = headline_scores(true, ontology_corrected(true, predicted, finer))
    return {"ontology_accuracy": headline["accuracy"], "ontology_macro_f1": headline["macro_f1"]}


def benchmark_scores(table: pd.DataFrame, train_labels: Sequence[str], threshold: float,
                     rare_fraction: float, finer: Mapping[str, Collection[str]] | None = None) -> dict[str, float]:
    """Benchmark metrics of one prediction table on the ``scored_labels`` truth; NaN where undefined.

    Known cells are those whose type is among ``train_labels``. ``known_accuracy``, ``known_kappa`` and
    ``known_macro_f1`` score them (an abstention is a wrong ``unassigned``; macro F1 averages over the known cells'
    own types only); ``known_abstention`` is the share of them abstained on; ``called_kappa`` is Cohen's kappa of the
    most probable type on them, abstentions ignored (the classifier alone, as a peer's own "best match"). On splits with novel cells,
    ``novel_auroc`` is the AUROC of the rejection score for novel against known cells and ``novel_recall`` the
    share of novel cells abstained on; ``novel_fraction`` is the share of test cells that are novel.
    ``rare_accuracy`` and ``rare_f1`` cover the ``rare_classes`` among the known cells' types, ``macro_auroc`` and
    ``macro_auprc`` are ``ranking_scores`` on known cells. With ``finer`` (label → the labels whose Cell Ontology
    term is its own or a descendant, ``ontology.finer_labels``), ``ontology_accuracy`` and ``ontology_macro_f1`` are
    ``ontology_scores`` on the same known cells and predictions (an abstention stays wrong).
    """
    true, predicted = scored_labels(table, train_labels, threshold)
    rejection, abstained = abstention(table, threshold)
    novel = (true == UNASSIGNED).to_numpy()
    known = ~novel
    labels = label_order(true[known], predicted[known])
    per_class = per_class_scores(confusion(true[known], predicted[known], labels), labels)
    tested = per_class[per_class["support"] > 0]
    rare = tested[tested["cell_type"].isin(rare_classes(train_labels, rare_fraction))]
    headline = (headline_scores(true[known], predicted[known]) if known.any()
                else dict.fromkeys(("accuracy", "kappa", "macro_f1"), float("nan")))
    called = table["predicted"].astype(str)[known]
    return {f"known_{name}": value for name, value in headline.items()} | {
        "called_kappa": headline_scores(true[known], called)["kappa"] if known.any() else float("nan"),
        "known_abstention": _mean_or_nan(abstained[known]),
        "novel_fraction": _mean_or_nan(novel),
        "novel_recall": _mean_or_nan(abstained[novel]),
        "novel_auroc": auroc(novel, rejection) if 0 < novel.sum() < novel.size else float("nan"),
        "rare_accuracy": _mean_or_nan((true == predicted)[true.isin(rare["cell_type"])]),
        "rare_f1": _mean_or_nan(rare["f1"]),
    } | ranking_scores(table[known]) | (
        ontology_scores(true[known], predicted[known], finer) if finer is not None and known.any() else {})


def paired_difference(method: pd.Series, reference: pd.Series) -> dict[str, float | int] | None:
    """Per-split ``method - reference`` on the splits both have: mean, sd, wins, losses, ties and the sign-test p.

    Ties (equal to 12 decimals) are left out of the two-sided sign test (``scipy.stats.binomtest``; p = 1 without
    untied splits); the sd is 0 for one split. None when the two share no split.
    """
    difference = (method - reference).dropna()
    if difference.empty:
        return None
    sign = np.sign(difference.round(12))
    wins, losses = int((sign > 0).sum()), int((sign < 0).sum())
    return {"n_splits": len(difference), "mean_difference": difference.mean(),
            "sd_difference": difference.std() if len(difference) > 1 else 0.0, "wins": wins, "losses": losses,
            "ties": len(difference) - wins - losses,
            "sign_test_p": binomtest(wins, wins + losses).pvalue if wins + losses else 1.0}


def paired_against_best_peer(long: pd.DataFrame, peers: Sequence[str], metric: str = "known_kappa") -> pd.DataFrame:
    """Per scheme (and label fraction), every method's per-split difference in ``metric`` from the best peer
    (``paired_difference``).

    ``long`` has columns method, split, scheme, metric, value (and label_fraction in a sweep). The best peer is the one
    of ``peers`` with the highest mean ``metric`` over the splits it ran on (the first in ``peers`` order on a tie);
    each other method is paired with it on the splits both ran on. A group where no peer ran has no rows.
    """
    keys = group_columns(long)
    rows = []
    for group, scores in long[long["metric"] == metric].groupby(keys, sort=True):
        wide = scores.pivot(index="split", columns="method", values="value")
        ran = [peer for peer in peers if peer in wide]
        if not ran:
            continue
        best = max(ran, key=lambda peer: wide[peer].mean())
        for method in sorted(wide.columns.drop(best)):
            paired = paired_difference(wide[method], wide[best])
            if paired is not None:
                rows.append({**dict(zip(keys, group)), "method": method, "best_peer": best, "metric": metric,
                             **paired})
    return pd.DataFrame(rows, columns=[*keys, *PAIRED_COLUMNS[1:]])


def paired_effects(long: pd.DataFrame, pairs: Sequence[tuple[str, str]],
                   metrics: Sequence[str] = ("known_kappa", "known_macro_f1")) -> pd.DataFrame:
    """Per scheme (and label fraction) and metric, each (method, counterpart) pair's ``paired_difference`` (method
    minus counterpart).

    ``long`` has columns method, split, scheme, metric, value (and label_fraction in a sweep); pairs where either
    method has no score in a group, or the two share no split, have no row.
    """
    keys = group_columns(long)
    rows = []
    for (*group, metric), scores in long[long["metric"].isin(metrics)].groupby([*keys, "metric"], sort=True):
        wide = scores.pivot(index="split", columns="method", values="value")
        for method, counterpart in pairs:
            paired = (paired_difference(wide[method], wide[counterpart])
                      if method in wide and counterpart in wide else None)
            if paired is not None:
                rows.append({**dict(zip(keys, group)), "method": method, "counterpart": counterpart,
                             "metric": metric, **paired})
    return pd.DataFrame(rows, columns=[*keys, *EFFECT_COLUMNS[1:]])


def difference_interval(method: pd.Series, reference: pd.Series, confidence: float = 0.95) -> dict[str, float | int]:
    """Per-split ``method - reference`` on the splits both have: their number, mean and two-sided ``confidence``
    Student t-interval of the mean (NaN bounds for fewer than two; the mean too for none)."""
    difference = (method - reference).dropna()
    n = len(difference)
    mean = float(difference.mean()) if n else float("nan")
    half = (float(t.ppf((1 + confidence) / 2, n - 1) * difference.std() / np.sqrt(n)) if n > 1
            else float("nan"))
    return {"n_pairs": n, "difference": mean, "difference_low": mean - half, "difference_high": mean + half}


def label_efficiency(long: pd.DataFrame, pairs: Sequence[tuple[str, str]],
                     metrics: Sequence[str] = EFFICIENCY_METRICS, confidence: float = 0.95) -> pd.DataFrame:
    """The label-efficiency curves: per scheme, label fraction, method and metric, the mean and sd (ddof=1, 0 for
    one) over the splits and draws; a method paired with a counterpart in ``pairs`` (a pretrained method and the
    same encoder without pretraining) adds the ``difference_interval`` of method minus counterpart over the splits
    and draws both ran (``counterpart`` empty and NaN for the others).

    ``long`` has columns method, split, scheme, label_fraction, metric, value.
    """
    counterpart_of = dict(pairs)
    rows = []
    for (scheme, fraction, metric), scores in (long[long["metric"].isin(metrics)]
                                               .groupby(["scheme", "label_fraction", "metric"], sort=True)):
        wide = scores.pivot(index="split", columns="method", values="value")
        for method in sorted(wide.columns):
            values = wide[method].dropna()
            counterpart = counterpart_of.get(method, "")
            effect = (difference_interval(wide[method], wide[counterpart], confidence) if counterpart in wide
                      else {"n_pairs": 0, **dict.fromkeys(EFFICIENCY_COLUMNS[-3:], float("nan"))})
            rows.append({"scheme": scheme, "label_fraction": fraction, "method": method, "metric": metric,
                         "n": len(values), "mean": values.mean(), "sd": values.std() if len(values) > 1 else 0.0,
                         "counterpart": counterpart if counterpart in wide else "", **effect})
    return pd.DataFrame(rows, columns=EFFICIENCY_COLUMNS)
