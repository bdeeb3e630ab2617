"""Quality control, CP10k + natural-log1p normalisation and gene harmonisation across datasets."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel import io
from sclabel.datasets import subset_obs
from sclabel.errors import InputError
from sclabel.store import DEFAULT_CHUNK_CELLS, CellStore, Matrix, RowWriter

log = logging.getLogger("sclabel")


NORMALISED = "log1p_cp10k"


def detected_genes_per_cell(X: sp.csr_matrix) -> np.ndarray:
    """Number of genes with a non-zero value in each cell."""
    return np.diff(X.indptr) if sp.isspmatrix_csr(X) else np.asarray((X > 0).sum(axis=1)).ravel()


def cells_per_gene(X: sp.spmatrix) -> np.ndarray:
    """Number of cells with a positive value for each gene."""
    return np.asarray((X > 0).sum(axis=0)).ravel()


def counts_scale(X: sp.spmatrix, values: str) -> sp.csr_matrix:
    """The matrix on a count-like scale (expm1 of log values), for library sizes and mito fractions."""
    X = sp.csr_matrix(X)
    if values == "log1p":
        X = X.copy()
        X.data = np.expm1(X.data)
    return X


def mito_genes(var_names: pd.Index, prefix: str) -> np.ndarray:
    """Mask of mitochondrial genes: names starting with ``prefix``, case-insensitive."""
    return np.asarray(var_names.str.upper().str.startswith(prefix.upper()), dtype=bool)


def percent_on(X: sp.csr_matrix, genes: np.ndarray) -> np.ndarray:
    """Percent of each cell's total (count scale) on the genes of the mask ``genes``."""
    total = np.asarray(X.sum(axis=1)).ravel()
    part = np.asarray(X[:, np.flatnonzero(genes)].sum(axis=1)).ravel() if genes.any() else np.zeros_like(total)
    return np.divide(100.0 * part, total, out=np.zeros_like(total), where=total > 0)


def mito_percent(adata: ad.AnnData, prefix: str) -> np.ndarray:
    """Percent of each cell's counts on mitochondrial genes (names starting with ``prefix``, case-insensitive)."""
    return percent_on(counts_scale(adata.X, adata.uns["sclabel"]["values"]), mito_genes(adata.var_names, prefix))


def cell_metrics(X: sp.spmatrix, mito: np.ndarray, values: str) -> tuple[np.ndarray, np.ndarray]:
    """(detected genes, mito %) of each cell of ``X`` (rows are independent, so chunks give the same values)."""
    return detected_genes_per_cell(sp.csr_matrix(X)), percent_on(counts_scale(X, values), mito)


def cell_filters(n_genes: np.ndarray, pct_mito: np.ndarray, settings: Mapping[str, Any]) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """(cells passing min_genes, cells passing min_genes and max_pct_mito)."""
    enough = n_genes >= settings["min_genes"]
    return enough, enough & (pct_mito <= settings["max_pct_mito"])


def removal_table(dataset: str, settings: Mapping[str, Any], cells: int, enough: int, kept: int, genes: int,
                  kept_genes: int) -> pd.DataFrame:
    """What each QC step removed: cells by min_genes then max_pct_mito, genes by min_cells."""
    steps = [("min_genes", "cells", cells, enough), ("max_pct_mito", "cells", enough, kept),
             ("min_cells", "genes", genes, kept_genes)]
    return pd.DataFrame([{"dataset": dataset, "step": step, "unit": unit, "threshold": settings[step],
                          "before": before, "removed": before - after, "remaining": after}
                         for step, unit, before, after in steps])


def check_left(source: str, cells: int, genes: int | None = None) -> None:
    """Refuse a QC result without cells (or, once genes are filtered, without genes)."""
    if cells == 0:
        raise InputError(source, "qc", "no cells left after QC (min_genes / max_pct_mito removed all)",
                         "lower qc.min_genes or raise qc.max_pct_mito in the config")
    if genes == 0:
        raise InputError(source, "qc", "no genes left after QC (min_cells removed all)",
                         "lower qc.min_cells in the config")


