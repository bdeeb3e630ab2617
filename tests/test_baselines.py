"""Classical baselines: probability contract, skill over the controls, train-only PCA, L1 sparsity, embeddings,
and their annotator (train + validation cells, skops save / load refusing other versions and types)."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sclabel import baselines
from sclabel.annotator import MANIFEST, LabelledCells, load_annotator, save_not_run
from sclabel.baselines import BASELINES, EMBEDDING_BASELINES, BaselineAnnotator, build_baseline, penalty_arguments
from sclabel.errors import InputError
from sclabel.evaluation import selections_table
from sclabel.store import row_chunks, take_rows

CONTROLS = ("majority", "random")
PCA_BASELINES = ("knn_pca", "rf_pca", "svm_pca")
# saga needs ~1000 iterations to converge here (8 s); 100 give the same sparsity pattern and accuracy in <1 s
FAST = {"logreg_l1": {"max_iter": 100}}
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def pbmc(shared_data):
    """pbmc_symphony (log1p CP10k, 1,200 cells, 9 classes): stratified 70/30 split and a dense 20-d embedding."""
    adata = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    X, y = sp.csr_matrix(adata.X), adata.obs["cell_type"].astype(str).to_numpy()
    train, test = train_test_split(np.arange(adata.n_obs), test_size=0.3, stratify=y, random_state=0)
    embedding = PCA(20, svd_solver="arpack", random_state=0).fit_transform(X)  # stands in for a learned embedding
    return {"X_train": X[train], "X_test": X[test], "y_train": y[train], "y_test": y[test],
            "E_train": embedding[train], "E_test": embedding[test]}


def fit_predict(name, settings, X_train, y_train, X_test, seed):
    """(test class probabilities, classes) of baseline ``name``'s annotator fitted on the training cells."""
    model = BaselineAnnotator(name, settings, seed).fit(LabelledCells(X_train, y_train))
    return model.predict_proba(X_test), model.classes


def inputs(data, name):
    if name in EMBEDDING_BASELINES:
        return data["E_train"], data["E_test"]
    return data["X_train"], data["X_test"]


@pytest.fixture(scope="module")
def predictions(pbmc):
    """Every baseline fitted once on the pbmc training cells: name -> (probabilities, classes)."""
    out = {}
    with threadpool_limits(limits=1):
        for name in BASELINES:
            X_train, X_test = inputs(pbmc, name)
            out[name] = fit_predict(name, FAST.get(name, {}), X_train, pbmc["y_train"], X_test, seed=0)
    return out


def macro_f1(pbmc, probabilities, classes):
    return f1_score(pbmc["y_test"], classes[probabilities.argmax(axis=1)], average="macro", zero_division=0)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(BASELINES))
def test_probabilities_over_sorted_training_classes(pbmc, predictions, name):
    probabilities, classes = predictions[name]
    assert list(pbmc["y_train"]) != sorted(pbmc["y_train"])  # the training order is not already sorted
    assert list(classes) == sorted(set(pbmc["y_train"]))
    assert probabilities.shape == (len(pbmc["y_test"]), len(classes))
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)  # float32 input


@pytest.mark.shared_data
@pytest.mark.parametrize("name", [name for name in BASELINES if name not in CONTROLS])
def test_classifiers_beat_the_majority_control(pbmc, predictions, name):
    majority = macro_f1(pbmc, *predictions["majority"])
    assert majority < 0.1
    assert macro_f1(pbmc, *predictions[name]) > majority + 0.5


@pytest.mark.shared_data
def test_majority_predicts_only_the_most_frequent_training_class(pbmc, predictions):
    probabilities, classes = predictions["majority"]
    most_frequent = Counter(pbmc["y_train"]).most_common(1)[0][0]
    expected = (classes == most_frequent).astype(float)
    np.testing.assert_array_equal(probabilities, np.tile(expected, (len(probabilities), 1)))


