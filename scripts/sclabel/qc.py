"""Quality control, CP10k + natural-log1p normalisation and gene harmonisation across datasets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.errors import InputError


def detected_genes_per_cell(X: sp.csr_matrix) -> np.ndarray:
    """Number of genes with a non-zero value in each cell."""
    return np.diff(X.indptr) if sp.isspmatrix_csr(X) else np.asarray((X > 0).sum(axis=1)).ravel()


def counts_scale(adata: ad.AnnData) -> sp.csr_matrix:
    """The matrix on a count-like scale (expm1 of log values), for library sizes and mito fractions."""
    X = sp.csr_matrix(adata.X)
    if adata.uns["sclabel"]["values"] == "log1p":
        X = X.copy()
        X.data = np.expm1(X.data)
    return X


def mito_percent(adata: ad.AnnData, prefix: str) -> np.ndarray:
    """Percent of each cell's counts on mitochondrial genes (names starting with ``prefix``, case-insensitive)."""
    X = counts_scale(adata)
    mito = adata.var_names.str.upper().str.startswith(prefix.upper())
    total = np.asarray(X.sum(axis=1)).ravel()
    mito_total = np.asarray(X[:, np.flatnonzero(mito)].sum(axis=1)).ravel() if mito.any() else np.zeros_like(total)
    return np.divide(100.0 * mito_total, total, out=np.zeros_like(total), where=total > 0)


def qc_filter(adata: ad.AnnData, settings: Mapping[str, Any], source: str) -> tuple[ad.AnnData, pd.DataFrame]:
    """Filter cells (min genes, max mito %) then genes (min cells); returns the kept data and a table of removals."""
    dataset = str(adata.obs["dataset"].iloc[0]) if adata.n_obs else source
    rows: list[dict[str, Any]] = []

    def record(step: str, unit: str, threshold: float, before: int, after: int) -> None:
        rows.append({"dataset": dataset, "step": step, "unit": unit, "threshold": threshold,
                     "before": before, "removed": before - after, "remaining": after})

    n_genes = detected_genes_per_cell(sp.csr_matrix(adata.X))
    keep = n_genes >= settings["min_genes"]
    record("min_genes", "cells", settings["min_genes"], adata.n_obs, int(keep.sum()))
    pct = mito_percent(adata, settings["mito_prefix"])
    keep_mito = keep & (pct <= settings["max_pct_mito"])
    record("max_pct_mito", "cells", settings["max_pct_mito"], int(keep.sum()), int(keep_mito.sum()))
    adata = adata[keep_mito].copy()
    if adata.n_obs == 0:
        raise InputError(source, "qc", "no cells left after QC (min_genes / max_pct_mito removed all)",
                         "lower qc.min_genes or raise qc.max_pct_mito in the config")
    cells_per_gene = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    keep_genes = cells_per_gene >= settings["min_cells"]
    record("min_cells", "genes", settings["min_cells"], adata.n_vars, int(keep_genes.sum()))
    adata = adata[:, keep_genes].copy()
    if adata.n_vars == 0:
        raise InputError(source, "qc", "no genes left after QC (min_cells removed all)",
                         "lower qc.min_cells in the config")
    adata.obs["n_genes"] = detected_genes_per_cell(adata.X)
    adata.obs["pct_mito"] = pct[keep_mito]
    return adata, pd.DataFrame(rows)


def normalise(adata: ad.AnnData, target_sum: float) -> ad.AnnData:
    """CP10k + natural log1p via scanpy for count data; log1p input is kept as given. Counts go to layers['counts']."""
    import scanpy as sc

    if adata.uns["sclabel"]["values"] == "counts":
        adata.layers["counts"] = adata.X.copy()
        sc.pp.normalize_total(adata, target_sum=target_sum)
        sc.pp.log1p(adata)
        adata.uns.pop("log1p", None)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.uns["sclabel"] = {**adata.uns["sclabel"], "normalised": "log1p_cp10k"}
    return adata


def harmonise_gene_names(names: pd.Index, case: str) -> pd.Index:
    """Gene symbols with whitespace stripped and, when ``case`` is 'upper', upper-cased (mouse ↔ human style)."""
    names = names.astype(str).str.strip()
    return names.str.upper() if case == "upper" else names


