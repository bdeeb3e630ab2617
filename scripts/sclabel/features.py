"""Feature selection (scaLR's scheme): genes ranked by linear models fitted on chunks of genes, top k kept.

Per split, the genes are cut into consecutive chunks of ``chunk_genes``; on each chunk a multinomial logistic
regression (lbfgs, L2 strength ``C``) is fitted on the split's training cells, each gene divided by its standard
deviation over those cells (``StandardScaler(with_mean=False)``: sparse stays sparse, and with an unpenalised
intercept centring would change only the intercept, not the coefficients). A gene's score is the largest absolute
coefficient over the classes (``max_abs``) or their mean (``mean_abs``): the change in a class's log-odds per
standard deviation of the gene. The ``top_k`` genes by score are kept (a tie keeps the gene first in the matrix).

Only training cells are read for the ranking (never the validation or test cells): a seeded stratified sample of at
most ``max_cells`` of them (``baselines.stratified_sample``), streamed from the store ``chunk_cells`` rows at a time
and cut to the chunk's columns as they arrive, so at most ``max_cells`` x ``chunk_genes`` values are in memory.

The kept genes then feed the ``<method>@top`` variants as a new matrix: every cell of the split, the selected
columns only (in the matrix's gene order), written as a cell store row chunk by row chunk. With
``harmonise.renormalise`` each cell is rescaled over the selected genes, as annotation rescales a query over the
model's genes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sclabel import io, splits
from sclabel.baselines import stratified_sample
from sclabel.errors import InputError
from sclabel.qc import renormalised
from sclabel.splits import read_split
from sclabel.store import DEFAULT_CHUNK_CELLS, CellStore, RowWriter

log = logging.getLogger("sclabel")

DEFAULTS = {"top_k": 500, "chunk_genes": 2000, "C": 1.0, "max_iter": 1000, "max_cells": 50_000,
            "score": "max_abs", "seed": 0}
SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"max_abs": lambda a: a.max(axis=0),
                                                          "mean_abs": lambda a: a.mean(axis=0)}
COLUMNS = ["gene", "score", "rank", "chunk"]


def gene_chunks(n_genes: int, chunk_genes: int) -> list[np.ndarray]:
    """Column positions of consecutive chunks of at most ``chunk_genes`` genes."""
    return [np.arange(start, min(start + chunk_genes, n_genes)) for start in range(0, n_genes, chunk_genes)]


def chunk_matrix(store: CellStore, rows: np.ndarray, columns: np.ndarray, chunk_cells: int) -> sp.csr_matrix:
    """The store's ``rows`` x ``columns``, read ``chunk_cells`` rows at a time and cut to ``columns`` as they come."""
    return sp.vstack([block[:, columns] for _, block in store.chunks(rows, chunk_cells)], format="csr")


def chunk_scores(X: sp.spmatrix, labels: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """Per gene of ``X``, the aggregated absolute coefficient of a logistic regression on standardised expression."""
    model = make_pipeline(StandardScaler(with_mean=False),
                          LogisticRegression(C=settings["C"], max_iter=settings["max_iter"],
                                             random_state=settings["seed"]))
    coefficients = model.fit(X, labels)[-1].coef_
    return SCORES[settings["score"]](np.abs(coefficients))


def gene_scores(store: CellStore, rows: np.ndarray, labels: np.ndarray, settings: Mapping[str, Any],
                chunk_cells: int = DEFAULT_CHUNK_CELLS) -> pd.DataFrame:
    """(gene, score, chunk) of every gene, each chunk's model fitted on the store rows ``rows`` with ``labels``."""
    parts = []
    for chunk, columns in enumerate(gene_chunks(store.n_vars, settings["chunk_genes"])):
        scores = chunk_scores(chunk_matrix(store, rows, columns, chunk_cells), labels, settings)
        parts.append(pd.DataFrame({"gene": store.var_names[columns], "score": scores, "chunk": chunk}))
    return pd.concat(parts, ignore_index=True)


def top_genes(scores: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """The ``top_k`` best-scored genes with their rank (1 = best); all genes, with a warning, when there are fewer."""
    if top_k > len(scores):
        log.warning("features.top_k %d is more than the %d genes of the matrix: keeping every gene", top_k,
                    len(scores))
    ranked = scores.sort_values("score", ascending=False, kind="stable").head(top_k)
    return ranked.assign(rank=np.arange(1, len(ranked) + 1))[COLUMNS].reset_index(drop=True)


def selection_rows(store: CellStore, roles: pd.Series, labels: pd.Series, max_cells: int,
                   seed: int) -> np.ndarray:
    """Sorted store rows of the split's training cells (a seeded stratified sample of at most ``max_cells``)."""
    train = roles.index[roles == splits.TRAIN]
    rows = np.sort(store.rows_of(train))
    return rows[stratified_sample(labels.iloc[rows].to_numpy(), max_cells, seed)]


def write_feature_matrix(store: CellStore, rows: np.ndarray, columns: np.ndarray, output: str, chunk_cells: int,
                         renormalise: bool, target_sum: float) -> None:
    """The store's ``rows`` x ``columns`` as a new cell store (rescaled over ``columns`` when ``renormalise``)."""
    with RowWriter(output, store.obs.iloc[rows], store.var.iloc[columns], store.uns) as writer:
        for _, block in store.chunks(rows, chunk_cells):
            block = block[:, columns]
            writer.append(renormalised(block, target_sum) if renormalise else block)


def resolve_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The features block over its defaults; an unknown key or score is a one-line InputError."""
    unknown = sorted(set(settings or {}) - set(DEFAULTS))
    if unknown:
        raise InputError("config", f"features.{unknown[0]}", "unknown setting", f"use {', '.join(DEFAULTS)}")
    resolved = {**DEFAULTS, **(settings or {})}
    if resolved["score"] not in SCORES:
        raise InputError("config", "features.score", f"unknown score '{resolved['score']}'",
                         f"use {' or '.join(SCORES)}")
    return resolved


def select_features_stage(input_h5ad: str, splits_file: str, split: str, settings: Mapping[str, Any] | None,
                          output_genes: str, output_h5ad: str, chunk_cells: int = DEFAULT_CHUNK_CELLS,
                          renormalise: bool = False, target_sum: float = 10_000.0) -> None:
    """Rank the genes on the split's training cells, write the ``top_k`` (gene, score, rank, chunk) and the split's
    cells over those genes as the ``@top`` variants' matrix."""
    settings = resolve_settings(settings)
    roles = read_split(splits_file, split)
    with CellStore(input_h5ad) as store:
        labels = store.obs["cell_type"].astype(str)
        rows = selection_rows(store, roles, labels, settings["max_cells"], settings["seed"])
        if len(set(labels.iloc[rows])) < 2:
            raise InputError(splits_file, split, "fewer than two cell types among the training cells",
                             "feature selection needs labelled training cells of at least two types")
        log.info("ranking %d genes in chunks of %d on %d training cells of %s", store.n_vars,
                 settings["chunk_genes"], len(rows), split)
        selected = top_genes(gene_scores(store, rows, labels.iloc[rows].to_numpy(), settings, chunk_cells),
                             settings["top_k"])
        io.write_tsv(selected, output_genes)
        columns = np.sort(store.var_names.get_indexer(selected["gene"]))
        write_feature_matrix(store, np.sort(store.rows_of(roles.index)), columns, output_h5ad, chunk_cells,
                             renormalise, target_sum)
    log.info("%s: kept %d genes (best score %.4g, last %.4g)", split, len(selected), selected["score"].iloc[0],
             selected["score"].iloc[-1])
