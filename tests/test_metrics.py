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
