"""Majority voting over a Leiden over-clustering of the query (CellTypist's majority_voting)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from sclabel import voting


@pytest.fixture(scope="module")
def symphony(shared_data) -> ad.AnnData:
    """1,200 log-normalised PBMCs with their Symphony labels."""
    return ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")


@pytest.fixture(scope="module")
def clusters(symphony) -> np.ndarray:
    return voting.over_cluster(symphony.X, seed=0)


@pytest.mark.parametrize(("n_cells", "resolution"), [(1_200, 5), (4_999, 5), (5_000, 10), (39_999, 15),
                                                     (100_000, 25), (10**6, 30)])
def test_resolution_follows_celltypists_rule(n_cells, resolution):
    assert voting.leiden_resolution(n_cells) == resolution


def test_over_clustering_splits_the_query_finer_than_its_cell_types(symphony, clusters):
    assert clusters.shape == (symphony.n_obs,)
    sizes = pd.Series(clusters).value_counts()
    assert len(sizes) > symphony.obs["cell_type"].nunique()
    # an over-clustering still groups: most clusters hold several cells
    assert sizes.median() >= 5


def test_over_clustering_is_seeded(symphony, clusters):
    assert (voting.over_cluster(symphony.X, seed=0) == clusters).all()


def test_every_cell_carries_its_clusters_majority_label(symphony, clusters):
    labels = symphony.obs["cell_type"].astype(str).to_numpy()
    voted = voting.majority_vote(labels, clusters)
    frame = pd.DataFrame({"cluster": clusters, "label": labels, "voted": voted})
    assert (frame.groupby("cluster")["voted"].nunique() == 1).all()
    counts = frame.groupby(["cluster", "label"]).size()
    top = counts.groupby(level="cluster").max()
    voted_count = counts.reindex(pd.MultiIndex.from_frame(frame[["cluster", "voted"]])).to_numpy()
    # each cell's voted label is the (or a tied) commonest label of its cluster
    assert (voted_count == frame["cluster"].map(top).to_numpy()).all()
    # ties aside, that is the pandas groupby majority
    majority = frame.groupby("cluster")["label"].agg(lambda cells: cells.value_counts().idxmax())
    untied = (counts.groupby(level="cluster").apply(lambda c: (c == c.max()).sum()) == 1)
    cells = frame["cluster"].map(untied).to_numpy()
    assert cells.mean() > 0.5
    assert (frame["voted"][cells] == frame["cluster"].map(majority)[cells]).all()


def test_voting_recovers_most_randomly_flipped_labels(symphony, clusters):
    truth = symphony.obs["cell_type"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    flipped = rng.random(truth.size) < 0.1
    labels = truth.copy()
    labels[flipped] = rng.choice(np.unique(truth), size=flipped.sum())
    changed = labels != truth
    assert changed.sum() > 50
    voted = voting.majority_vote(labels, clusters)
    recovered = (voted[changed] == truth[changed]).mean()
    # the clusters carry the labels: voting fixes most corrupted cells, and far more than a random label would
    assert recovered > 0.7
    assert recovered > 3 * (1 / np.unique(truth).size)
    # and barely disturbs the cells left intact beyond what voting the true labels already does
    assert (voted[~changed] == truth[~changed]).mean() >= (voting.majority_vote(truth, clusters) == truth).mean() - 0.05
