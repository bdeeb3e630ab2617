"""The consensus annotator: CAWPE weights from validation predictions, popV agreement, the stage and its files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import f1_score

from sclabel import io
from sclabel.annotator import LabelledCells, load_annotator
from sclabel.baselines import BaselineAnnotator
from sclabel.consensus import WEIGHT_FLOOR, ConsensusAnnotator, cawpe_weights, consensus_stage
from sclabel.errors import InputError
from sclabel.metrics import NOT_RUN
from sclabel.predictions import predictions_table

CLASSES = np.array(["B", "NK", "T"])


def table(ids, truth, probabilities, classes=CLASSES, abstained=None) -> pd.DataFrame:
    """A prediction table of hand-set probabilities (rejection: 1 - top probability)."""
    probabilities = np.asarray(probabilities, dtype=float)
    abstained = np.zeros(len(ids), dtype=bool) if abstained is None else np.asarray(abstained)
    return predictions_table(pd.Index(ids), np.asarray(truth), probabilities, np.asarray(classes),
                             1 - probabilities.max(axis=1), abstained)


def validation_tables() -> dict[str, pd.DataFrame]:
    truth = ["B", "B", "NK", "NK", "T", "T"]
    good_at_b = table(list("abcdef"), truth, [[.9, .1, 0], [.8, .2, 0], [.6, .4, 0], [0, .3, .7], [0, 0, 1], [.1, 0, .9]])
    good_at_nk = table(list("abcdef"), truth, [[.1, .9, 0], [.9, .1, 0], [0, 1, 0], [0, .8, .2], [0, .4, .6], [0, 0, 1]])
    return {"first": good_at_b, "second": good_at_nk}


def test_weights_are_each_members_validation_f1_per_class_to_the_power_alpha():
    tables = validation_tables()
    weights = cawpe_weights(tables, CLASSES, alpha=4)
    for row, member in zip(weights, tables.values()):
        f1 = f1_score(member["true"], member["predicted"], labels=CLASSES, average=None, zero_division=0)
        np.testing.assert_allclose(row, f1 ** 4 + WEIGHT_FLOOR)


def test_a_class_a_member_was_not_trained_on_gets_no_weight_from_it():
    tables = validation_tables()
    tables["two_classes"] = table(list("abcdef"), tables["first"]["true"], [[1, 0]] * 6, classes=["B", "T"])
    weights = cawpe_weights(tables, CLASSES, alpha=4)
    assert weights[2, 1] == 0 and weights[2, 0] > 0


def test_combined_probabilities_are_the_weighted_member_average_whatever_the_row_order():
    consensus = ConsensusAnnotator("consensus", {"alpha": 2})
    consensus.fit_tables(validation_tables())
    first = table(["x", "y"], ["B", "NK"], [[.7, .3, 0], [.2, .5, .3]])
    second = table(["y", "x"], ["NK", "B"], [[0, .9, .1], [.4, .6, 0]])  # the same cells, other order
    probabilities, rejection = consensus.combine({"first": first, "second": second})
    w = consensus.weights
    x = w[0] * [.7, .3, 0] + w[1] * [.4, .6, 0]
    y = w[0] * [.2, .5, .3] + w[1] * [0, .9, .1]
    np.testing.assert_allclose(probabilities, [x / x.sum(), y / y.sum()])
    # popV's agreement: x is called B or NK by the weights; each member calls its own argmax
    call = CLASSES[probabilities.argmax(axis=1)]
    expected = [1 - np.mean([c == "B", c == "NK"]) if i == 0 else 1 - np.mean([c == "NK", c == "NK"])
                for i, c in enumerate(call)]
    np.testing.assert_allclose(rejection, expected)


def test_an_abstaining_member_does_not_count_as_agreeing():
    consensus = ConsensusAnnotator("consensus", {"alpha": 4})
    consensus.fit_tables(validation_tables())
    cells = ["x"]
    agree = table(cells, ["T"], [[0, 0, 1]])
    abstains = table(cells, ["T"], [[0, .4, .6]], abstained=[True])
    _, rejection = consensus.combine({"first": agree, "second": abstains})
    assert rejection.tolist() == [0.5]


def test_members_predicting_other_cells_are_refused():
    consensus = ConsensusAnnotator("consensus", {"alpha": 4})
    consensus.fit_tables(validation_tables())
    with pytest.raises(InputError, match="different cells"):
        consensus.combine({"first": table(["x"], ["T"], [[0, 0, 1]]), "second": table(["z"], ["T"], [[0, 0, 1]])})


def write_split(folder, member, split, frame) -> str:
    path = folder / member / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_tsv(frame, path)
    return str(path)


def test_stage_leaves_out_members_that_did_not_run_and_writes_the_prediction_contract(tmp_path):
    validation = [write_split(tmp_path / "validation", member, "cv1", frame)
                  for member, frame in validation_tables().items()]
    failed = pd.DataFrame({NOT_RUN: ["no R here"]})
    validation.append(write_split(tmp_path / "validation", "broken", "cv1", failed))
    test = [write_split(tmp_path / "predictions", "first", "cv1", table(["x", "y"], ["B", "T"], [[1, 0, 0], [0, 0, 1]])),
            write_split(tmp_path / "predictions", "second", "cv1", table(["x", "y"], ["B", "T"], [[0, 1, 0], [0, 0, 1]])),
            write_split(tmp_path / "predictions", "broken", "cv1", failed)]
    consensus_stage(validation, [], {"alpha": 4}, 0.05, str(tmp_path / "model"), test, str(tmp_path / "out.tsv"))
    out = pd.read_csv(tmp_path / "out.tsv", sep="\t")
    assert out.columns[:6].tolist() == ["cell_id", "true", "predicted", "confidence", "rejection_score", "abstained"]
    # B is the first member's class (validation F1 1 for B), so it outvotes the second on x
    assert out["predicted"].tolist() == ["B", "T"] and out["rejection_score"].tolist() == [0.5, 0.0]
    saved = load_annotator(tmp_path / "model")
    assert saved.members == ["first", "second"] and saved.rejection_threshold is not None
    np.testing.assert_array_equal(saved.weights, cawpe_weights(validation_tables(), CLASSES, 4))


def test_predict_proba_from_saved_members_equals_combining_their_tables(shared_data, tmp_path):
    adata = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    X, labels = sp.csr_matrix(adata.X), adata.obs["cell_type"].astype(str).to_numpy()
    train, validation = LabelledCells(X[::2], labels[::2]), LabelledCells(X[1::2], labels[1::2])
    folders, tables = [], {}
    for method in ("logreg", "knn_pca"):
        model = BaselineAnnotator(method, None, 0, list(adata.var_names)).fit(train)
        model.calibrate_abstention(validation, 0.05)
        model.save(tmp_path / method)
        folders.append(str(tmp_path / method))
        probabilities, rejection = model.predict_proba(validation.X), model.rejection_score(validation.X)
        tables[method] = predictions_table(pd.Index(np.arange(len(rejection)).astype(str)), validation.labels,
                                           probabilities, model.classes, rejection, model.abstains(rejection, probabilities))
    consensus = ConsensusAnnotator("consensus", {"alpha": 4})
    consensus.fit_tables(tables, folders)
    consensus.save(tmp_path / "consensus")
    loaded = load_annotator(tmp_path / "consensus")
    np.testing.assert_allclose(loaded.predict_proba(validation.X), consensus.combine(tables)[0])
    np.testing.assert_allclose(loaded.rejection_score(validation.X), consensus.combine(tables)[1])