@pytest.mark.shared_data
def test_random_is_seeded_uniform_over_classes_and_near_chance(pbmc, predictions):
    probabilities, classes = predictions["random"]
    again, _ = fit_predict("random", {}, pbmc["X_train"], pbmc["y_train"], pbmc["X_test"], seed=0)
    other, _ = fit_predict("random", {}, pbmc["X_train"], pbmc["y_train"], pbmc["X_test"], seed=1)
    np.testing.assert_array_equal(probabilities, again)
    assert (probabilities.argmax(axis=1) != other.argmax(axis=1)).mean() > 0.5
    assert set(np.unique(probabilities)) == {0.0, 1.0}  # one-hot: the drawn label is the argmax
    predicted = classes[probabilities.argmax(axis=1)]
    accuracy = float(np.mean(predicted == pbmc["y_test"]))
    assert abs(accuracy - 1 / len(classes)) < 0.06 and accuracy < 0.5
    # uniform over classes, not over cells: the 2-cell HSC class is drawn about as often as the 261-cell T_CD4
    counts = Counter(predicted)
    assert min(counts[label] for label in classes) > len(predicted) / len(classes) / 2


@pytest.mark.shared_data
def test_pca_is_fitted_on_training_cells_only(pbmc, predictions):
    model = build_baseline("knn_pca", {}, seed=0).fit(pbmc["X_train"], pbmc["y_train"])
    pca = model.named_steps["features"].pca_
    assert pca.n_components_ == 50
    np.testing.assert_allclose(pca.mean_, np.asarray(pbmc["X_train"].mean(axis=0)).ravel(), rtol=1e-5, atol=1e-6)
    # a test cell's probabilities do not depend on which other cells are in the test set
    subset = np.arange(0, len(pbmc["y_test"]), 3)
    for name in PCA_BASELINES:
        alone, _ = fit_predict(name, {}, pbmc["X_train"], pbmc["y_train"], pbmc["X_test"][subset], seed=0)
        np.testing.assert_allclose(alone, predictions[name][0][subset], atol=1e-8, err_msg=name)


@pytest.mark.shared_data
def test_pca_components_are_capped_by_the_training_set(pbmc):
    X, y = pbmc["X_train"][:12], pbmc["y_train"][:12]
    assert build_baseline("knn_pca", {"n_neighbors": 3}, 0).fit(X, y).named_steps["features"].n_components_ == 11
    narrow = X[:, :8]
    assert build_baseline("knn_pca", {"n_neighbors": 3}, 0).fit(narrow, y).named_steps["features"].n_components_ == 7
    assert build_baseline("knn_pca", {"n_neighbors": 3, "n_components": 5}, 0).fit(X, y)[0].n_components_ == 5


@pytest.mark.shared_data
def test_l1_gives_sparser_coefficients_than_l2_at_the_same_c(pbmc):
    X, y = pbmc["X_train"], pbmc["y_train"]
    l2 = build_baseline("logreg", {"C": 1.0}, 0).fit(X, y)[-1].coef_
    l1 = build_baseline("logreg_l1", {"C": 1.0, "max_iter": 100}, 0).fit(X, y)[-1].coef_
    assert np.mean(l2 == 0) < 0.1
    assert np.mean(l1 == 0) > 0.5
    # the existing logreg still honours its penalty setting, through the same builder
    model = build_baseline("logreg", {"penalty": "l1"}, 0)[-1]
    assert model.solver == "saga" and penalty_arguments("l1").items() <= model.get_params().items()
    assert penalty_arguments("l2").items() <= build_baseline("logreg", {}, 0)[-1].get_params().items()


@pytest.mark.shared_data
def test_embedding_baselines_standardise_a_dense_embedding(pbmc, predictions):
    for name in EMBEDDING_BASELINES:
        assert isinstance(build_baseline(name, {}, 0)[0], StandardScaler), name
    # a rescaled embedding dimension changes nothing once standardised (kNN distances would change otherwise)
    stretched = np.array([1000.0] + [1.0] * (pbmc["E_train"].shape[1] - 1))
    rescaled, _ = fit_predict("knn_embedding", {}, pbmc["E_train"] * stretched, pbmc["y_train"],
                                       pbmc["E_test"] * stretched, seed=0)
    np.testing.assert_allclose(rescaled, predictions["knn_embedding"][0], atol=1e-8)
    with pytest.raises(InputError, match="dense embedding"):
        fit_predict("knn_embedding", {}, pbmc["X_train"], pbmc["y_train"], pbmc["X_test"], seed=0)