def qc_filter(adata: ad.AnnData, settings: Mapping[str, Any], source: str) -> tuple[ad.AnnData, pd.DataFrame]:
    """Filter cells (min genes, max mito %) then genes (min cells) in memory; returns the kept data and removals.

    The workflow's QC stage (``qc_store``) gives the same result chunk by chunk.
    """
    dataset = str(adata.obs["dataset"].iloc[0]) if adata.n_obs else source
    n_genes, pct = cell_metrics(adata.X, mito_genes(adata.var_names, settings["mito_prefix"]),
                                adata.uns["sclabel"]["values"])
    enough, keep = cell_filters(n_genes, pct, settings)
    adata = adata[keep].copy()
    check_left(source, adata.n_obs)
    keep_genes = cells_per_gene(adata.X) >= settings["min_cells"]
    table = removal_table(dataset, settings, len(keep), int(enough.sum()), int(keep.sum()), adata.n_vars,
                          int(keep_genes.sum()))
    adata = adata[:, keep_genes].copy()
    check_left(source, adata.n_obs, adata.n_vars)
    adata.obs["n_genes"] = detected_genes_per_cell(adata.X)
    adata.obs["pct_mito"] = pct[keep]
    return adata, table


def normalised_uns(uns: Mapping[str, Any]) -> dict[str, Any]:
    """``uns`` with ``sclabel.normalised`` recorded."""
    return {**uns, "sclabel": {**uns["sclabel"], "normalised": NORMALISED}}


def normalise(adata: ad.AnnData, target_sum: float) -> ad.AnnData:
    """CP10k + natural log1p via scanpy for count data; log1p input is kept as given. Counts go to layers['counts']."""
    import scanpy as sc

    if adata.uns["sclabel"]["values"] == "counts":
        adata.layers["counts"] = adata.X.copy()
        sc.pp.normalize_total(adata, target_sum=target_sum)
        sc.pp.log1p(adata)
        adata.uns.pop("log1p", None)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.uns = normalised_uns(adata.uns)
    return adata


def qc_store(input_path: str | Path, settings: Mapping[str, Any], output: str | Path,
             chunk_cells: int = DEFAULT_CHUNK_CELLS) -> pd.DataFrame:
    """``qc_filter`` + ``normalise`` of a cell store, chunk by chunk, written as a store; returns the removals.

    Pass 1 computes each cell's detected genes and mito % and each gene's detection count over the kept cells;
    pass 2 filters, normalises and appends each chunk. Memory grows with the chunk, not the cell count.
    """
    with CellStore(input_path) as store:
        source, values = store.uns["sclabel"]["source"], store.uns["sclabel"]["values"]
        mito = mito_genes(store.var_names, settings["mito_prefix"])
        metrics, detected = [], np.zeros(store.n_vars, dtype=np.int64)
        for _, X in store.chunks(chunk_cells=chunk_cells):
            n_genes, pct = cell_metrics(X, mito, values)
            enough, keep = cell_filters(n_genes, pct, settings)
            detected += cells_per_gene(X[np.flatnonzero(keep)])
            metrics.append((pct, enough, keep))
        pct, enough, keep = (np.concatenate(parts) for parts in zip(*metrics))
        check_left(source, int(keep.sum()))
        genes = np.flatnonzero(detected >= settings["min_cells"])
        dataset = str(store.obs["dataset"].iloc[0])
        table = removal_table(dataset, settings, store.n_obs, int(enough.sum()), int(keep.sum()), store.n_vars,
                              len(genes))
        check_left(source, int(keep.sum()), len(genes))
        obs = subset_obs(store.obs, keep)
        layers = ["counts"] if values == "counts" else []
        with RowWriter(output, obs, store.var.iloc[genes], normalised_uns(store.uns), layers) as writer:
            n_genes = []
            for rows, X in store.chunks(chunk_cells=chunk_cells):
                kept = np.flatnonzero(keep[rows])
                if len(kept):
                    chunk = ad.AnnData(X=X[kept][:, genes], uns={"sclabel": {"values": values}})
                    n_genes.append(detected_genes_per_cell(chunk.X))
                    chunk = normalise(chunk, settings["target_sum"])
                    writer.append(chunk.X, {name: chunk.layers[name] for name in layers})
            writer.obs["n_genes"] = np.concatenate(n_genes)
            writer.obs["pct_mito"] = pct[keep]
    return table


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


def dataset_genes(var_names: pd.Index, case: str) -> pd.Index:
    """A dataset's harmonised gene names, made unique as ``var_names_make_unique`` does."""
    return ad.utils.make_index_unique(harmonise_gene_names(var_names, case))


def shared_genes(pool: Sequence[pd.Index]) -> list[str]:
    """Genes every dataset of ``pool`` has, in the first one's order."""
    shared = set.intersection(*(set(names) for names in pool))
    return [g for g in pool[0] if g in shared]


def join_pool(genes: Sequence[pd.Index], labelled: Sequence[pd.Index], join: str) -> Sequence[pd.Index]:
    """The datasets whose genes must overlap: the labelled ones for the ``labelled`` join, else all."""
    return labelled if join == "labelled" else genes


