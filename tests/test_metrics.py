"""Metrics equal scikit-learn's on known inputs."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from sclabel import metrics


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    labels = np.array(["B", "T", "NK", "Mono"])
    y_true = rng.choice(labels, size=300, p=[0.4, 0.3, 0.2, 0.1])
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.choice(np.append(labels, "DC"), size=300))
    return y_true, y_pred


def test_summary_scores_match_sklearn(predictions):
    y_true, y_pred = predictions
    scores = metrics.summary_scores(y_true, y_pred)
    assert scores["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert scores["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y_true, y_pred))
    assert scores["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))


def test_per_class_and_confusion_match_sklearn(predictions):
    y_true, y_pred = predictions
    labels = metrics.label_order(y_true, y_pred)
    matrix = metrics.confusion(y_true, y_pred, labels)
    np.testing.assert_array_equal(matrix, skm.confusion_matrix(y_true, y_pred, labels=labels))
    table = metrics.per_class_scores(matrix, labels)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                                         zero_division=0)
    np.testing.assert_allclose(table["precision"], precision)
    np.testing.assert_allclose(table["recall"], recall)
    np.testing.assert_allclose(table["f1"], f1)
    np.testing.assert_array_equal(table["support"], support)


def test_hand_computed_kappa():
    # 2x2 table [[20, 5], [10, 15]]: po = 0.7, pe = (25*30 + 25*20) / 50^2 = 0.5 -> kappa 0.4
    y_true = ["a"] * 25 + ["b"] * 25
    y_pred = ["a"] * 20 + ["b"] * 5 + ["a"] * 10 + ["b"] * 15
    assert metrics.summary_scores(y_true, y_pred)["cohen_kappa"] == pytest.approx(0.4)


def test_threshold_marks_unassigned_and_counts_as_wrong():
    predicted = pd.Series(["a", "b", "a"])
    confidence = pd.Series([0.9, 0.3, 0.5])
    thresholded = metrics.apply_threshold(predicted, confidence, 0.5)
    assert thresholded.tolist() == ["a", metrics.UNASSIGNED, "a"]
    assert metrics.summary_scores(["a", "b", "a"], thresholded)["accuracy"] == pytest.approx(2 / 3)


def test_summary_mean_and_sd_over_splits():
    long = pd.DataFrame({"method": ["m"] * 3, "split": ["cv1", "cv2", "cv3"], "metric": ["accuracy"] * 3,
                         "value": [0.8, 0.9, 1.0]})
    row = metrics.summarise(long).iloc[0]
    assert row["mean"] == pytest.approx(0.9)
    assert row["sd"] == pytest.approx(0.1)
    assert row["n_splits"] == 3


# Training set for the benchmark cases: A 50 %, B 46 %, R 4 % (rare below 5 %).
TRAIN = ["A"] * 50 + ["B"] * 46 + ["R"] * 4


@pytest.fixture
def benchmark_table() -> pd.DataFrame:
    # 10 cells: 7 known (A, B, R), 3 of type N absent from training; threshold 0.5 unassigns the 0.2, 0.3, 0.1 cells.
    return pd.DataFrame({
        "true":       ["A", "A", "A", "B", "B", "R", "R", "N", "N", "N"],
        "predicted":  ["A", "A", "B", "B", "B", "R", "A", "A", "B", "A"],
        "confidence": [0.9, 0.8, 0.9, 0.9, 0.2, 0.9, 0.7, 0.3, 0.1, 0.9],
    })


def test_probability_columns_keeps_only_proba_prefix_in_order():
    table = pd.DataFrame(columns=["cell_id", "true", "proba:T", "predicted", "proba:B", "confidence", "probaX"])
    assert metrics.probability_columns(table) == ["proba:T", "proba:B"]


def test_rare_classes_are_strictly_below_the_fraction():
    train = ["A"] * 50 + ["B"] * 40 + ["C"] * 5 + ["D"] * 4 + ["E"] * 1
    assert metrics.rare_classes(train) == ["D", "E"]  # C is exactly 5 %, not fewer
    assert metrics.rare_classes(train, rare_fraction=0.1) == ["C", "D", "E"]
    assert metrics.rare_classes(train, rare_fraction=0.01) == []


def test_benchmark_known_novel_and_rare_by_hand(benchmark_table):
    scores = metrics.benchmark_scores(benchmark_table, TRAIN, threshold=0.5, rare_fraction=0.05)
    # Thresholded: A A B B unassigned R A unassigned unassigned A.
    assert scores["known_accuracy"] == pytest.approx(4 / 7)  # A, A, B, R right; the unassigned B is wrong
    assert scores["novel_accuracy"] == pytest.approx(2 / 3)
    assert scores["novel_fraction"] == pytest.approx(3 / 10)
    assert scores["rare_accuracy"] == pytest.approx(1 / 2)
    assert scores["rare_f1"] == pytest.approx(2 / 3)  # R: precision 1, recall 1/2
    assert scores["accuracy"] == pytest.approx(6 / 10)  # 4 known right + the 2 unassigned novel cells
    assert np.isnan(scores["macro_auroc"]) and np.isnan(scores["macro_auprc"])  # no proba columns


def test_benchmark_summary_scores_match_sklearn_on_thresholded_predictions(benchmark_table):
    scores = metrics.benchmark_scores(benchmark_table, TRAIN, threshold=0.5, rare_fraction=0.05)
    # novel cells (N, absent from training) are truly "unassigned": right only when left unassigned
    y_true = benchmark_table["true"].where(benchmark_table["true"].isin(TRAIN), metrics.UNASSIGNED)
    y_pred = metrics.apply_threshold(benchmark_table["predicted"], benchmark_table["confidence"], 0.5)
    assert scores["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert scores["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y_true, y_pred))
    assert scores["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    test_classes = skm.f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0)
    assert scores["macro_f1_test_classes"] == pytest.approx(test_classes)
    # A 4/7, B 1/2, R 2/3, unassigned 2/3 (2 of the 3 novel cells, plus one wrongly unassigned B)
    assert scores["macro_f1_test_classes"] == pytest.approx((4 / 7 + 1 / 2 + 2 / 3 + 2 / 3) / 4)
    assert scores["macro_f1"] == pytest.approx(scores["macro_f1_test_classes"])


def test_rare_scores_match_sklearn_on_random_predictions(predictions):
    y_true, y_pred = predictions
    train = ["B"] * 60 + ["T"] * 30 + ["NK"] * 7 + ["Mono"] * 3  # Mono rare at 5 %, NK and Mono at 10 %
    table = pd.DataFrame({"true": y_true, "predicted": y_pred, "confidence": 1.0})
    scores = metrics.benchmark_scores(table, train, threshold=0.5, rare_fraction=0.1)
    rare = np.isin(y_true, ["Mono", "NK"])
    assert scores["rare_accuracy"] == pytest.approx(skm.accuracy_score(y_true[rare], y_pred[rare]))
    rare_f1 = skm.f1_score(y_true, y_pred, labels=["Mono", "NK"], average=None, zero_division=0).mean()
    assert scores["rare_f1"] == pytest.approx(rare_f1)


def test_macro_auroc_and_auprc_match_sklearn_one_vs_rest_on_known_cells():
    rng = np.random.default_rng(7)
    trained = ["A", "B", "C", "D", "E"]  # E is never in the test set, so it is skipped
    true = rng.choice(["A", "B", "C", "D", "N"], size=400, p=[0.3, 0.3, 0.2, 0.1, 0.1])
    proba = rng.dirichlet(np.ones(len(trained)), size=true.size).round(1)  # rounding makes ties
    table = pd.DataFrame({"true": true, "predicted": np.asarray(trained)[proba.argmax(axis=1)],
                          "confidence": proba.max(axis=1)})
    for label, column in zip(trained, proba.T):
        table[metrics.PROBA_PREFIX + label] = column
    scores = metrics.benchmark_scores(table, trained, threshold=0.0, rare_fraction=0.05)
    known = true != "N"
    aurocs = [skm.roc_auc_score(true[known] == c, table.loc[known, f"proba:{c}"]) for c in "ABCD"]
    auprcs = [skm.average_precision_score(true[known] == c, table.loc[known, f"proba:{c}"]) for c in "ABCD"]
    assert scores["macro_auroc"] == pytest.approx(np.mean(aurocs))
    assert scores["macro_auprc"] == pytest.approx(np.mean(auprcs))


def test_auroc_and_auprc_match_sklearn_with_ties():
    rng = np.random.default_rng(11)
    positive = rng.random(200) < 0.3
    score = (rng.random(200) + positive * 0.3).round(1)
    assert metrics.auroc(positive, score) == pytest.approx(skm.roc_auc_score(positive, score))
    assert metrics.auprc(positive, score) == pytest.approx(skm.average_precision_score(positive, score))


def test_benchmark_nan_without_novel_rare_or_proba_cells():
    table = pd.DataFrame({"true": ["A", "B", "A"], "predicted": ["A", "A", "A"], "confidence": [0.9, 0.9, 0.9]})
    scores = metrics.benchmark_scores(table, TRAIN, threshold=0.5, rare_fraction=0.05)
    assert scores["known_accuracy"] == pytest.approx(2 / 3)
    assert scores["novel_fraction"] == 0.0
    for name in ["novel_accuracy", "rare_accuracy", "rare_f1", "macro_auroc", "macro_auprc"]:
        assert np.isnan(scores[name]), name


def test_auroc_skips_classes_without_negatives_among_known_cells():
    # Only A among the known cells: no one-vs-rest split exists, so AUROC is undefined.
    table = pd.DataFrame({"true": ["A", "A", "N"], "predicted": ["A", "A", "A"], "confidence": [0.9, 0.8, 0.7],
                          "proba:A": [0.9, 0.8, 0.7], "proba:B": [0.1, 0.2, 0.3]})
    scores = metrics.benchmark_scores(table, ["A", "B"], threshold=0.5, rare_fraction=0.05)
    assert np.isnan(scores["macro_auroc"]) and np.isnan(scores["macro_auprc"])
