"""Open-set detection of the neural models: temperature scaling on validation cells, novelty scores, save/load."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import yaml
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import train_test_split

from sclabel.model import REFERENCE_FILE, CellTypeAnnotator
from sclabel.nn import novelty
from sclabel.nn.finetune import FinetuneSettings

from workflow_helpers import REPO_ROOT

HELD_OUT = "B"  # Symphony's B cells: never trained on, scored as novel


@pytest.fixture(scope="module")
def open_set(shared_data):
    """An MLP trained on Symphony PBMCs without B cells; its validation cells, and test cells with the B cells."""
    adata = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    y = adata.obs["cell_type"].astype(str).to_numpy()
    known = np.flatnonzero(y != HELD_OUT)
    train, test = train_test_split(known, test_size=0.25, stratify=y[known], random_state=0)
    train, val = train_test_split(train, test_size=0.2, stratify=y[train], random_state=0)
    test = np.concatenate([test, np.flatnonzero(y == HELD_OUT)])
    model = CellTypeAnnotator(list(adata.var_names), sorted(set(y[known])), "mlp",
                              config={"finetune": {"rejection_reference_cells": 300}})
    model.train(adata.X[train], y[train], adata.X[val], y[val], FinetuneSettings(epochs=15, patience=3), seed=0,
                device="cpu", progress=False)
    return {"model": model, "train": y[train], "val": (adata.X[val], y[val]),
            "test": (adata.X[test], y[test] == HELD_OUT)}


def test_temperature_fitted_on_validation_does_not_raise_its_nll(open_set):
    model = open_set["model"]
    X_val, y_val = open_set["val"]
    calibration = model.training["calibration"]
    assert calibration["temperature"] == model.temperature != 1.0  # fitted: some validation cells are wrong
    calibrated = log_loss(y_val, model.predict_proba(X_val), labels=model.labels)
    uncalibrated = log_loss(y_val, novelty.softmax(model.logits(X_val)), labels=model.labels)
    assert calibrated == pytest.approx(calibration["val_nll_calibrated"], rel=1e-5)
    assert uncalibrated == pytest.approx(calibration["val_nll"], rel=1e-5)
    assert calibrated < uncalibrated


def test_temperature_softens_overconfident_logits():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, 500)
    predicted = np.where(rng.random(500) < 0.8, codes, (codes + 1) % 3)  # 80% right, each at logit margin 8
    logits = 8.0 * np.eye(3)[predicted]
    temperature = novelty.fit_temperature(logits, codes)
    assert temperature > 2.0
    scaled = log_loss(codes, novelty.softmax(logits, temperature), labels=[0, 1, 2])
    assert scaled < log_loss(codes, novelty.softmax(logits), labels=[0, 1, 2]) - 0.1
    assert novelty.nll(logits, codes, temperature) == pytest.approx(scaled, rel=1e-6)
    assert novelty.fit_temperature(8.0 * np.eye(3)[codes], codes) == 1.0  # all right: no minimum, no sharpening


@pytest.mark.parametrize("option", [kind for kind in novelty.REJECTIONS if kind not in novelty.ENSEMBLE_REJECTIONS])
def test_every_rejection_option_ranks_a_held_out_type_above_known_cells(open_set, option):
    X_test, novel = open_set["test"]
    score = open_set["model"].rejection_score(X_test, option)
    assert score.shape == (len(novel),) and np.isfinite(score).all()
    assert roc_auc_score(novel, score) > 0.9, option


def test_default_rejection_is_the_configured_one(open_set):
    model = open_set["model"]
    X_test, _ = open_set["test"]
    assert model.rejection == novelty.DEFAULT_REJECTION
    assert np.array_equal(model.rejection_score(X_test), model.rejection_score(X_test, novelty.DEFAULT_REJECTION))
    energy = CellTypeAnnotator(model.genes, model.labels, config={"finetune": {"rejection": "energy"}})
    assert energy.rejection == "energy"
    with pytest.raises(ValueError, match="finetune.rejection 'odin' is not one of max_softmax, energy"):
        CellTypeAnnotator(model.genes, model.labels, config={"finetune": {"rejection": "odin"}})


def test_reference_is_a_bounded_class_balanced_sample_of_unit_embeddings(open_set):
    model = open_set["model"]
    counts = np.bincount(model.reference_codes, minlength=len(model.labels))
    trained = np.array([np.sum(open_set["train"] == label) for label in model.labels])
    assert len(model.reference) == counts.sum() <= 300
    quota = counts.max()
    assert np.array_equal(counts, np.minimum(trained, quota))  # small classes whole, the others capped alike
    assert np.allclose(np.linalg.norm(model.reference, axis=1), 1.0, atol=1e-5)


def test_balanced_sample_is_seeded_and_bounded():
    codes = np.repeat([0, 1, 2], [1000, 50, 3])
    rows = novelty.balanced_sample(codes, 200, seed=1)
    assert np.array_equal(rows, novelty.balanced_sample(codes, 200, seed=1))
    assert not np.array_equal(rows, novelty.balanced_sample(codes, 200, seed=2))
    assert np.bincount(codes[rows]).tolist() == [147, 50, 3] and np.all(np.diff(rows) > 0)
    assert np.array_equal(novelty.balanced_sample(codes, 5000, seed=1), np.arange(len(codes)))


def test_knn_and_centroid_distances_match_a_direct_computation():
    rng = np.random.default_rng(0)
    reference = novelty.l2_normalised(rng.normal(size=(40, 5)))
    codes = np.arange(40) % 4
    queries = rng.normal(size=(7, 5))
    cosine = 1 - novelty.l2_normalised(queries) @ reference.T
    assert np.allclose(novelty.knn_distance(queries, reference, 3), np.sort(cosine, axis=1)[:, :3].mean(axis=1))
    centroids = np.stack([reference[codes == c].mean(axis=0) for c in range(4)])
    direct = 1 - novelty.l2_normalised(queries) @ novelty.l2_normalised(centroids).T
    assert np.allclose(novelty.centroid_distance(queries, novelty.class_centroids(reference, codes, 4)),
                       direct.min(axis=1), atol=1e-6)


def test_save_load_keeps_temperature_reference_and_every_rejection_score(open_set, tmp_path):
    model = open_set["model"]
    X_test, _ = open_set["test"]
    model.save(tmp_path / "model")
    with np.load(tmp_path / "model" / REFERENCE_FILE, allow_pickle=False) as saved:
        assert sorted(saved.files) == ["codes", "embeddings"]
    loaded = CellTypeAnnotator.load(tmp_path / "model")
    assert loaded.temperature == model.temperature and loaded.rejection == model.rejection
    assert np.array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))
    for option in model.rejection_options:
        assert np.array_equal(loaded.rejection_score(X_test, option), model.rejection_score(X_test, option)), option


def test_model_saved_without_reference_loads_and_says_what_it_lacks(open_set, tmp_path):
    model = open_set["model"]
    X_test, _ = open_set["test"]
    model.save(tmp_path / "model")
    (tmp_path / "model" / REFERENCE_FILE).unlink()
    loaded = CellTypeAnnotator.load(tmp_path / "model")
    assert np.array_equal(loaded.rejection_score(X_test, "energy"), model.rejection_score(X_test, "energy"))
    with pytest.raises(ValueError, match="knn_distance needs the training cells' reference embeddings"):
        loaded.rejection_score(X_test, "knn_distance")


def test_schema_offers_exactly_the_library_options_and_default():
    schema = yaml.safe_load((REPO_ROOT / "workflow/schemas/config.schema.yaml").read_text())
    rejection = schema["properties"]["finetune"]["properties"]["rejection"]
    assert tuple(rejection["enum"]) == novelty.REJECTIONS and rejection["default"] == novelty.DEFAULT_REJECTION
