"""Stratified k-fold splits with a validation slice carved from each training fold."""

import numpy as np
import pandas as pd
import pytest

from sclabel import splits
from sclabel.errors import InputError


@pytest.fixture
def labels() -> pd.Series:
    counts = {"T": 120, "B": 60, "NK": 30, "rare": 3}
    values = np.concatenate([[name] * n for name, n in counts.items()])
    return pd.Series(values, index=[f"cell{i}" for i in range(len(values))])


def test_every_cell_is_tested_exactly_once(labels):
    table = splits.stratified_cv(labels.index, labels, 5, 0.1, seed=0)
    assert list(table.columns) == ["cv1", "cv2", "cv3", "cv4", "cv5"]
    assert ((table == splits.TEST).sum(axis=1) == 1).all()


def test_validation_is_carved_from_training_and_stratified(labels):
    table = splits.stratified_cv(labels.index, labels, 5, 0.1, seed=0)
    for split in table.columns:
        val = labels[table[split] == splits.VAL]
        train = labels[table[split] == splits.TRAIN]
        assert set(val.index).isdisjoint(train.index)
        assert val.value_counts()["T"] == round(0.1 * (labels == "T").sum() * 4 / 5)
        assert (train.value_counts() > 0).all()


def test_test_folds_are_stratified(labels):
    table = splits.stratified_cv(labels.index, labels, 5, 0.1, seed=0)
    for split in table.columns:
        assert labels[table[split] == splits.TEST].value_counts()["T"] == 24


def test_same_seed_same_splits_other_seed_differs(labels):
    first = splits.stratified_cv(labels.index, labels, 5, 0.1, seed=7)
    pd.testing.assert_frame_equal(first, splits.stratified_cv(labels.index, labels, 5, 0.1, seed=7))
    assert not first.equals(splits.stratified_cv(labels.index, labels, 5, 0.1, seed=8))


def test_small_classes_are_kept_and_reported(labels):
    table = splits.stratified_cv(labels.index, labels, 5, 0.1, seed=0)
    report = splits.class_report(labels, table, 5)
    rare = report[report["cell_type"] == "rare"]
    assert rare["fewer_cells_than_folds"].all()
    assert rare["test"].sum() == 3  # each rare cell is still tested once
    assert not report.loc[report["cell_type"] == "T", "fewer_cells_than_folds"].any()


def test_single_class_is_refused():
    labels = pd.Series(["T"] * 10, index=[f"c{i}" for i in range(10)])
    with pytest.raises(InputError, match="only one class.*Fix:"):
        splits.stratified_cv(labels.index, labels, 5, 0.1, seed=0)


def test_more_folds_than_cells_in_every_class_is_one_line():
    labels = pd.Series(["T", "B", "NK"] * 3, index=[f"cell{i}" for i in range(9)])  # 3 cells per class
    with pytest.raises(InputError) as err:
        splits.stratified_cv(labels.index, labels, 5, 0.1, seed=0, source="combined.h5ad")
    message = str(err.value)
    assert "\n" not in message and "combined.h5ad: split.n_folds" in message and "at most 3" in message