@pytest.fixture
def rare_classes():
    """Synthetic sparse expression with a 1-cell and a 2-cell training class (rarer than the SVM's 5 folds)."""
    rng = np.random.default_rng(0)
    y_train = np.array(["a"] * 40 + ["b"] * 30 + ["c"] * 2 + ["d"] * 1)
    y_test = np.array(["a", "b", "c", "d"] * 3)
    centres = {label: rng.gamma(1.0, 1.0, size=30) for label in "abcd"}

    def cells(labels):
        dense = np.stack([rng.poisson(centres[label]) for label in labels]).astype(np.float32)
        return sp.csr_matrix(np.log1p(dense))

    return cells(y_train), y_train, cells(y_test)


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_handles_classes_rarer_than_the_folds(rare_classes, name):
    X_train, y_train, X_test = rare_classes
    if name in EMBEDDING_BASELINES:
        X_train, X_test = X_train.toarray(), X_test.toarray()
    settings = {"n_neighbors": 5} if name.startswith("knn") else FAST.get(name, {})
    probabilities, classes = fit_predict(name, settings, X_train, y_train, X_test, seed=0)
    assert list(classes) == ["a", "b", "c", "d"]
    assert probabilities.shape == (X_test.shape[0], 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)  # float32 input
    again, _ = fit_predict(name, settings, X_train, y_train, X_test, seed=0)
    np.testing.assert_array_equal(probabilities, again)


def test_seed_changes_the_random_forest(rare_classes):
    X_train, y_train, X_test = rare_classes
    first, _ = fit_predict("rf_pca", {"n_estimators": 20}, X_train, y_train, X_test, seed=0)
    second, _ = fit_predict("rf_pca", {"n_estimators": 20}, X_train, y_train, X_test, seed=1)
    assert not np.allclose(first, second)


def test_unknown_baseline_or_setting_is_a_one_line_input_error(rare_classes):
    X_train, y_train, X_test = rare_classes
    with pytest.raises(InputError, match="unknown baseline 'xgboost'") as error:
        fit_predict("xgboost", {}, X_train, y_train, X_test, seed=0)
    assert "\n" not in str(error.value) and "logreg_l1" in str(error.value)
    with pytest.raises(InputError, match=r"baseline\.knn_pca\.k: unknown setting") as error:
        fit_predict("knn_pca", {"k": 5}, X_train, y_train, X_test, seed=0)
    assert "\n" not in str(error.value) and "n_neighbors" in str(error.value)
    with pytest.raises(InputError, match="penalty"):
        fit_predict("logreg_l1", {"penalty": "l2"}, X_train, y_train, X_test, seed=0)


def test_registry_names():
    assert set(EMBEDDING_BASELINES) <= set(BASELINES)
    assert set(BASELINES) == {"logreg", "logreg_l1", *PCA_BASELINES, *EMBEDDING_BASELINES, *CONTROLS}
    assert baselines.BASELINES["logreg"].defaults["penalty"] == "l2"


# ---- at scale: the same baselines above their thresholds (set low here), reading a cell store by rows ----

def accuracy(pbmc, probabilities, classes):
    return float(np.mean(classes[probabilities.argmax(axis=1)] == pbmc["y_test"]))


