"""The TabNet encoder: sparsemax masks, training on real PBMCs, save/load and its attention-mask gene rankings."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import cohen_kappa_score
from sklearn.model_selection import train_test_split

from sclabel import registry
from sclabel.annotator import load_annotator
from sclabel.explain import neural_top_genes
from sclabel.interpret import mask_top_genes
from sclabel.model import CellTypeAnnotator
from sclabel.nn.finetune import FinetuneSettings
from sclabel.nn.kmeans_pretrain import pretrain_kmeans
from sclabel.nn.tabnet import GhostBatchNorm, TabNetEncoder, sparsemax

SCHEMA = Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"
HPARAMS = {"n_d": 8, "n_a": 8, "n_steps": 3, "virtual_batch_size": 32}
SETTINGS = FinetuneSettings(epochs=12, batch_size=64, patience=4, lr=0.02)


def test_sparsemax_is_the_projection_onto_the_simplex():
    np.testing.assert_allclose(sparsemax(torch.tensor([[1.0, 0.5, -1.0], [2.0, 2.0, 2.0]])).numpy(),
                               [[0.75, 0.25, 0.0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    z = torch.randn(50, 40, generator=torch.Generator().manual_seed(0)) * 3
    p = sparsemax(z)
    assert torch.all(p >= 0) and torch.allclose(p.sum(1), torch.ones(50)) and (p == 0).float().mean() > 0.5
    assert torch.equal(p.argmax(1), z.argmax(1))


def test_ghost_batch_norm_normalises_each_virtual_batch_on_its_own():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    ghost, plain = GhostBatchNorm(4, 5, 0.1), torch.nn.BatchNorm1d(4, momentum=0.1)
    torch.testing.assert_close(ghost(x), torch.cat([plain(x[:5]), plain(x[5:])]))
    ghost.eval()
    torch.testing.assert_close(ghost(x), ghost.bn(x))


def test_forward_shapes_masks_per_step_and_sparsity_penalty():
    torch.manual_seed(0)
    encoder = TabNetEncoder(30, **HPARAMS, lambda_sparse=0.01)
    x = torch.log1p(torch.poisson(torch.full((64, 30), 0.8)))
    embedding, masks, contributions = encoder.steps(x)
    assert embedding.shape == (64, 8) and torch.all(embedding >= 0) and encoder.out_dim == 8
    assert len(masks) == 3 and all(mask.shape == (64, 30) for mask in masks)
    for mask in masks:
        assert torch.all(mask >= 0) and torch.allclose(mask.sum(1), torch.ones(64), atol=1e-5)
    assert [c.shape for c in contributions] == [(64,)] * 3
    torch.testing.assert_close(encoder(x), embedding)
    entropy = torch.stack([(-m * torch.log(m + 1e-15)).sum(1).mean() for m in masks]).mean()
    torch.testing.assert_close(encoder.penalty, 0.01 * entropy)
    encoder.eval()
    importance = encoder.mask_importance(x)
    assert importance.shape == (64, 30) and torch.allclose(importance.sum(1), torch.ones(64), atol=1e-5)


def test_config_defaults_are_the_encoders():
    properties = yaml.safe_load(SCHEMA.read_text())["properties"]["encoder"]["properties"]["tabnet"]["properties"]
    assert {key: spec["default"] for key, spec in properties.items()} == TabNetEncoder(10).hparams


@pytest.fixture(scope="module")
def pbmc(shared_data):
    """Symphony PBMCs (log1p CP10k, their 300 most variable genes) split 60/15/25 stratified by type, and a TabNet
    annotator trained on them at TabNet's learning rate."""
    adata = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    variance = np.asarray(adata.X.power(2).mean(0)).ravel() - np.asarray(adata.X.mean(0)).ravel() ** 2
    adata = adata[:, np.sort(np.argsort(-variance)[:300])].copy()
    y = adata.obs["cell_type"].astype(str).to_numpy()
    train, test = train_test_split(np.arange(adata.n_obs), test_size=0.25, stratify=y, random_state=0)
    train, val = train_test_split(train, test_size=0.2, stratify=y[train], random_state=0)
    model = CellTypeAnnotator(list(adata.var_names), sorted(set(y[train])), "tabnet", HPARAMS,
                              {"hidden_dims": [32], "dropout": 0.1},
                              config={"method": "tabnet"})
    history = model.train(adata.X[train], y[train], adata.X[val], y[val], SETTINGS, device="cpu", progress=False)
    return {"adata": adata, "model": model, "history": history, "test": (adata[test], y[test])}


