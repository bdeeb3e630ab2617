"""K-means pseudo-label pretraining on real PBMC data (donor A unlabelled + Symphony), shared genes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scanpy as sc
import torch
from sklearn.metrics import adjusted_rand_score

from sclabel.nn.encoders import build_encoder
from sclabel.nn.kmeans_pretrain import pretrain_kmeans, pseudo_labels

SIZES = (50, 100, 200)


@pytest.fixture(scope="module")
def pbmc(shared_data):
    """Log1p CP10k donor A and Symphony PBMCs on 500 shared highly variable genes, plus Symphony labels."""
    donor = sc.read_h5ad(shared_data / "pbmc_donorA_unlabelled.h5ad")
    sc.pp.normalize_total(donor, target_sum=1e4)
    sc.pp.log1p(donor)
    symphony = sc.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    donor = donor[:, symphony.var_names.intersection(donor.var_names)].copy()
    sc.pp.highly_variable_genes(donor, n_top_genes=500, flavor="seurat")
    genes = donor.var_names[donor.var["highly_variable"]]
    datasets = {"donorA": donor[:, genes].X, "symphony": symphony[:, genes].X}
    return datasets, symphony.obs["cell_type"].to_numpy()


def _pretrain(datasets, seed: int, epochs: int = 3):
    """Pretrain a fresh default MLP encoder; returns (history, encoder)."""
    torch.manual_seed(seed)
    encoder = build_encoder("mlp", next(iter(datasets.values())).shape[1], {})
    history = pretrain_kmeans(datasets, encoder, SIZES, rounds=2, epochs=epochs, batch_size=128, lr=1e-3,
                              seed=seed, device="cpu", progress=False)
    return history, encoder


def test_pseudo_labels_have_requested_granularities(pbmc):
    datasets, cell_types = pbmc
    for X in datasets.values():
        labels = pseudo_labels(X, SIZES, seed=0)
        assert sorted(labels) == list(SIZES)
        for size, y in labels.items():
            assert y.shape == (X.shape[0],)
            assert len(np.unique(y)) == max(2, round(X.shape[0] / size))
    coarse = pseudo_labels(datasets["symphony"], (200,), seed=0)[200]
    assert adjusted_rand_score(cell_types, coarse) > 0.4, "coarse clusters should follow the real cell types"


def test_pretraining_loss_falls_and_every_step_uses_every_dataset(pbmc):
    datasets, _ = pbmc
    history, _ = _pretrain(datasets, seed=0)
    assert history["round"] == [1, 1, 1, 2, 2, 2]
    for round_no in (1, 2):
        losses = [loss for r, loss in zip(history["round"], history["loss"]) if r == round_no]
        assert losses[-1] < 0.8 * losses[0]
    assert history["loss"][-1] < history["loss"][0]
    n_max = max(X.shape[0] for X in datasets.values())
    assert history["steps"] == [math.ceil(n_max / 128)] * 6
    for name, X in datasets.items():
        assert all(loss > 0 for loss in history["dataset_loss"][name])
        assert history["cells_seen"][name] == [steps * 128 for steps in history["steps"]]
    assert history["cells_seen"]["symphony"][0] > datasets["symphony"].shape[0], "smaller set is cycled"
    expected_k = {name: {size: max(2, round(X.shape[0] / size)) for size in SIZES} for name, X in datasets.items()}
    assert history["k"] == [expected_k, expected_k]


def test_same_seed_gives_identical_history_and_weights(pbmc):
    datasets, _ = pbmc
    first, enc_a = _pretrain(datasets, seed=3, epochs=1)
    second, enc_b = _pretrain(datasets, seed=3, epochs=1)
    other, _ = _pretrain(datasets, seed=4, epochs=1)
    assert first == second
    assert all(torch.equal(a, b) for a, b in zip(enc_a.state_dict().values(), enc_b.state_dict().values()))
    assert other["loss"] != first["loss"]