def combined_genes(genes: Sequence[pd.Index], labelled: Sequence[pd.Index], join: str) -> list[str]:
    """Genes of the combined data, in the first dataset's order: shared by all, by the labelled ones, or all."""
    if join == "outer":
        return list(dict.fromkeys(g for names in genes for g in names))
    return shared_genes(join_pool(genes, labelled, join))


def check_genes_shared(genes: Sequence[pd.Index], labelled: Sequence[pd.Index], join: str,
                       names: Sequence[str]) -> None:
    """Refuse datasets that share no gene, whatever the join (an outer join would only zero-fill disjoint blocks)."""
    if not shared_genes(join_pool(genes, labelled, join)):
        raise InputError(", ".join(names), "var_names", f"the datasets share no gene names ({join} join)",
                         "check gene naming (symbols vs Ensembl ids) or set harmonise.case: upper for mouse/human")


def combined_uns(join: str, genes: Sequence[str], names: Sequence[str], renormalise_to: float | None) -> dict:
    """``uns`` of the combined data."""
    return {"sclabel": {"gene_join": join, "n_genes": len(genes), "datasets": list(names),
                        "renormalised_to": renormalise_to or 0}}


def genes_report(names: Sequence[str], cells: Sequence[int], genes_of: Sequence[pd.Index],
                 genes: Sequence[str]) -> pd.DataFrame:
    """Cells and genes of each dataset, and how many of its genes the combined data kept or zero-filled."""
    found = [len(set(names_) & set(genes)) for names_ in genes_of]
    return pd.DataFrame({"dataset": list(names), "cells": list(cells), "genes": [len(g) for g in genes_of],
                         "genes_in_combined": found, "genes_zero_filled": [len(genes) - n for n in found]})


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
    In memory; the workflow's harmonise stage (``harmonise_stores``) gives the same result chunk by chunk.
    """
    renamed = []
    for adata in datasets:
        adata = adata.copy()
        adata.var_names = dataset_genes(adata.var_names, case)
        renamed.append(adata)
    labelled = [a for a in renamed if "cell_type" in a.obs] or renamed
    genes_of, labelled_genes = [a.var_names for a in renamed], [a.var_names for a in labelled]
    check_genes_shared(genes_of, labelled_genes, join, names)
    genes = combined_genes(genes_of, labelled_genes, join)
    # every dataset is put on the same genes first, so obs columns (labels!) are joined as a union
    combined = ad.concat([zero_filled(a, genes) for a in renamed], join="outer", merge="same", index_unique=None)
    if combined.obs_names.duplicated().any():
        combined.obs_names = [f"{d}:{c}" for d, c in zip(combined.obs["dataset"], combined.obs_names)]
    combined.X = sp.csr_matrix(combined.X, dtype=np.float32)
    if renormalise_to is not None:
        combined.X = renormalised(combined.X, renormalise_to)
    report = genes_report(names, [a.n_obs for a in renamed], [a.var_names for a in renamed], genes)
    combined.uns = combined_uns(join, genes, names, renormalise_to)
    return combined, report


def combined_obs(obs_tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The datasets' obs joined as ``ad.concat(join='outer', merge='same')`` joins them (union of columns,
    categories unified); when cell ids repeat across datasets, every id becomes ``dataset:id``."""
    obs = ad.concat([ad.AnnData(obs=table) for table in obs_tables], join="outer", merge="same",
                    index_unique=None).obs
    if obs.index.duplicated().any():
        obs.index = pd.Index([f"{d}:{c}" for d, c in zip(obs["dataset"], obs.index)])
    return obs


def relabelled(obs: pd.DataFrame, labels: Mapping[str, str] | None) -> pd.DataFrame:
    """``obs`` with its cell types renamed by ``labels`` (every one listed) and the old ones kept in
    ``author_cell_type``; unchanged without ``labels`` or cell types."""
    if not labels or "cell_type" not in obs:
        return obs
    author = obs["cell_type"].astype(str)
    return obs.assign(cell_type=pd.Categorical(author.map(labels)), author_cell_type=pd.Categorical(author))


