"""Fine-tuning and prediction streamed from the on-disk cell store equal the in-memory path; inference batch sizes."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import train_test_split

from sclabel import io, splits, training
from sclabel.annotator import LabelledCells, RunContext, load_annotator
from sclabel.baselines import BaselineAnnotator
from sclabel.embedding_baselines import EmbeddingBaselineAnnotator
from sclabel.evaluation import selections_table
from sclabel.method_stage import method_stage
from sclabel.model import CellTypeAnnotator
from sclabel.nn.encoders import MLPEncoder, predict_batches
from sclabel.nn.finetune import ClassifierHead, FinetuneSettings, fit_classifier
from sclabel.predictions import predictions_table, write_predictions
from sclabel.store import CellStore, write_store

SETTINGS = FinetuneSettings(epochs=3, batch_size=64, patience=5)


@pytest.fixture(scope="module")
def symphony(shared_data, tmp_path_factory):
    """Symphony PBMCs in memory and as a cell store, with a stratified train / val / test split of row positions."""
    adata = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    path = tmp_path_factory.mktemp("store") / "symphony.h5ad"
    write_store(adata, path, chunk_cells=97)
    y = adata.obs["cell_type"].astype(str).to_numpy()
    train, test = train_test_split(np.arange(adata.n_obs), test_size=0.25, stratify=y, random_state=0)
    train, val = train_test_split(train, test_size=0.2, stratify=y[train], random_state=0)
    return {"adata": adata, "path": path, "y": y, "train": train, "val": val, "test": test}


def _model(genes, labels, **kwargs) -> CellTypeAnnotator:
    return CellTypeAnnotator(genes, labels, "mlp", {}, {}, **kwargs)


def _fit(data, X, settings: FinetuneSettings = SETTINGS, **kwargs) -> tuple[CellTypeAnnotator, dict]:
    """Fit an MLP annotator on rows train / val of ``X`` (an in-memory matrix or a store's view)."""
    model = _model(list(data["adata"].var_names), sorted(set(data["y"])))
    y = data["y"]
    history = model.train(X(data["train"]), y[data["train"]], X(data["val"]), y[data["val"]], settings, seed=3,
                          device="cpu", progress=False, **kwargs)
    return model, history


@pytest.mark.parametrize("imbalance, augment", [("sampler", 0.0), ("none", 0.0), ("sampler", 0.5)])
def test_training_from_the_store_equals_training_in_memory(symphony, imbalance, augment):
    settings = replace(SETTINGS, imbalance=imbalance, augment=augment)  # augmentation partners: batch mates
    memory, memory_history = _fit(symphony, lambda rows: symphony["adata"].X[rows], settings)
    with CellStore(symphony["path"]) as store:
        # a buffer smaller than two batches: every disk read holds one batch
        streamed, streamed_history = _fit(symphony, store.view, settings, buffer_cells=100)
        test_view = store.view(symphony["test"])
        assert np.array_equal(streamed.predict_proba(test_view), memory.predict_proba(test_view))
        assert np.array_equal(memory.predict_proba(symphony["adata"].X[symphony["test"]]),
                              memory.predict_proba(test_view))
    assert streamed_history == memory_history
    for key, value in memory.network.state_dict().items():
        assert torch.equal(streamed.network.state_dict()[key], value), key


class ForwardCounter:
    """Rows of each forward call of a module made in eval mode (inference), via a forward hook."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.sizes: list[int] = []
        self.handle = module.register_forward_hook(self._record)

    def _record(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not module.training:
            self.sizes.append(inputs[0].shape[0])


@pytest.mark.parametrize("kind, hparams", [("mlp", {}), ("transformer", {"dim": 8, "depth": 1, "heads": 2,
                                                                            "nb_features": 8})])
def test_inference_uses_the_set_batch_size(symphony, kind, hparams, tmp_path):
    genes = list(symphony["adata"].var_names[:60])
    model = CellTypeAnnotator(genes, ["a", "b"], kind, hparams, {}, inference_batch_size=7)
    X = symphony["adata"][:45, genes].X
    counter = ForwardCounter(model.encoder)
    model.predict_proba(X)
    model.embed(X)
    assert len(counter.sizes) == 2 * math.ceil(45 / 7) and max(counter.sizes) <= 7 and sum(counter.sizes) == 90
    model.save(tmp_path / "model")
    assert CellTypeAnnotator.load(tmp_path / "model").inference_batch_size == 7


def test_validation_and_prediction_use_the_fine_tuning_batch_size(symphony, tmp_path):
    settings = replace(SETTINGS, epochs=2, batch_size=50)
    labels = sorted(set(symphony["y"]))
    X, y = symphony["adata"].X, _model(["g"], labels).encode_labels(symphony["y"])
    encoder = MLPEncoder(X.shape[1], out_dim=16)
    counter = ForwardCounter(encoder)
    fit_classifier(encoder, ClassifierHead(16, len(labels)), X[symphony["train"]], y[symphony["train"]],
                   X[symphony["val"]], y[symphony["val"]], settings, device="cpu", progress=False)
    assert len(counter.sizes) == 2 * math.ceil(len(symphony["val"]) / 50) and max(counter.sizes) <= 50

    model = _model(list(symphony["adata"].var_names), labels)
    model.train(X[symphony["train"]], symphony["y"][symphony["train"]], X[symphony["val"]],
                symphony["y"][symphony["val"]], settings, device="cpu", progress=False)
    counter = ForwardCounter(model.encoder)
    model.predict_proba(X[symphony["test"]])
    assert len(counter.sizes) == math.ceil(len(symphony["test"]) / 50) and max(counter.sizes) <= 50
    model.save(tmp_path / "model")
    assert CellTypeAnnotator.load(tmp_path / "model").inference_batch_size == 50


def test_predictions_written_in_parts_equal_one_table(tmp_path):
    rng = np.random.default_rng(0)
    classes = np.array(["B", "NK", "T"])
    probabilities = rng.dirichlet(np.ones(3), size=25)
    cells = pd.Index([f"c{i}" for i in range(25)])
    truth = rng.choice(classes, 25)
    rejection, abstained = rng.random(25), rng.random(25) > 0.8
    io.write_tsv(predictions_table(cells, truth, probabilities, classes, rejection, abstained), tmp_path / "whole.tsv")
    parts = [(cells[i:i + 10], truth[i:i + 10], probabilities[i:i + 10], rejection[i:i + 10], abstained[i:i + 10])
             for i in range(0, 25, 10)]
    write_predictions(iter(parts), classes, str(tmp_path / "parts.tsv"))
    assert (tmp_path / "parts.tsv").read_bytes() == (tmp_path / "whole.tsv").read_bytes()
    write_predictions(iter([]), classes, str(tmp_path / "none.tsv"))
    assert list(pd.read_csv(tmp_path / "none.tsv", sep="\t").columns) == list(
        pd.read_csv(tmp_path / "whole.tsv", sep="\t").columns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["none.tsv", "parts.tsv", "whole.tsv"]


def _finetune_stage(symphony, workdir: Path, store: dict, **extra) -> pd.DataFrame:
    """The workflow's fine-tuning stage on the store's cells; returns its predictions table."""
    adata, roles = symphony["adata"], np.full(symphony["adata"].n_obs, splits.TRAIN, dtype=object)
    roles[symphony["val"]], roles[symphony["test"]] = splits.VAL, splits.TEST
    table = pd.DataFrame({"cv0": roles}, index=pd.Index(adata.obs_names, name="cell_id"))
    io.write_tsv(table.sample(frac=1, random_state=0), workdir / "splits.tsv", index=True)  # not in store order
    settings = {"epochs": 2, "batch_size": 64, "patience": 5, "head_hidden_dims": [32], "dropout": 0.5,
                "seed": 0, "device": "cpu", **extra}
    training.finetune_stage("mlp", {}, settings, {"normalisation": "log1p_cp10k"}, str(symphony["path"]),
                            str(workdir / "splits.tsv"), "cv0", None, str(workdir / "checkpoints"),
                            str(workdir / "model"), str(workdir / "pred.tsv"), store)
    return pd.read_csv(workdir / "pred.tsv", sep="\t")


def test_finetune_stage_predicts_the_test_cells_alike_for_any_chunking(symphony, tmp_path):
    small = _finetune_stage(symphony, tmp_path / "small", {"chunk_cells": 37, "buffer_cells": 100})
    large = _finetune_stage(symphony, tmp_path / "large", {"chunk_cells": 10_000, "buffer_cells": 32_768})
    test_ids = symphony["adata"].obs_names[symphony["test"]]
    assert sorted(small["cell_id"]) == sorted(test_ids) and small["cell_id"].is_unique
    assert (small["true"].to_numpy() == symphony["adata"].obs.loc[small["cell_id"], "cell_type"].astype(str)).all()
    # up to float rounding of differently sized batches, scaled by 1 / the fitted temperature (about 5 here); the
    # rejection score is a float32 cosine distance (rounding ~1e-7 of values ~1)
    pd.testing.assert_frame_equal(small, large, check_exact=False, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "small" / "checkpoints").exists()


def test_a_list_of_loss_modes_keeps_the_one_with_the_best_validation_macro_f1(symphony, tmp_path):
    from sklearn.metrics import f1_score

    store, modes = {"chunk_cells": 10_000, "buffer_cells": 32_768}, ["sampler", "none"]
    chosen = _finetune_stage(symphony, tmp_path / "both", store, imbalance=modes)
    selection = load_annotator(tmp_path / "both" / "model").config["selection"]
    val = symphony["adata"][symphony["val"]]
    truth = val.obs["cell_type"].astype(str).to_numpy()
    by_hand, alone = {}, {}
    for mode in modes:
        alone[mode] = _finetune_stage(symphony, tmp_path / mode, store, imbalance=mode)
        model = load_annotator(tmp_path / mode / "model")
        predicted = model.classes[model.predict_proba(val.X).argmax(axis=1)]
        by_hand[mode] = f1_score(truth, predicted, labels=np.unique(truth), average="macro", zero_division=0)
    assert selection["scores"] == pytest.approx(by_hand)
    best = max(modes, key=lambda mode: (by_hand[mode], -modes.index(mode)))
    assert selection["imbalance"] == best
    row = selections_table([str(tmp_path / "both" / "model")]).iloc[0]  # the choice reaches selections.tsv
    assert (row["setting"], row["chosen"]) == ("imbalance", best)
    pd.testing.assert_frame_equal(chosen, alone[best])


def test_embedding_baseline_on_the_split_cells_in_chunks_matches_the_whole_matrix_path(symphony, tmp_path):
    adata = symphony["adata"]
    torch.manual_seed(0)
    encoder = MLPEncoder(adata.n_vars, out_dim=16).eval()
    training.save_encoder(encoder, "mlp", list(adata.var_names), str(tmp_path / "encoder.pt"))
    roles = pd.Series(np.nan, index=pd.Index(adata.obs_names, name="cell_id"), dtype=object)
    roles.iloc[symphony["train"]], roles.iloc[symphony["test"]] = splits.TRAIN, splits.TEST
    roles.iloc[symphony["val"]] = splits.VAL
    io.write_tsv(roles.rename("cv0").to_frame(), tmp_path / "splits.tsv", index=True)
    settings = {"encoder_file": str(tmp_path / "encoder.pt"), "batch_size": 50}
    method_stage("knn_embedding", settings, 0, str(symphony["path"]), str(tmp_path / "splits.tsv"), "cv0",
                 str(tmp_path / "model"), str(tmp_path / "streamed.tsv"), RunContext(chunk_cells=37, buffer_cells=90))
    # the whole matrix in memory, embedded at once, the estimator fitted on the training cells' embedding
    embedding, y = predict_batches(encoder, adata.X), symphony["y"]
    fit = symphony["train"]
    memory = BaselineAnnotator("knn_embedding", {}, 0).fit(LabelledCells(embedding[fit], y[fit]))
    streamed = pd.read_csv(tmp_path / "streamed.tsv", sep="\t").set_index("cell_id")
    test_ids = adata.obs_names[symphony["test"]]
    assert sorted(streamed.index) == sorted(test_ids)
    expected = memory.predict_proba(embedding[symphony["test"]])
    proba = streamed.loc[test_ids, [f"proba:{c}" for c in memory.classes]].to_numpy()
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-6)
    # the saved model carries its encoder (weights only) and predicts expression on its own, as fitted
    loaded = load_annotator(tmp_path / "model")
    assert isinstance(loaded, EmbeddingBaselineAnnotator)
    assert set(torch.load(tmp_path / "model" / "encoder.pt", weights_only=True)) == {"kind", "hparams", "genes",
                                                                                     "state"}
    X_test = adata.X[symphony["test"]]
    np.testing.assert_allclose(loaded.embed(X_test), embedding[symphony["test"]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loaded.predict_proba(X_test), expected, rtol=1e-5, atol=1e-6)
