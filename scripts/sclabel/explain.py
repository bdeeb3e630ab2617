"""Interpretation stages: top genes per cell type, enrichment, differential expression, marker recall.

Top genes: the linear baselines' coefficients come from their saved final model (``BaselineAnnotator.top_genes``;
rule baseline_final trains it on the final split's cells, streamed SGD above its threshold). Wilcoxon and the neural
attributions read the combined matrix as a ``CellStore``, by rows: a seeded sample of at most ``max_cells_per_type``
labelled cells per cell type (all cells of a smaller type, so small data give the full-data result). SHAP top genes
(``shap_top_genes_stage``, ``sclabel.shap_attribution``) explain the same sample with the method's final model,
against a seeded sample of that model's training cells (the final split's ``train`` cells) as background.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel import baselines, io, registry
from sclabel.splits import labelled_cells
from sclabel.plots import save_figure
from sclabel.store import DEFAULT_CHUNK_CELLS, CellStore

log = logging.getLogger("sclabel")
TOP_GENE_COLUMNS = ["method", "attribution", "cell_type", "gene", "score", "rank"]
DEFAULT_MAX_CELLS_PER_TYPE = 2_000
SHAP_DEFAULTS = {"background_cells": 100, "max_cells_per_type": 200, "samples": 200}  # interpret.shap


def labelled_data(input_h5ad: str) -> tuple[ad.AnnData, pd.Series]:
    """The combined data restricted to labelled cells, with their labels."""
    adata = ad.read_h5ad(input_h5ad)
    labels = labelled_cells(adata)
    return adata[labels.index].copy(), labels


def labelled_sample(input_h5ad: str, max_cells_per_type: int, seed: int) -> tuple[ad.AnnData, pd.Series]:
    """A seeded sample of at most ``max_cells_per_type`` labelled cells per type (read by rows), with their labels."""
    with CellStore(input_h5ad) as store:
        labels = labelled_cells(store)
        keep = baselines.capped_per_class(labels.to_numpy(), max_cells_per_type, seed)
        rows = store.rows_of(labels.index[keep])
        adata = ad.AnnData(store.read(rows), obs=store.obs.iloc[rows].copy(), var=store.var.copy())
    log.info("scale mode: %d of %d labelled cells (at most %d per cell type)", len(keep), len(labels),
             max_cells_per_type)
    return adata, labels.iloc[keep]


def linear_top_genes(model_dir: str) -> pd.DataFrame:
    """Coefficients of a linear baseline's saved final model (trained on the final split's train + val cells)."""
    from sclabel.annotator import load_annotator

    return load_annotator(model_dir).top_genes().assign(attribution="coefficient")


def neural_top_genes(model_dir: str, adata: ad.AnnData, source: str, explains: str) -> pd.DataFrame:
    """The attribution ``explains`` names (attention, attention masks, gradient × input) averaged over the cells the
    model predicts as each type."""
    from sclabel.interpret import ATTRIBUTIONS
    from sclabel.qc import align_genes
    from sclabel.model import CellTypeAnnotator

    model = CellTypeAnnotator.load(model_dir)
    X, _ = align_genes(adata, model.genes, min_overlap=1.0, source=source)
    predicted, _ = model.predict(X)
    return ATTRIBUTIONS[explains](model, X, predicted, progress=False).assign(attribution=explains)


def top_genes_stage(method: str, seed: int, input_h5ad: str, model_dir: str | None, output: str,
                    max_cells_per_type: int = DEFAULT_MAX_CELLS_PER_TYPE) -> None:
    """Rank genes per cell type for one method and write the tidy table (linear and neural: from its final model)."""
    if method == "wilcoxon":
        from sclabel.de import wilcoxon_ranking

        adata, labels = labelled_sample(input_h5ad, max_cells_per_type, seed)
        adata.obs["cell_type"] = labels.to_numpy()
        ranking = wilcoxon_ranking(adata).assign(attribution="wilcoxon")
    elif registry.get(method).explains == "coefficients":
        ranking = linear_top_genes(model_dir)
    else:
        adata, _ = labelled_sample(input_h5ad, max_cells_per_type, seed)
        ranking = neural_top_genes(model_dir, adata, input_h5ad, registry.get(method).explains)
    write_ranking(ranking.assign(method=method), output)


def write_ranking(ranking: pd.DataFrame, output: str) -> None:
    """Write a method's ranking as the tidy top-genes table, logging each type's top 5 genes."""
    table = ranking[TOP_GENE_COLUMNS]
    log.info("%s (%s): top genes per type\n%s", table["method"].iloc[0], table["attribution"].iloc[0],
             table[table["rank"] <= 5].groupby("cell_type")["gene"].apply(", ".join).to_string())
    io.write_tsv(table, output)


def training_background(input_h5ad: str, splits_file: str, n_cells: int, seed: int) -> ad.AnnData:
    """A seeded sample of at most ``n_cells`` of the final split's training cells (the cells the model was fitted on)."""
    from sclabel.splits import FINAL, TRAIN, read_split

    roles = read_split(splits_file, FINAL)
    train = roles.index[roles == TRAIN]
    picked = np.sort(np.random.default_rng(seed).choice(len(train), size=min(n_cells, len(train)), replace=False))
    with CellStore(input_h5ad) as store:
        rows = np.sort(store.rows_of(train[picked]))
        return ad.AnnData(store.read(rows), obs=store.obs.iloc[rows].copy(), var=store.var.copy())