def harmonise_stores(inputs: Sequence[str | Path], names: Sequence[str], join: str, case: str, output: str | Path,
                     renormalise_to: float | None = None, chunk_cells: int = DEFAULT_CHUNK_CELLS,
                     relabel: Mapping[str, Mapping[str, str]] | None = None) -> pd.DataFrame:
    """``combine`` of cell stores chunk by chunk, written as a store; returns the genes report.

    Genes come from each store's var names and obs from its obs table (no matrix read); then each dataset's rows
    are mapped onto the combined genes (zero-filled where it lacks one), renormalised when asked, and appended.
    A layer missing from some datasets is zero for their cells, as ``ad.concat(join='outer')`` fills it.
    ``relabel`` (dataset → {label: new label}) renames the cell types of those datasets (``relabelled``).
    """
    stores = [CellStore(path) for path in inputs]
    try:
        genes_of = [dataset_genes(store.var_names, case) for store in stores]
        labelled = [g for g, store in zip(genes_of, stores) if "cell_type" in store.obs] or genes_of
        check_genes_shared(genes_of, labelled, join, names)
        genes = combined_genes(genes_of, labelled, join)
        layers_of = [store.layers for store in stores]
        layers = list(dict.fromkeys(name for names_ in layers_of for name in names_))
        obs = combined_obs([relabelled(store.obs, (relabel or {}).get(name)) for store, name in zip(stores, names)])
        with RowWriter(output, obs, pd.DataFrame(index=genes),
                       combined_uns(join, genes, names, renormalise_to), layers) as writer:
            for store, names_, present in zip(stores, genes_of, layers_of):
                selector, _ = gene_selector(names_, genes)
                for rows, X in store.chunks(chunk_cells=chunk_cells):
                    X = sp.csr_matrix(X @ selector, dtype=np.float32)
                    block = slice(int(rows[0]), int(rows[-1]) + 1)
                    writer.append(X if renormalise_to is None else renormalised(X, renormalise_to),
                                  {name: store.read(block, name) @ selector if name in present
                                   else sp.csr_matrix((len(rows), len(genes)), dtype=np.float32)
                                   for name in layers})
        return genes_report(names, [store.n_obs for store in stores], genes_of, genes)
    finally:
        for store in stores:
            store.close()


def align_genes(data: ad.AnnData | tuple[Matrix, Sequence[str]], model_genes: Sequence[str],
                min_overlap: float = 0.5, source: str = "input") -> tuple[Matrix, float]:
    """Reorder the columns of an AnnData (or ``(X, genes)``) to ``model_genes``, zero-filling missing genes.

    Returns the aligned matrix (sparse stays sparse) and the fraction of model genes found; raises
    InputError naming ``source`` when that fraction is below ``min_overlap``.
    """
    X, genes = (data.X, data.var_names) if isinstance(data, ad.AnnData) else data
    selector, found = gene_selector(genes, model_genes)
    overlap = found / len(model_genes)
    if overlap < min_overlap:
        raise InputError(source, "genes", f"only {found} of {len(model_genes)} model genes ({overlap:.0%}) "
                         f"are present, below the minimum {min_overlap:.0%}",
                         "use data with the model's gene symbols (same species and naming) or a model "
                         "trained on these genes")
    aligned = X @ selector
    aligned = sp.csr_matrix(aligned, dtype=np.float32) if sp.issparse(aligned) else np.asarray(aligned, np.float32)
    return aligned, overlap


def qc_stage(input_h5ad: str, settings: Mapping[str, Any], output_h5ad: str, output_table: str,
             chunk_cells: int = DEFAULT_CHUNK_CELLS) -> None:
    """Filter cells and genes, normalise, and write the data with a table of what was removed (chunk by chunk)."""
    removed = qc_store(input_h5ad, settings, output_h5ad, chunk_cells)
    remaining = removed.set_index("step")["remaining"]
    log.info("QC kept %d cells x %d genes\n%s", remaining["max_pct_mito"], remaining["min_cells"],
             removed.to_string(index=False))
    io.write_tsv(removed, output_table)


def harmonise_stage(inputs: Sequence[str], names: Sequence[str], settings: Mapping[str, Any], target_sum: float,
                    output_h5ad: str, output_table: str, chunk_cells: int = DEFAULT_CHUNK_CELLS,
                    relabel: Mapping[str, Mapping[str, str]] | None = None) -> None:
    """Combine the QC'd datasets on harmonised gene names (renormalised per cell over them when asked), by chunks;
    ``relabel`` renames cell types per dataset (``harmonise_stores``)."""
    report = harmonise_stores(inputs, names, settings["gene_join"], settings["case"], output_h5ad,
                              target_sum if settings["renormalise"] else None, chunk_cells, relabel)
    n_genes = report["genes_in_combined"].iloc[0] + report["genes_zero_filled"].iloc[0]
    log.info("combined %d cells x %d genes (%s join)\n%s", report["cells"].sum(), n_genes, settings["gene_join"],
             report.to_string(index=False))
    io.write_tsv(report, output_table)