def test_trains_on_the_shared_loop_far_above_chance(pbmc):
    test, y_test = pbmc["test"]
    predicted, _ = pbmc["model"].predict(test.X)
    assert cohen_kappa_score(y_test, predicted) > 0.5  # chance: 0 (this seed: 0.67)
    assert pbmc["history"]["best_val_macro_f1"] > 0.5 and pbmc["model"].temperature > 0


def test_save_load_round_trip_gives_identical_probabilities_and_scores(pbmc, tmp_path):
    model, (test, _) = pbmc["model"], pbmc["test"]
    model.save(tmp_path / "tabnet")
    loaded = load_annotator(tmp_path / "tabnet")
    assert isinstance(loaded, CellTypeAnnotator) and loaded.encoder_kind == "tabnet"
    np.testing.assert_array_equal(loaded.predict_proba(test.X), model.predict_proba(test.X))
    np.testing.assert_array_equal(loaded.rejection_score(test.X), model.rejection_score(test.X))


def test_attention_masks_rank_every_gene_per_predicted_type(pbmc, tmp_path):
    model, (test, _) = pbmc["model"], pbmc["test"]
    predicted, _ = model.predict(test.X)
    table = mask_top_genes(model, test.X, predicted, batch_size=50, progress=False)
    assert set(table["cell_type"]) == set(predicted)
    for cell_type, ranks in table.groupby("cell_type"):
        assert sorted(ranks["rank"]) == list(range(1, test.n_vars + 1))
        assert ranks["score"].sum() == pytest.approx(1.0, abs=1e-6)  # each cell's importance sums to 1
    cells = predicted == table["cell_type"].iloc[0]
    per_cell = model.encoder.eval().mask_importance(torch.from_numpy(test.X[cells].toarray())).detach().numpy()
    expected = dict(zip(test.var_names, per_cell.mean(0)))
    first = table[table["cell_type"] == table["cell_type"].iloc[0]]
    np.testing.assert_allclose(first["score"], [expected[g] for g in first["gene"]], rtol=1e-4, atol=1e-9)
    model.save(tmp_path / "tabnet")
    assert registry.get("tabnet").explains == "attention_masks"
    through_rule = neural_top_genes(str(tmp_path / "tabnet"), test, "test", registry.get("tabnet").explains)
    assert (through_rule["attribution"] == "attention_masks").all() and len(through_rule) == len(table)
    top = set(through_rule[(through_rule["cell_type"] == "B") & (through_rule["rank"] <= 20)]["gene"])
    assert top & {"CD79A", "CD79B", "MS4A1", "CD19"}  # B-cell markers


def test_kmeans_pretraining_trains_the_tabnet_embedding(pbmc):
    torch.manual_seed(0)
    encoder = TabNetEncoder(pbmc["adata"].n_vars, **HPARAMS)
    before = {key: value.clone() for key, value in encoder.state_dict().items()}
    history = pretrain_kmeans({"pbmc": pbmc["adata"].X[:300]}, encoder, cluster_sizes=[50], rounds=2, epochs=1,
                              batch_size=64, device="cpu", progress=False)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    assert not torch.equal(before["attentive.0.fc.weight"], encoder.state_dict()["attentive.0.fc.weight"])