def shap_top_genes_stage(method: str, seed: int, input_h5ad: str, splits_file: str, model_dir: str, output: str,
                         settings: Mapping[str, int] | None = None) -> None:
    """Rank genes per predicted type by mean SHAP value (``sclabel.shap_attribution``) of a method's final model.

    ``settings`` (``interpret.shap``; missing keys take ``SHAP_DEFAULTS``): ``background_cells``,
    ``max_cells_per_type`` (the explained sample) and ``samples`` (neural methods' expected-gradient draws per cell).
    """
    from sclabel.annotator import load_annotator
    from sclabel.qc import align_genes
    from sclabel.shap_attribution import linear_shap_top_genes, neural_shap_top_genes

    settings = {**SHAP_DEFAULTS, **(settings or {})}
    annotator = load_annotator(model_dir)
    cells, _ = labelled_sample(input_h5ad, settings["max_cells_per_type"], seed)
    background = training_background(input_h5ad, splits_file, settings["background_cells"], seed)
    X, X_background = (align_genes(data, annotator.genes, min_overlap=1.0, source=input_h5ad)[0]
                       for data in (cells, background))
    log.info("SHAP: %d explained cells, background of %d training cells", X.shape[0], X_background.shape[0])
    if registry.get(method).explains == "coefficients":
        ranking = linear_shap_top_genes(annotator, X, X_background)
    else:
        ranking = neural_shap_top_genes(annotator, X, X_background, seed, settings["samples"])
    write_ranking(ranking.assign(method=method, attribution="shap"), output)


def file_slug(name: str) -> str:
    """A file-name-safe version of a cell-type or library name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unnamed"


def file_slugs(names: Sequence[str]) -> dict[str, str]:
    """A distinct file-name-safe slug per name: ``file_slug``, followed by a hash of the name where two names
    would share one (``CD4+ T`` and ``CD4 T``, or ``B cell`` and ``b cell`` on a case-insensitive disk)."""
    slugs = {name: file_slug(name) for name in dict.fromkeys(names)}
    taken = Counter(slug.casefold() for slug in slugs.values())
    return {name: slug if taken[slug.casefold()] == 1 else f"{slug}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
            for name, slug in slugs.items()}


def model_genes(input_h5ad: str) -> list[str]:
    """The genes of the combined matrix, which every model saw (the enrichment background); no matrix is read."""
    with CellStore(input_h5ad) as store:
        return list(store.var_names)


def enrich_stage(ranking_file: str, input_h5ad: str, libraries: Mapping[str, str], top_n: int,
                 output_dir: str) -> None:
    """Over-representation of each type's top genes in every library, background = the genes the model saw."""
    from sclabel.enrich import dot_plot, enrich_top_genes

    ranking = io.read_tsv(ranking_file, ["cell_type", "gene"])
    background = model_genes(input_h5ad)
    results = enrich_top_genes(ranking, libraries, background, top_n=top_n)
    library_files, type_files = file_slugs(list(libraries)), file_slugs(sorted(ranking["cell_type"].unique()))
    with io.atomic_folder(output_dir) as tmp:
        for library, slug in library_files.items():
            results[results["library"] == library].to_csv(tmp / f"{slug}.tsv", sep="\t", index=False)
        for cell_type, slug in type_files.items():
            save_figure(dot_plot(results, cell_type), tmp / f"dotplot_{slug}.png")
    best = results.sort_values("adjusted_p_value").groupby(["library", "cell_type"]).head(1)
    log.info("best term per library and type\n%s", best[["library", "cell_type", "term", "adjusted_p_value"]]
             .to_string(index=False))


