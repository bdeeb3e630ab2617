"""Annotating new datasets with any saved annotator: normalise, align genes, predict, optionally vote by cluster.

Torch-free: it runs in the env of the method whose final model annotates (``registry.get(method).env``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from sclabel import io, qc, voting
from sclabel.annotator import Annotator, load_annotator, predicted_labels
from sclabel.consensus import ConsensusAnnotator, read_prediction_tables
from sclabel.predictions import write_predictions
from sclabel.store import DEFAULT_CHUNK_CELLS

log = logging.getLogger("sclabel")


@dataclass
class QueryScores:
    """A method's view of a query's cells: probabilities over its classes, rejection scores, abstentions."""

    classes: np.ndarray
    probabilities: np.ndarray
    rejection: np.ndarray
    abstained: np.ndarray
    embedding: np.ndarray | None = None  # the method's embedding, when it has one
    overlap: float = float("nan")  # the share of the model's genes the query has (NaN for the consensus)

    def predicted(self) -> np.ndarray:
        """Most probable type per cell, ``unassigned`` where the method abstained."""
        return predicted_labels(self.classes, self.probabilities, self.abstained)


def score_query(model: Annotator, query: ad.AnnData, settings: Mapping[str, Any], target_sum: float,
                chunk_cells: int) -> QueryScores:
    """Probabilities, rejection scores, abstentions and embedding (None when the method has none) of a raw query.

    The query is normalised, aligned to the model's genes and predicted ``chunk_cells`` cells at a time (every step
    is per cell), so only one chunk's working copies are in memory besides the query itself. A cell is abstained
    on by the method's own rule, or above its rejection threshold set on validation cells.
    """
    source = query.uns["sclabel"]["source"]
    _, overlap = qc.align_genes((query.X[:0], query.var_names), model.genes, settings["min_gene_overlap"],
                                source=source)
    log.info("%s: %d of %d model genes present (%.0f%%); missing genes are zero-filled", source,
             round(overlap * len(model.genes)), len(model.genes), 100 * overlap)
    probabilities, rejection, embedding = [], [], []
    for start in range(0, query.n_obs, chunk_cells):
        X, _ = qc.align_genes(qc.normalise(query[start:start + chunk_cells].copy(), target_sum), model.genes, 0.0)
        if model.preprocessing.get("renormalise"):
            X = qc.renormalised(X, target_sum)
        probabilities.append(model.predict_proba(X))
        rejection.append(model.rejection_score(X))
        embedding.append(model.embed(X))
    rejection_all, probabilities_all = np.concatenate(rejection), np.concatenate(probabilities)
    embedded = None if any(block is None for block in embedding) else np.concatenate(embedding)
    return QueryScores(model.classes, probabilities_all, rejection_all, model.abstains(rejection_all, probabilities_all),
                       embedded, overlap)


def consensus_scores(consensus: ConsensusAnnotator, member_files: Sequence[str]) -> QueryScores:
    """The consensus of the members' probability tables on one query (written by ``member_stage``)."""
    tables = read_prediction_tables(member_files)
    probabilities, rejection = consensus.combine(tables, ", ".join(member_files))
    return QueryScores(consensus.classes, probabilities, rejection, consensus.abstains(rejection, probabilities))


def member_stage(model_dir: str, query_files: Sequence[str], settings: Mapping[str, Any], target_sum: float,
                 outputs: Sequence[str], chunk_cells: int = DEFAULT_CHUNK_CELLS) -> None:
    """A consensus member's predictions on each query, in the prediction contract (for the consensus to combine)."""
    model = load_annotator(model_dir)
    for path, output in zip(query_files, outputs):
        query = ad.read_h5ad(path)
        scores = score_query(model, query, settings, target_sum, chunk_cells)
        unknown = np.full(query.n_obs, "")
        write_predictions([(query.obs_names, unknown, scores.probabilities, scores.rejection, scores.abstained)],
                          scores.classes, output)


def annotation_counts(obs: pd.DataFrame, query: str, overlap: float) -> pd.DataFrame:
    """Summary rows of one annotated query: cells per predicted type, and per voted type when voting ran."""
    counts = pd.DataFrame({"cells": obs["predicted_cell_type"].value_counts()})
    if "majority_voting" in obs:
        counts = counts.join(obs["majority_voting"].value_counts().rename("voted_cells"), how="outer")
    counts = counts.fillna(0).astype(int)
    for column in list(counts):
        counts[column.replace("cells", "fraction")] = counts[column] / len(obs)
    counts = counts.rename_axis("predicted_cell_type").reset_index()
    return counts.assign(query=query, gene_overlap=overlap)[["query", "predicted_cell_type", *counts.columns[1:],
                                                              "gene_overlap"]]


def annotate_stage(model_dir: str, query_files: Sequence[str], settings: Mapping[str, Any], target_sum: float,
                   outputs: Sequence[str], output_summary: str, chunk_cells: int = DEFAULT_CHUNK_CELLS,
                   member_files: Sequence[Sequence[str]] = ()) -> None:
    """Label each query dataset with a saved annotator: predicted type (``unassigned`` where the method abstains),
    its best guess even there (``predicted_cell_type_raw``), confidence, rejection score (and the method's embedding,
    when it has one). The consensus combines its members' tables on each query
    (``member_files``: per query, one file per member).

    Each query file is held in memory for its annotated copy; predictions and embedding go ``chunk_cells`` at a time.
    """
    model = load_annotator(model_dir)
    rows = []
    for i, (path, output) in enumerate(zip(query_files, outputs)):
        query = ad.read_h5ad(path)
        scores = (consensus_scores(model, member_files[i]) if isinstance(model, ConsensusAnnotator)
                  else score_query(model, query, settings, target_sum, chunk_cells))
        predicted, raw = scores.predicted(), scores.classes[scores.probabilities.argmax(axis=1)]
        query.obs["predicted_cell_type"] = pd.Categorical(predicted)
        query.obs["predicted_cell_type_raw"] = pd.Categorical(raw)
        query.obs["prediction_confidence"] = scores.probabilities.max(axis=1)
        query.obs["rejection_score"] = scores.rejection
        if scores.embedding is not None:
            query.obsm["X_sclabel"] = scores.embedding
        overlap = scores.overlap
        query.uns["sclabel_annotation"] = {"model": str(model_dir), "method": model.method, "gene_overlap": overlap,
                                           "rejection_threshold": model.rejection_threshold,
                                           "abstention_rule": ("threshold" if model.own_abstention(scores.rejection, raw)
                                                               is None else "own"),
                                           "labels": model.classes.tolist()}
        if settings["majority_voting"]:
            clusters, majority = voting.vote_query(query, predicted, target_sum, chunk_cells, settings["seed"])
            query.obs["over_clustering"] = pd.Categorical(clusters, categories=sorted(set(clusters), key=int))
            query.obs["majority_voting"] = pd.Categorical(majority)
        io.write_h5ad(query, output)
        rows.append(annotation_counts(query.obs, Path(output).stem, overlap))
    io.write_tsv(pd.concat(rows, ignore_index=True), output_summary)