@pytest.fixture(scope="module")
def pbmc_store(pbmc, tmp_path_factory):
    """The pbmc training and test cells in one cell store, as (training RowView, test RowView)."""
    from sclabel.store import CellStore, write_store

    X = sp.vstack([pbmc["X_train"], pbmc["X_test"]]).tocsr()
    cells = ad.AnnData(X.astype(np.float32))
    cells.obs_names = [f"c{i}" for i in range(X.shape[0])]
    path = tmp_path_factory.mktemp("store") / "cells.h5ad"
    write_store(cells, path, chunk_cells=100)
    store = CellStore(path)
    n_train = pbmc["X_train"].shape[0]
    yield store.view(np.arange(n_train)), store.view(np.arange(n_train, X.shape[0]))
    store.close()


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["logreg", "logreg_l1"])
def test_streamed_sgd_logreg_reaches_the_full_fit_accuracy(pbmc, predictions, name, caplog):
    caplog.set_level("INFO", logger="sclabel")
    with threadpool_limits(limits=1):
        model = baselines.fit_baseline(name, {"max_nnz": 0}, pbmc["X_train"], pbmc["y_train"], seed=0, chunk_cells=200)
    assert "scale mode: mini-batch SGD" in caplog.text
    assert isinstance(model[-1], baselines.SGDClassifier) and model[-1].penalty == name[-2:].replace("eg", "l2")
    probabilities = model.predict_proba(pbmc["X_test"])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)  # float32 input
    assert accuracy(pbmc, probabilities, model.classes_) >= 0.8 * accuracy(pbmc, *predictions[name])
    again = baselines.fit_baseline(name, {"max_nnz": 0}, pbmc["X_train"], pbmc["y_train"], seed=0, chunk_cells=200)
    np.testing.assert_array_equal(again.predict_proba(pbmc["X_test"]), probabilities)  # seeded


@pytest.mark.shared_data
def test_l1_sgd_gives_sparser_coefficients_than_l2_sgd(pbmc):
    fits = {name: baselines.fit_baseline(name, {"max_nnz": 0}, pbmc["X_train"], pbmc["y_train"], 0)
            for name in ("logreg", "logreg_l1")}
    assert np.mean(fits["logreg_l1"][-1].coef_ == 0) > np.mean(fits["logreg"][-1].coef_ == 0) + 0.3


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "settings"), [("logreg", {}), ("logreg", {"max_nnz": 0}), ("knn_pca", {}),
                                                ("rf_pca", {"pca_max_cells": 300, "max_cells": 300})])
def test_a_cell_store_gives_the_in_memory_fit(pbmc, pbmc_store, name, settings):
    train, test = pbmc_store
    in_memory = baselines.fit_baseline(name, settings, pbmc["X_train"], pbmc["y_train"], 0, chunk_cells=150)
    streamed = baselines.fit_baseline(name, settings, train, pbmc["y_train"], 0, chunk_cells=150)
    chunks = np.vstack([streamed.predict_proba(chunk) for chunk in row_chunks(test, 70)])
    np.testing.assert_allclose(chunks, in_memory.predict_proba(pbmc["X_test"]), rtol=1e-6, atol=1e-9)


@pytest.mark.shared_data
def test_stored_values_count_a_views_rows_from_the_index(pbmc, pbmc_store):
    train, _ = pbmc_store
    assert baselines.stored_values(train) == pbmc["X_train"].nnz
    assert baselines.stored_values(take_rows(train, np.array([5, 2]))) == pbmc["X_train"][[5, 2]].nnz


