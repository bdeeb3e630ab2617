"""Differential expression: Wilcoxon marker ranking per cell type, pseudobulk DESeq2 (pydeseq2) between conditions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from matplotlib.figure import Figure

from sclabel.errors import InputError

DE_COLUMNS = ["cell_type", "gene", "log2_fold_change", "p_value", "adjusted_p_value", "base_mean"]
SKIP_COLUMNS = ["cell_type", "reason"]
TOO_FEW_SAMPLES = "fewer than 2 samples per condition"


CountChunks = Iterable[tuple[np.ndarray, sp.spmatrix]]  # (row positions in obs, raw counts of those rows)


def require_obs_columns(obs: pd.DataFrame, columns: Sequence[str]) -> None:
    """One-line InputError naming the first of ``columns`` missing from ``obs``."""
    for column in columns:
        if column not in obs.columns:
            raise InputError("adata.obs", column, "column not found",
                             f"add obs['{column}'] or pass one of: {', '.join(map(str, obs.columns))}")


def is_integer_valued(X: np.ndarray | sp.spmatrix) -> bool:
    """Whether every stored value of ``X`` is a whole number (raw counts)."""
    values = X.data if sp.issparse(X) else np.asarray(X)
    return bool(np.all(np.mod(values, 1) == 0))


def checked_counts(X: np.ndarray | sp.spmatrix, where: str) -> sp.csr_matrix:
    """``X`` as CSR when it holds raw integer counts; InputError naming ``where`` otherwise."""
    if not is_integer_valued(X):
        raise InputError("adata", where, "not raw integer counts",
                         "store raw UMI counts in adata.layers['counts'] (or in X) before pseudobulking")
    return sp.csr_matrix(X)


def count_matrix(adata: ad.AnnData) -> sp.csr_matrix:
    """Raw counts from ``layers['counts']``, else from ``X`` when it is integer-valued; InputError otherwise."""
    if "counts" in adata.layers:
        return checked_counts(adata.layers["counts"], "layers['counts']")
    return checked_counts(adata.X, "X")


def log1p_copy(adata: ad.AnnData, groupby: str) -> ad.AnnData:
    """A light copy (X, the group column) on the log1p scale: integer counts get CP10k + natural log1p."""
    data = ad.AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32, copy=True),
                      obs=pd.DataFrame({groupby: adata.obs[groupby].astype(str).astype("category")},
                                       index=adata.obs_names),
                      var=pd.DataFrame(index=adata.var_names))
    if is_integer_valued(data.X):
        sc.pp.normalize_total(data, target_sum=1e4)
        sc.pp.log1p(data)
    data.uns["log1p"] = {"base": None}
    return data


def wilcoxon_ranking(adata: ad.AnnData, groupby: str = "cell_type", n_genes: int | None = None) -> pd.DataFrame:
    """Genes ranked per group by scanpy's Wilcoxon test (one group vs rest) on log1p data; rank 1 = best."""
    require_obs_columns(adata.obs, [groupby])
    data = log1p_copy(adata, groupby)
    sizes = data.obs[groupby].value_counts()
    if len(sizes) < 2 or (sizes < 2).any():
        raise InputError("adata.obs", groupby, f"needs >= 2 groups of >= 2 cells (sizes: {sizes.to_dict()})",
                         "drop singleton groups or pick another grouping column")
    sc.tl.rank_genes_groups(data, groupby, method="wilcoxon", n_genes=n_genes, use_raw=False)
    table = sc.get.rank_genes_groups_df(data, group=None).sort_values(["group", "scores"], ascending=[True, False],
                                                                      kind="stable")
    return pd.DataFrame({
        "cell_type": table["group"].astype(str).to_numpy(),
        "gene": table["names"].astype(str).to_numpy(),
        "score": table["scores"].to_numpy(dtype=float),
        "rank": table.groupby("group", observed=True).cumcount().to_numpy() + 1,
        "log2fc": table["logfoldchanges"].to_numpy(dtype=float),
        "adjusted_p_value": table["pvals_adj"].to_numpy(dtype=float),
    })


def sample_level_columns(obs: pd.DataFrame, sample_key: str) -> list[str]:
    """obs columns (besides ``sample_key``) holding one value per sample, e.g. condition or donor covariates."""
    grouped = obs.groupby(sample_key, observed=True)
    return [column for column in obs.columns
            if column != sample_key and (grouped[column].nunique(dropna=False) <= 1).all()]