def gene_selector(genes: Sequence[str], targets: Sequence[str]) -> tuple[sp.csr_matrix, int]:
    """Sparse 0/1 matrix mapping columns named ``genes`` onto ``targets`` (first match wins), and how many matched."""
    position: dict[str, int] = {}
    for j, gene in enumerate(genes):
        position.setdefault(str(gene), j)
    pairs = np.array([(position[g], i) for i, g in enumerate(targets) if g in position], dtype=np.int64).reshape(-1, 2)
    selector = sp.csr_matrix((np.ones(len(pairs), dtype=np.float32), (pairs[:, 0], pairs[:, 1])),
                             shape=(len(genes), len(targets)))
    return selector, len(pairs)


def zero_filled(adata: ad.AnnData, genes: Sequence[str]) -> ad.AnnData:
    """``adata`` restricted and reordered to ``genes``, zero columns for genes it lacks (stays sparse)."""
    selector, _ = gene_selector(adata.var_names, genes)
    layers = {key: sp.csr_matrix(layer @ selector) for key, layer in adata.layers.items()}
    return ad.AnnData(X=sp.csr_matrix(adata.X @ selector), obs=adata.obs, var=pd.DataFrame(index=list(genes)),
                      layers=layers, uns=adata.uns)


def combined_genes(datasets: Sequence[ad.AnnData], labelled: Sequence[ad.AnnData], join: str) -> list[str]:
    """Genes of the combined data, in the first dataset's order: shared by all, by the labelled ones, or all."""
    pool = labelled if join == "labelled" else datasets
    if join == "outer":
        return list(dict.fromkeys(g for a in datasets for g in a.var_names))
    shared = set.intersection(*(set(a.var_names) for a in pool))
    return [g for g in pool[0].var_names if g in shared]


def renormalised(X: sp.spmatrix, target_sum: float, dtype: type = np.float32) -> sp.csr_matrix:
    """Natural-log CP10k values rescaled per cell so that each cell's expm1 sums to ``target_sum`` over these genes.

    Puts studies that kept different gene subsets or used another log-normalisation on one per-cell scale; a cell
    with no expression on these genes stays zero. Sparse in, sparse out.
    """
    linear = sp.csr_matrix(X, dtype=dtype, copy=True)
    np.expm1(linear.data, out=linear.data)
    totals = np.asarray(linear.sum(axis=1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    linear = sp.csr_matrix(sp.diags(scale.astype(dtype)) @ linear)
    np.log1p(linear.data, out=linear.data)
    return linear


def combine(datasets: Sequence[ad.AnnData], join: str, case: str, names: Sequence[str],
            renormalise_to: float | None = None) -> tuple[ad.AnnData, pd.DataFrame]:
    """Concatenate normalised datasets on shared genes (``inner``), all genes (``outer``) or the labelled ones' genes.

    With ``renormalise_to`` every cell is rescaled to that total over the combined genes (see ``renormalised``).
    """
    renamed = []
    for adata in datasets:
        adata = adata.copy()
        adata.var_names = harmonise_gene_names(adata.var_names, case)
        adata.var_names_make_unique()
        renamed.append(adata)
    labelled = [a for a in renamed if "cell_type" in a.obs] or renamed
    genes = combined_genes(renamed, labelled, join)
    if not genes:
        raise InputError(", ".join(names), "var_names", "the datasets share no gene names",
                         "check gene naming (symbols vs Ensembl ids) or set harmonise.case: upper for mouse/human")
    # every dataset is put on the same genes first, so obs columns (labels!) are joined as a union
    combined = ad.concat([zero_filled(a, genes) for a in renamed], join="outer", merge="same", index_unique=None)
    if combined.obs_names.duplicated().any():
        combined.obs_names = [f"{d}:{c}" for d, c in zip(combined.obs["dataset"], combined.obs_names)]
    combined.X = sp.csr_matrix(combined.X, dtype=np.float32)
    if renormalise_to is not None:
        combined.X = renormalised(combined.X, renormalise_to)
    report = pd.DataFrame({
        "dataset": list(names),
        "cells": [a.n_obs for a in renamed],
        "genes": [a.n_vars for a in renamed],
        "genes_in_combined": [len(set(a.var_names) & set(combined.var_names)) for a in renamed],
        "genes_zero_filled": [combined.n_vars - len(set(a.var_names) & set(combined.var_names)) for a in renamed],
    })
    combined.uns["sclabel"] = {"gene_join": join, "n_genes": len(genes), "datasets": list(names),
                               "renormalised_to": renormalise_to or 0}
    return combined, report