@pytest.mark.shared_data
@pytest.mark.parametrize("name", PCA_BASELINES)
def test_pca_and_classifier_on_bounded_samples_give_valid_probabilities(pbmc, predictions, name, caplog):
    caplog.set_level("INFO", logger="sclabel")
    settings = {"pca_max_cells": 200, "max_cells": 300} if name != "knn_pca" else {"pca_max_cells": 200}
    with threadpool_limits(limits=1):
        model = baselines.fit_baseline(name, settings, pbmc["X_train"], pbmc["y_train"], 0)
    n_classes = len(set(pbmc["y_train"]))
    pca = model.named_steps["features"].pca_
    assert 200 <= pca.n_samples_ <= 200 + baselines.MIN_PER_CLASS * n_classes < len(pbmc["y_train"])
    assert f"fitted on {pca.n_samples_} of {len(pbmc['y_train'])} training cells" in caplog.text
    probabilities = model.predict_proba(pbmc["X_test"])
    assert probabilities.shape == predictions[name][0].shape and (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert macro_f1(pbmc, probabilities, model.classes_) > macro_f1(pbmc, *predictions["majority"]) + 0.5


def test_stratified_sample_keeps_class_proportions_and_every_class():
    labels = np.array(["a"] * 900 + ["b"] * 95 + ["c"] * 5)
    sample = baselines.stratified_sample(labels, 100, seed=0)
    assert np.all(np.diff(sample) > 0)  # sorted positions, no repeats
    assert Counter(labels[sample]) == {"a": 90, "b": baselines.MIN_PER_CLASS, "c": 5}
    np.testing.assert_array_equal(sample, baselines.stratified_sample(labels, 100, seed=0))
    assert not np.array_equal(sample, baselines.stratified_sample(labels, 100, seed=1))
    np.testing.assert_array_equal(baselines.stratified_sample(labels, 1000, seed=0), np.arange(1000))
    capped = baselines.capped_per_class(labels, 50, seed=0)
    assert Counter(labels[capped]) == {"a": 50, "b": 50, "c": 5}
    np.testing.assert_array_equal(baselines.capped_per_class(labels, 900, seed=0), np.arange(1000))


def test_shuffled_blocks_cover_every_cell_once_per_epoch():
    rng = np.random.default_rng(0)
    buffers = list(baselines.shuffled_blocks(1000, 300, rng))
    assert sorted(np.concatenate(buffers).tolist()) == list(range(1000))
    assert all(len(rows) <= 300 for rows in buffers)
    assert not np.array_equal(np.concatenate(buffers), np.arange(1000))  # blocks in random order


# ---- the annotator: training + validation cells, saved with skops and loaded back only when safe ----

class NotABaseline(BaseEstimator):
    """A type no baseline holds (its saved file must be refused)."""


def saved(model, folder):
    model.save(folder)
    return load_annotator(folder)


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "settings"), [
    ("logreg", {}), ("logreg", {"max_nnz": 0}), ("logreg_l1", FAST["logreg_l1"]), ("knn_pca", {}),
    ("rf_pca", {"n_estimators": 20}), ("svm_pca", {}), ("majority", {}), ("random", {})])
def test_a_saved_baseline_loads_back_to_the_same_probabilities(pbmc, tmp_path, name, settings):
    """(The embedding baselines' annotator, which carries its encoder: tests/test_streaming.py.)"""
    X_train, X_test = inputs(pbmc, name)
    genes = [f"g{i}" for i in range(X_train.shape[1])]
    with threadpool_limits(limits=1):
        model = BaselineAnnotator(name, settings, 0, genes).fit(LabelledCells(X_train, pbmc["y_train"]))
        loaded = saved(model, tmp_path / name)
        np.testing.assert_array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))
    assert type(loaded) is BaselineAnnotator and loaded.genes == genes
    np.testing.assert_array_equal(loaded.classes, sorted(set(pbmc["y_train"])))
    assert sorted(path.name for path in (tmp_path / name).iterdir()) == [MANIFEST, "genes.txt", "model.skops"]
    if name.startswith("logreg"):
        pd.testing.assert_frame_equal(loaded.top_genes(), model.top_genes())
    else:
        with pytest.raises(NotImplementedError):
            loaded.top_genes()


@pytest.mark.shared_data
def test_linear_top_genes_are_the_folded_coefficients_of_the_fitted_model(pbmc):
    from sclabel.ranking import coefficient_top_genes

    genes = [f"g{i}" for i in range(pbmc["X_train"].shape[1])]
    model = BaselineAnnotator("logreg", {}, 0, genes).fit(LabelledCells(pbmc["X_train"], pbmc["y_train"]))
    expected = coefficient_top_genes(build_baseline("logreg", {}, 0).fit(pbmc["X_train"], pbmc["y_train"]), genes,
                                     sorted(set(pbmc["y_train"])))
    pd.testing.assert_frame_equal(model.top_genes(), expected)