def ranking_label(ranking: pd.DataFrame) -> str:
    """How marker recall names a ranking: its method, followed by `` (shap)`` for a SHAP one."""
    method, attribution = ranking["method"].iloc[0], ranking["attribution"].iloc[0]
    return f"{method} (shap)" if attribution == "shap" else method


def marker_recall_stage(ranking_files: Sequence[str], input_h5ad: str, settings: Mapping[str, Any],
                        output_table: str, output_figure: str) -> None:
    """Recall of known markers within each ranking's top-k genes, per cell type, as a curve over k."""
    from sclabel.interpret import load_marker_table, marker_recall_curve
    from sclabel.plots import recall_figure

    markers = load_marker_table(settings["marker_table"], species=settings["marker_species"])
    background = set(model_genes(input_h5ad))
    curves = []
    for path in ranking_files:
        ranking = io.read_tsv(path, ["cell_type", "gene"])
        curve = marker_recall_curve(ranking, markers, settings["cell_type_map"], settings["recall_ks"], background)
        curves.append(curve.assign(method=ranking_label(ranking), attribution=ranking["attribution"].iloc[0]))
    table = pd.concat(curves, ignore_index=True)
    io.write_tsv(table, output_table)
    save_figure(recall_figure(table), output_figure)


def store_counts(store: CellStore, rows: np.ndarray, chunk_cells: int) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
    """Raw counts of the store's rows ``rows`` (``layers['counts']``, else ``X``), ``chunk_cells`` at a time.

    Positions count from 0 within ``rows``; a chunk that is not integer-valued ends the stage with one line.
    """
    from sclabel.de import checked_counts

    layer = "counts" if "counts" in store.layers else None
    for start in range(0, len(rows), chunk_cells):
        part = rows[start:start + chunk_cells]
        yield np.arange(start, start + len(part)), checked_counts(store.read(part, layer), f"layers['{layer}']"
                                                                  if layer else "X")


def pseudobulk_stage(input_h5ad: str, settings: Mapping[str, Any], output_table: str, output_skipped: str,
                     output_figure: str, chunk_cells: int = DEFAULT_CHUNK_CELLS) -> None:
    """pydeseq2 on counts summed per sample × cell type, or a stated reason why it cannot run.

    The counts are read from the store ``chunk_cells`` cells at a time and summed as they arrive.
    """
    from sclabel.de import streamed_pseudobulk_de, volcano_plot

    with CellStore(input_h5ad) as store:
        labels = labelled_cells(store)
        rows = store.rows_of(labels.index)
        obs = store.obs.iloc[rows].assign(cell_type=labels.to_numpy())
        results, skipped = streamed_pseudobulk_de(
            obs, lambda cells: store_counts(store, rows[cells], chunk_cells), store.var_names,
            settings["sample_key"], settings["condition_key"], tuple(settings["contrast"]),
            min_cells=settings["min_cells"], min_counts=settings["min_counts"])
    for row in skipped.itertuples():
        log.warning("pseudobulk DE skipped for %s: %s", row.cell_type, row.reason)
    io.write_tsv(results, output_table)
    io.write_tsv(skipped, output_skipped)
    save_figure(volcano_plot(results, f"pseudobulk DE {' vs '.join(settings['contrast'][1:])}"), output_figure)