def pseudobulk(adata: ad.AnnData, sample_key: str, cell_type_key: str,
               min_cells: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Counts summed per sample x cell type (kept with >= ``min_cells`` cells) and their metadata (+ n_cells)."""
    require_obs_columns(adata.obs, [sample_key, cell_type_key])
    return summed_pseudobulk(adata.obs, [(np.arange(adata.n_obs), count_matrix(adata))], adata.var_names,
                             sample_key, cell_type_key, min_cells)


def summed_pseudobulk(obs: pd.DataFrame, counts: CountChunks, genes: Sequence[str], sample_key: str,
                      cell_type_key: str, min_cells: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``pseudobulk`` over counts that arrive in row chunks (e.g. read from a cell store): one chunk in memory."""
    pairs = pd.MultiIndex.from_frame(obs[[sample_key, cell_type_key]].astype(str))
    codes, groups = pairs.factorize(sort=True)
    summed = np.zeros((len(groups), len(genes)))
    for rows, chunk in counts:
        indicator = sp.csr_matrix((np.ones(len(rows)), (codes[rows], np.arange(len(rows)))),
                                  shape=(len(groups), len(rows)))
        summed += (indicator @ sp.csr_matrix(chunk, dtype=np.float64)).toarray()
    names = [f"{sample}|{cell_type}" for sample, cell_type in groups]
    table = pd.DataFrame(np.rint(summed).astype(np.int64), index=names, columns=pd.Index(genes).astype(str))
    metadata = pd.DataFrame(list(groups), columns=[sample_key, cell_type_key], index=names)
    metadata["n_cells"] = np.bincount(codes, minlength=len(groups))
    extra = [column for column in sample_level_columns(obs, sample_key) if column != cell_type_key]
    per_sample = obs.groupby(obs[sample_key].astype(str), observed=True)[extra].first()
    metadata = metadata.join(per_sample, on=sample_key)
    keep = metadata["n_cells"].to_numpy() >= min_cells
    return table.loc[keep], metadata.loc[keep]


def deseq(counts: pd.DataFrame, condition: pd.Series, test: str, reference: str, min_counts: int = 1) -> pd.DataFrame:
    """pydeseq2 Wald test of ``test`` vs ``reference`` (design ~condition) on one cell type's pseudobulks.

    Genes with fewer than ``min_counts`` counts summed over these pseudobulks are not tested (pydeseq2's own filter).
    """
    # Imported here: importing pydeseq2.dds silences FutureWarning process-wide (warnings.simplefilter).
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.ds import DeseqStats

    counts = counts.loc[:, counts.sum(axis=0) >= min_counts]
    metadata = pd.DataFrame({"condition": condition.astype(str).to_numpy()}, index=counts.index)
    dds = DeseqDataSet(counts=counts, metadata=metadata, design="~condition", n_cpus=1, quiet=True)
    dds.deseq2()
    stats = DeseqStats(dds, contrast=["condition", test, reference], n_cpus=1, quiet=True)
    stats.summary()
    res = stats.results_df
    return pd.DataFrame({"gene": res.index.astype(str), "log2_fold_change": res["log2FoldChange"].to_numpy(),
                         "p_value": res["pvalue"].to_numpy(), "adjusted_p_value": res["padj"].to_numpy(),
                         "base_mean": res["baseMean"].to_numpy()})


def check_contrast(obs: pd.DataFrame, sample_key: str, condition_key: str, contrast: tuple[str, str, str]) -> None:
    """One-line InputError unless ``contrast`` names ``condition_key``, two present levels, one level per sample."""
    column, test, reference = contrast
    if column != condition_key:
        raise InputError("contrast", column, f"contrast column differs from condition_key {condition_key!r}",
                         f"pass contrast=({condition_key!r}, test_level, reference_level)")
    levels = set(obs[condition_key].astype(str))
    for level in (test, reference):
        if level not in levels:
            raise InputError("adata.obs", condition_key, f"level {level!r} not found (levels: {sorted(levels)})",
                             "name an existing test and reference level in the contrast")
    if test == reference:
        raise InputError("contrast", condition_key, "test and reference level are the same", "pick two levels")
    per_sample = obs.groupby(sample_key, observed=True)[condition_key].nunique(dropna=False)
    if (per_sample > 1).any():
        mixed = list(per_sample.index[per_sample > 1])
        raise InputError("adata.obs", condition_key, f"varies within sample(s) {mixed}",
                         f"give each {sample_key} a single {condition_key}")


def pseudobulk_de(adata: ad.AnnData, sample_key: str, condition_key: str, contrast: tuple[str, str, str],
                  cell_type: str | None = None, min_cells: int = 10, cell_type_key: str = "cell_type",
                  min_counts: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cell-type pseudobulk DESeq2 of contrast (column, test, reference): (results, skipped cell types + reason)."""
    return streamed_pseudobulk_de(adata.obs, lambda rows: [(np.arange(len(rows)), count_matrix(adata[rows]))],
                                  adata.var_names, sample_key, condition_key, contrast, cell_type, min_cells,
                                  cell_type_key, min_counts)


def streamed_pseudobulk_de(obs: pd.DataFrame, read_counts: Callable[[np.ndarray], CountChunks], genes: Sequence[str],
                           sample_key: str, condition_key: str, contrast: tuple[str, str, str],
                           cell_type: str | None = None, min_cells: int = 10, cell_type_key: str = "cell_type",
                           min_counts: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``pseudobulk_de`` where ``read_counts(rows)`` yields the raw counts of obs rows ``rows`` in chunks.

    Each chunk's positions count from 0 within ``rows``; only one chunk and the per-sample sums are in memory.
    """
    require_obs_columns(obs, [sample_key, condition_key, cell_type_key])
    check_contrast(obs, sample_key, condition_key, contrast)
    _, test, reference = contrast
    cell_types = obs[cell_type_key].astype(str)
    if cell_type is not None and cell_type not in set(cell_types):
        raise InputError("adata.obs", cell_type_key, f"cell type {cell_type!r} not found", "pass an existing cell type")
    chosen = sorted(set(cell_types)) if cell_type is None else [cell_type]
    cells = np.flatnonzero(cell_types.isin(chosen).to_numpy()
                           & obs[condition_key].astype(str).isin([test, reference]).to_numpy())
    counts, metadata = summed_pseudobulk(obs.iloc[cells], read_counts(cells), genes, sample_key, cell_type_key,
                                         min_cells)
    results, skipped = [], []
    for name in chosen:
        rows = metadata.index[metadata[cell_type_key] == name]
        n_per_level = metadata.loc[rows, condition_key].astype(str).value_counts()
        n_test, n_reference = int(n_per_level.get(test, 0)), int(n_per_level.get(reference, 0))
        if min(n_test, n_reference) < 2:
            skipped.append({"cell_type": name, "reason": f"{TOO_FEW_SAMPLES} ({test}: {n_test}, {reference}: "
                                                         f"{n_reference} samples with >= {min_cells} cells)"})
            continue
        table = deseq(counts.loc[rows], metadata.loc[rows, condition_key], test, reference, min_counts)
        results.append(table.assign(cell_type=name)[DE_COLUMNS])
    tidy = pd.concat(results, ignore_index=True) if results else pd.DataFrame(columns=DE_COLUMNS)
    return tidy, pd.DataFrame(skipped, columns=SKIP_COLUMNS)


def volcano_plot(results: pd.DataFrame, title: str, alpha: float = 0.05, min_abs_log2fc: float = 1.0,
                 n_labels: int = 10) -> Figure:
    """Volcano plot: log2 fold change vs -log10 p; red = adjusted p < ``alpha`` and |log2FC| >= threshold."""
    data = results.dropna(subset=["log2_fold_change", "p_value"])
    x = data["log2_fold_change"].to_numpy(dtype=float)
    y = -np.log10(np.clip(data["p_value"].to_numpy(dtype=float), np.finfo(float).tiny, None))
    hit = (data["adjusted_p_value"].fillna(1.0).to_numpy() < alpha) & (np.abs(x) >= min_abs_log2fc)
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(x[~hit], y[~hit], s=6, color="lightgrey", label="not significant")
    ax.scatter(x[hit], y[hit], s=10, color="firebrick", label=f"adj. p < {alpha}, |log2FC| >= {min_abs_log2fc}")
    for i in np.flatnonzero(hit)[np.argsort(-y[hit])][:n_labels]:
        ax.annotate(str(data["gene"].iloc[i]), (x[i], y[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for sign in (-1, 1):
        ax.axvline(sign * min_abs_log2fc, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("log2 fold change")
    ax.set_ylabel("-log10 p-value")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    return fig