@pytest.mark.shared_data
def test_the_annotator_fits_on_training_cells_only_and_sets_its_threshold_on_validation_cells(pbmc, pbmc_store):
    train, test = pbmc_store
    half = len(pbmc["y_train"]) // 2
    first = LabelledCells(take_rows(train, np.arange(half)), pbmc["y_train"][:half])
    second = LabelledCells(take_rows(train, np.arange(half, len(pbmc["y_train"]))), pbmc["y_train"][half:])
    from_store = BaselineAnnotator("logreg", {"C": 1.0}, 0).fit(first, second)
    in_memory = BaselineAnnotator("logreg", {"C": 1.0}, 0).fit(LabelledCells(pbmc["X_train"][:half], first.labels))
    expected = in_memory.predict_proba(pbmc["X_test"])  # the validation cells play no part in the fit
    np.testing.assert_allclose(from_store.predict_proba(test[np.arange(test.shape[0])]), expected, rtol=1e-6,
                               atol=1e-9)
    from_store.calibrate_abstention(second, 0.1)
    rejection, probabilities = from_store.rejection_score(second.X), from_store.predict_proba(second.X)
    assert from_store.rejection_threshold == np.quantile(rejection, 0.9, method="higher")
    assert from_store.abstains(rejection, probabilities).mean() <= 0.1
    majority = BaselineAnnotator("majority", {}, 0).fit(first)
    majority.calibrate_abstention(second, 0.1)
    assert not majority.abstains(rejection, probabilities).any()  # controls never abstain


@pytest.mark.shared_data
@pytest.mark.parametrize("name", [*CONTROLS, "logreg"])
def test_controls_never_abstain_and_other_baselines_leave_it_to_the_workflow(pbmc, name):
    annotator = BaselineAnnotator(name, FAST.get(name, {}), 0).fit(LabelledCells(pbmc["X_train"], pbmc["y_train"]))
    probabilities = annotator.predict_proba(pbmc["X_test"])
    predicted = annotator.classes[probabilities.argmax(axis=1)]
    rejection = annotator.rejection_score(pbmc["X_test"])
    for scores in (rejection, np.ones_like(rejection)):  # not even where every cell looks novel
        abstained = annotator.own_abstention(scores, predicted)
        if name in CONTROLS:
            assert abstained.dtype == bool and abstained.shape == rejection.shape and not abstained.any()
        else:
            assert abstained is None  # the workflow's threshold, calibrated on validation cells, decides


def fitted_logreg(rare_classes, folder):
    X_train, y_train, _ = rare_classes
    BaselineAnnotator("logreg", {}, 0, [f"g{i}" for i in range(X_train.shape[1])]).fit(
        LabelledCells(X_train, y_train)).save(folder)
    return folder


def test_a_model_saved_with_another_scikit_learn_is_refused_in_one_line(rare_classes, tmp_path):
    folder = fitted_logreg(rare_classes, tmp_path / "logreg")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["version_bound"] == ["scikit-learn"]
    major, minor = map(int, manifest["versions"]["scikit-learn"].split(".")[:2])
    manifest["versions"]["scikit-learn"] = f"{major}.{minor + 1}.0"
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=rf"versions\.scikit-learn: saved with scikit-learn {major}\.{minor + 1}"
                                         ) as error:
        load_annotator(folder)
    assert "\n" not in str(error.value)


def test_a_model_file_holding_an_unknown_type_is_refused_in_one_line(rare_classes, tmp_path):
    import skops.io

    folder = fitted_logreg(rare_classes, tmp_path / "logreg")
    skops.io.dump(make_pipeline(NotABaseline()), folder / "model.skops")
    with pytest.raises(InputError, match=r"model\.skops: types: holds types no baseline uses \(.*NotABaseline\)"
                       ) as error:
        load_annotator(folder)
    assert "\n" not in str(error.value)


