"""K-means pseudo-label pretraining on real PBMC data (donor A unlabelled + Symphony), shared genes."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from sclabel.nn.encoders import build_encoder
from sclabel.nn.kmeans_pretrain import ScaleSettings, n_clusters, pretrain_kmeans, pseudo_labels, randomized_pca
from sclabel.store import CellStore, write_store

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


@pytest.fixture(scope="module")
def stored(pbmc, tmp_path_factory):
    """The same two datasets as one on-disk cell store: (store, row positions per dataset)."""
    datasets, _ = pbmc
    names = [name for name, X in datasets.items() for _ in range(X.shape[0])]
    combined = ad.AnnData(X=sp.vstack(list(datasets.values()), format="csr"),
                          obs=pd.DataFrame({"dataset": names}, index=[f"c{i}" for i in range(len(names))]))
    path = tmp_path_factory.mktemp("store") / "combined.h5ad"
    write_store(combined, path, chunk_cells=700)
    with CellStore(path) as store:
        yield store, {name: np.flatnonzero(np.array(names) == name) for name in datasets}


def _pretrain(datasets, seed: int, epochs: int = 3, scale: ScaleSettings = ScaleSettings()):
    """Pretrain a fresh default MLP encoder; returns (history, encoder)."""
    torch.manual_seed(seed)
    encoder = build_encoder("mlp", next(iter(datasets.values())).shape[1], {})
    history = pretrain_kmeans(datasets, encoder, SIZES, rounds=2, epochs=epochs, batch_size=128, lr=1e-3,
                              seed=seed, device="cpu", progress=False, scale=scale)
    return history, encoder


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


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
    assert _same_weights(enc_a, enc_b)
    assert other["loss"] != first["loss"]


def test_below_the_thresholds_labels_are_those_of_pca_on_all_cells_and_kmeans(pbmc):
    datasets, _ = pbmc
    X = datasets["symphony"]
    pcs = PCA(n_components=50, svd_solver="arpack", random_state=0).fit_transform(X)
    full = {size: KMeans(n_clusters=n_clusters(X.shape[0], size), n_init=3, random_state=0).fit_predict(pcs)
            for size in SIZES}
    exact_fit = ScaleSettings(pca_cells=X.shape[0], minibatch_above=X.shape[0], chunk_cells=100)
    for scale in (ScaleSettings(), exact_fit):
        labels = pseudo_labels(X, SIZES, seed=0, scale=scale)
        assert all(np.array_equal(labels[size], full[size]) for size in SIZES)


def test_randomized_pca_of_sparse_cells_finds_the_leading_axes_of_the_exact_pca(pbmc):
    X = pbmc[0]["symphony"]
    exact = PCA(n_components=50, svd_solver="arpack", random_state=0).fit(X)
    mean, axes = randomized_pca(X, 50, seed=0)
    assert sp.issparse(X) and axes.shape == (50, X.shape[1])
    np.testing.assert_allclose(mean, exact.mean_, atol=1e-5)
    np.testing.assert_allclose(axes @ axes.T, np.eye(50), atol=1e-8)
    cosines = np.abs(np.sum(axes[:10] * exact.components_[:10], axis=1))
    assert np.all(cosines > 0.99), cosines


def test_above_the_thresholds_sampled_pca_and_minibatch_kmeans_still_follow_cell_types(pbmc):
    datasets, cell_types = pbmc
    X = datasets["symphony"]
    scale = ScaleSettings(pca_cells=400, minibatch_above=600, chunk_cells=250)
    labels = pseudo_labels(X, SIZES, seed=0, scale=scale)
    for size, y in labels.items():
        assert y.shape == (X.shape[0],) and len(np.unique(y)) == n_clusters(X.shape[0], size)
    assert adjusted_rand_score(cell_types, labels[200]) > 0.4, "coarse clusters should follow the real cell types"
    assert all(np.array_equal(labels[s], y) for s, y in pseudo_labels(X, SIZES, seed=0, scale=scale).items())
    full = pseudo_labels(X, SIZES, seed=0)
    assert not np.array_equal(labels[200], full[200]), "above the thresholds the bounded path must be taken"


def test_streaming_from_the_store_equals_the_in_memory_path(pbmc, stored):
    datasets, _ = pbmc
    store, rows = stored
    views = {name: store.view(rows[name]) for name in datasets}
    scale = ScaleSettings(chunk_cells=500, buffer_cells=300)  # several disk reads per epoch and per embedding
    in_memory, enc_a = _pretrain(datasets, seed=1, epochs=1)
    streamed, enc_b = _pretrain(views, seed=1, epochs=1, scale=scale)
    assert streamed == in_memory
    assert _same_weights(enc_a, enc_b)
