"""Majority voting over an over-clustering of the query, as CellTypist's ``majority_voting`` does it.

The query's own log-normalised cells are over-clustered (highly variable genes, unit variance, PCA, kNN graph, Leiden
at CellTypist's size-scaled resolution) and every cell of a cluster takes the cluster's commonest per-cell label.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel import qc

# CellTypist's over-clustering settings (celltypist.classifier.Classifier._construct_neighbor_graph)
MIN_CELLS_PER_GENE = 5
N_TOP_GENES = 2500
MAX_SCALED = 10.0
N_PCS = 50
N_NEIGHBORS = 10
# CellTypist's Leiden resolution by query size: (fewer cells than, resolution); 30 above the last
RESOLUTIONS = ((5_000, 5.0), (20_000, 10.0), (40_000, 15.0), (100_000, 20.0), (200_000, 25.0))
LARGEST_RESOLUTION = 30.0


def leiden_resolution(n_cells: int) -> float:
    """CellTypist's over-clustering resolution for a query of ``n_cells`` cells."""
    return next((resolution for bound, resolution in RESOLUTIONS if n_cells < bound), LARGEST_RESOLUTION)


def principal_components(X: sp.spmatrix, seed: int) -> np.ndarray:
    """Principal components of the rows of a log-normalised cells x genes matrix, as CellTypist computes them.

    Genes in at least 5 cells, the 2,500 most variable, scaled to unit variance and clipped at 10, then up to 50
    components. Unlike CellTypist the genes are not centred before clipping, so the matrix stays sparse (scanpy's
    sparse PCA centres implicitly).
    """
    import scanpy as sc

    adata = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32))
    sc.pp.filter_genes(adata, min_cells=MIN_CELLS_PER_GENE)
    sc.pp.highly_variable_genes(adata, n_top_genes=min(N_TOP_GENES, adata.n_vars), subset=True)
    sc.pp.scale(adata, zero_center=False, max_value=MAX_SCALED)
    sc.pp.pca(adata, n_comps=min(N_PCS, min(adata.shape) - 1), random_state=seed)
    return adata.obsm["X_pca"]


def over_cluster(X: sp.spmatrix, seed: int) -> np.ndarray:
    """Leiden cluster id (a string) of each row of a log-normalised cells x genes matrix.

    As CellTypist: ``principal_components``, 10 neighbours, Leiden (igraph, 2 iterations).
    """
    import igraph  # noqa: F401 (scanpy's Leiden, igraph flavour: every env that annotates needs it)
    import scanpy as sc

    adata = ad.AnnData(obsm={"X_pca": principal_components(X, seed)}, shape=(X.shape[0], 0))
    sc.pp.neighbors(adata, n_neighbors=min(N_NEIGHBORS, adata.n_obs - 1), use_rep="X_pca", random_state=seed)
    sc.tl.leiden(adata, resolution=leiden_resolution(adata.n_obs), flavor="igraph", n_iterations=2, directed=False,
                 random_state=seed)
    return adata.obs["leiden"].to_numpy(dtype=str)


def majority_vote(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Each cell's cluster's commonest label (ties: the label first in sorted order)."""
    votes = pd.crosstab(np.asarray(labels, dtype=str), np.asarray(clusters, dtype=str))
    return votes.idxmax(axis=0).loc[np.asarray(clusters, dtype=str)].to_numpy(dtype=str)


def lognormalised(query: ad.AnnData, target_sum: float, chunk_cells: int) -> sp.csr_matrix:
    """The whole query log-normalised as the annotation sees it, ``chunk_cells`` cells at a time."""
    return sp.vstack([qc.normalise(query[start:start + chunk_cells].copy(), target_sum).X
                      for start in range(0, query.n_obs, chunk_cells)], format="csr")


def vote_query(query: ad.AnnData, labels: np.ndarray, target_sum: float, chunk_cells: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(Leiden cluster, cluster's majority label) of each cell of a raw query given its per-cell labels."""
    clusters = over_cluster(lognormalised(query, target_sum, chunk_cells), seed)
    return clusters, majority_vote(labels, clusters)