def separable(seed, n_per_class, spread):
    """Sparse log expression of 3 types (one rare) around their own centres; ``spread`` blurs them."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).gamma(1.0, 1.0, size=(3, 40))
    labels = np.repeat(np.array(["a", "b", "c"]), n_per_class)
    means = centres[np.searchsorted(["a", "b", "c"], labels)] * rng.gamma(1 / spread, spread, size=(len(labels), 40))
    return sp.csr_matrix(np.log1p(rng.poisson(means)).astype(np.float64)), labels


def by_hand(C, X_train, y_train, X_val, y_val):
    """(validation macro F1 over the validation cells' own types, the fitted pipeline) of logreg at ``C``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MaxAbsScaler

    model = make_pipeline(MaxAbsScaler(), LogisticRegression(C=C, max_iter=1000, random_state=0)).fit(X_train, y_train)
    return f1_score(y_val, model.predict(X_val), labels=np.unique(y_val), average="macro", zero_division=0), model


def test_a_c_grid_keeps_the_c_with_the_best_validation_macro_f1_checked_by_hand(tmp_path):
    (X_train, y_train), (X_val, y_val) = separable(0, [60, 60, 8], 1.0), separable(1, [30, 30, 6], 1.0)
    grid = baselines.C_GRID  # the default; without validation cells: its middle value, 1.0
    scores = {C: by_hand(C, X_train, y_train, X_val, y_val)[0] for C in grid}
    best = max(grid, key=lambda C: (scores[C], -C))
    assert best == 10.0 and scores[10.0] > scores[1.0] + 0.1  # validation clearly prefers another C than 1
    genes = [f"g{i}" for i in range(X_train.shape[1])]
    model = BaselineAnnotator("logreg", {}, 0, genes).fit(LabelledCells(X_train, y_train),
                                                                    LabelledCells(X_val, y_val))
    assert model.selection["C"] == best
    np.testing.assert_allclose(list(model.selection["scores"].values()), [scores[C] for C in grid])
    np.testing.assert_allclose(model.predict_proba(X_val), by_hand(best, X_train, y_train, X_val, y_val)[1]
                               .predict_proba(X_val), rtol=1e-6, atol=1e-9)
    model.save(tmp_path / "logreg" / "cv1")
    meta = json.loads((tmp_path / "logreg" / "cv1" / MANIFEST).read_text())["meta"]
    assert meta["selection"]["C"] == best and meta["converged"] is True
    save_not_run(tmp_path / "celltypist" / "cv1", "celltypist", "no reason")
    table = selections_table([str(tmp_path / "logreg" / "cv1"), str(tmp_path / "celltypist" / "cv1")])
    assert table.drop(columns="validation_macro_f1").to_dict("records") == [
        {"method": "logreg", "split": "cv1", "setting": "C", "chosen": best, "converged": True}]
    assert json.loads(table.loc[0, "validation_macro_f1"]) == pytest.approx({str(C): scores[C] for C in grid})
    without = BaselineAnnotator("logreg", {}, 0).fit(LabelledCells(X_train, y_train))
    np.testing.assert_allclose(without.predict_proba(X_val), by_hand(1.0, X_train, y_train, X_val, y_val)[1]
                               .predict_proba(X_val), rtol=1e-6, atol=1e-9)


def test_a_validation_tie_goes_to_the_smaller_c():
    (X_train, y_train), (X_val, y_val) = separable(0, [40, 40, 40], 0.05), separable(1, [10, 10, 10], 0.05)
    assert all(by_hand(C, X_train, y_train, X_val, y_val)[0] == 1.0 for C in (1.0, 10.0, 100.0))
    model = BaselineAnnotator("logreg", {"C": [100, 10, 1]}, 0).fit(LabelledCells(X_train, y_train),
                                                                   LabelledCells(X_val, y_val))
    assert model.selection == {"C": 1.0, "scores": {"1.0": 1.0, "10.0": 1.0, "100.0": 1.0}}


def test_a_solver_that_did_not_converge_is_recorded(rare_classes, tmp_path, caplog):
    X_train, y_train, _ = rare_classes
    with pytest.warns(UserWarning, match="passes through"):
        _, converged = baselines.fit_recording_convergence(lambda: warnings.warn("passes through") or None)
    assert converged
    model = BaselineAnnotator("logreg_l1", {"max_iter": 1, "C": 1.0}, 0, [f"g{i}" for i in range(30)])
    with caplog.at_level("WARNING", logger="sclabel"):
        model.fit(LabelledCells(X_train, y_train))
    assert not model.converged and "did not converge" in caplog.text
    model.save(tmp_path / "l1")
    assert json.loads((tmp_path / "l1" / MANIFEST).read_text())["meta"]["converged"] is False
    assert BaselineAnnotator("logreg_l1", {"C": 1.0}, 0).fit(LabelledCells(X_train, y_train)).converged


def test_a_c_grid_that_is_not_positive_numbers_is_a_one_line_input_error(rare_classes):
    X_train, y_train, X_test = rare_classes
    with pytest.raises(InputError, match=r"baseline\.logreg\.C: .* is not a list of positive numbers"):
        fit_predict("logreg", {"C": [1, -1]}, X_train, y_train, X_test, seed=0)
