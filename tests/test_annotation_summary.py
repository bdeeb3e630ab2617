"""The per-query annotation summary: counts per predicted type, histograms with the threshold, UMAP from 200 cells."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from sclabel import annotation_summary
from sclabel.annotation_summary import MIN_UMAP_CELLS, write_summary
from workflow_helpers import assert_summary_matches

THRESHOLD = 0.55


@pytest.fixture(scope="module")
def annotated() -> ad.AnnData:
    """scanpy's 700 log-normalised PBMCs as an annotated query: author labels as predictions, unassigned where the
    rejection score (1 - a seeded confidence) passes the threshold; no embedding."""
    pbmc = sc.datasets.pbmc68k_reduced()
    query = ad.AnnData(X=pbmc.raw.X.copy(), obs=pd.DataFrame(index=pbmc.obs_names),
                       var=pd.DataFrame(index=pbmc.raw.var_names))
    confidence = np.random.default_rng(0).uniform(0.2, 1.0, query.n_obs)
    labels = pbmc.obs["bulk_labels"].astype(str).to_numpy()
    query.obs["predicted_cell_type"] = pd.Categorical(np.where(1 - confidence > THRESHOLD, "unassigned", labels))
    query.obs["predicted_cell_type_raw"] = pd.Categorical(labels)
    query.obs["prediction_confidence"] = confidence
    query.obs["rejection_score"] = 1 - confidence
    query.uns["sclabel"] = {"values": "log1p", "source": "pbmc68k_reduced"}
    query.uns["sclabel_annotation"] = {"model": "results/models/logreg/final", "method": "logreg",
                                       "gene_overlap": 0.93, "rejection_threshold": THRESHOLD,
                                       "abstention_rule": "threshold", "labels": sorted(set(labels))}
    return query


def test_a_small_query_gets_no_umap_and_the_page_says_why(annotated, tmp_path):
    small = annotated[:MIN_UMAP_CELLS - 1].copy()
    write_summary(small, "small", 1e4, 1000, 0, str(tmp_path / "s.html"), str(tmp_path / "s.png"))
    text = assert_summary_matches(tmp_path / "s.html", tmp_path / "s.png", small)
    assert f"No UMAP: the query has {MIN_UMAP_CELLS - 1} cells, fewer than {MIN_UMAP_CELLS}" in text
    assert "UMAP computed on" not in text


def test_the_figure_marks_the_threshold_and_draws_the_umap_when_given(annotated):
    umap = np.random.default_rng(0).normal(size=(annotated.n_obs, 2))
    fig = annotation_summary.summary_figure(annotated.obs, THRESHOLD, umap, "")
    bars, embedding, _, rejection = fig.axes[:4]
    assert [line.get_xdata()[0] for line in rejection.lines] == [THRESHOLD]
    assert len(embedding.collections) == 1 and len(embedding.collections[0].get_offsets()) == annotated.n_obs
    counts = annotated.obs["predicted_cell_type"].value_counts()
    assert [patch.get_width() for patch in bars.patches] == pytest.approx((counts / annotated.n_obs).tolist())


def test_a_query_of_200_cells_gets_a_seeded_umap_of_its_principal_components(annotated, tmp_path):
    query = annotated[:MIN_UMAP_CELLS].copy()
    write_summary(query, "pbmc", 1e4, 1000, 3, str(tmp_path / "q.html"), str(tmp_path / "q.png"))
    text = assert_summary_matches(tmp_path / "q.html", tmp_path / "q.png", query)
    assert "UMAP computed on 50 principal components of the query's log-normalised cells" in text
    assert "random_state 3" in text and "No UMAP" not in text
