"""Feature selection (sclabel.features): chunked linear ranking on training cells only, and the @top variants."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sclabel import features, io, registry, splits
from sclabel.annotate import score_query
from sclabel.annotator import load_annotator
from sclabel.method_stage import method_stage
from sclabel.store import CellStore, write_store

N_GENES = 240
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def symphony(shared_data, tmp_path_factory):
    """pbmc_symphony (1,200 cells, log1p CP10k) over its first 240 genes as a cell store, and one split cv1."""
    workdir = tmp_path_factory.mktemp("features")
    full = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    full.X = sp.csr_matrix(full.X, dtype=np.float32)
    adata = full[:, :N_GENES].copy()
    write_store(adata, workdir / "combined.h5ad")
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    rest, test = train_test_split(np.arange(adata.n_obs), test_size=0.3, stratify=labels, random_state=0)
    train, val = train_test_split(rest, test_size=0.1, stratify=labels[rest], random_state=0)
    roles = np.full(adata.n_obs, splits.TRAIN, dtype=object)
    roles[val], roles[test] = splits.VAL, splits.TEST
    io.write_tsv(pd.DataFrame({"cell_id": adata.obs_names, "cv1": roles}), workdir / "splits.tsv")
    return {"dir": workdir, "store": str(workdir / "combined.h5ad"), "splits": str(workdir / "splits.tsv"),
            "adata": adata, "full": full, "train": np.sort(train), "labels": labels}


def select(symphony, workdir, **settings) -> pd.DataFrame:
    """Run the selection stage on cv1; its selected-genes table."""
    features.select_features_stage(symphony["store"], symphony["splits"], "cv1", settings,
                                   str(workdir / "cv1.tsv"), str(workdir / "cv1.h5ad"), chunk_cells=100)
    return pd.read_csv(workdir / "cv1.tsv", sep="\t")


@pytest.mark.shared_data
def test_one_chunk_of_every_gene_ranks_as_one_full_fit_on_standardised_expression(symphony):
    settings = features.resolve_settings({"chunk_genes": N_GENES})
    train, labels = symphony["train"], symphony["labels"][symphony["train"]]
    with CellStore(symphony["store"]) as store:
        scores = features.gene_scores(store, train, labels, settings, chunk_cells=64)
        chunked = features.gene_scores(store, train, labels, {**settings, "chunk_genes": 100}, chunk_cells=64)
    X = symphony["adata"].X[train]
    full = make_pipeline(StandardScaler(with_mean=False), LogisticRegression(C=1.0, max_iter=1000, random_state=0))
    expected = np.abs(full.fit(X, labels)[-1].coef_).max(axis=0)
    np.testing.assert_allclose(scores["score"], expected, rtol=1e-6)
    ranked = features.top_genes(scores, N_GENES)
    order = np.argsort(-expected, kind="stable")
    assert ranked["gene"].tolist() == symphony["adata"].var_names[order].tolist()
    assert ranked["rank"].tolist() == list(range(1, N_GENES + 1)) and set(scores["chunk"]) == {0}
    # three chunks of at most 100 genes: every gene scored once, by its own chunk's model
    assert chunked["chunk"].value_counts().sort_index().tolist() == [100, 100, 40]
    assert chunked["gene"].tolist() == symphony["adata"].var_names.tolist()
    assert not np.allclose(chunked["score"], scores["score"])


@pytest.mark.shared_data
def test_selection_reads_only_the_training_cells(symphony, tmp_path, monkeypatch):
    reads, spans = [], []
    read, gene_scores = CellStore.read, features.gene_scores

    def recording_read(self, rows, layer=None):
        reads.append(np.arange(self.n_obs)[rows])
        return read(self, rows, layer)

    def recording_scores(*args, **kwargs):
        start = len(reads)
        scores = gene_scores(*args, **kwargs)
        spans.append((start, len(reads)))
        return scores

    monkeypatch.setattr(CellStore, "read", recording_read)
    monkeypatch.setattr(features, "gene_scores", recording_scores)
    select(symphony, tmp_path, chunk_genes=100, top_k=20)
    (start, stop), = spans
    ranked_rows = np.concatenate(reads[start:stop])
    assert stop - start == 3 * -(-len(symphony["train"]) // 100)  # 3 gene chunks x row chunks of 100 cells
    assert set(ranked_rows) == set(symphony["train"])  # every training cell, no validation or test cell
    roles = io.read_tsv(symphony["splits"], ["cell_id"]).set_index("cell_id")["cv1"]
    with CellStore(symphony["store"]) as store:  # max_cells: a stratified sample of the training cells
        sampled = features.selection_rows(store, roles, pd.Series(symphony["labels"]), 300, 0)
    assert set(sampled) < set(symphony["train"]) and len(sampled) <= 300 + 10 * 9


def test_top_k_above_the_gene_count_keeps_every_gene_with_a_warning(caplog):
    scores = pd.DataFrame({"gene": ["a", "b", "c"], "score": [0.1, 0.3, 0.3], "chunk": [0, 0, 1]})
    with caplog.at_level(logging.WARNING, logger="sclabel"):
        kept = features.top_genes(scores, 10)
    assert kept["gene"].tolist() == ["b", "c", "a"] and kept["rank"].tolist() == [1, 2, 3]  # a tie: matrix order
    assert "features.top_k 10 is more than the 3 genes" in caplog.text
    assert features.top_genes(scores, 2)["gene"].tolist() == ["b", "c"]
    with pytest.raises(ValueError, match=r"features\.score.*use max_abs or mean_abs"):
        features.resolve_settings({"score": "sum"})


@pytest.mark.shared_data
def test_a_top_variant_trains_and_predicts_on_the_selected_genes_only(symphony, tmp_path):
    assert registry.get("logreg@top").base == "logreg" and registry.base_name("mlp@top") == "mlp"
    selected = select(symphony, tmp_path, chunk_genes=100, top_k=30)
    assert list(selected.columns) == ["gene", "score", "rank", "chunk"] and len(selected) == 30
    assert selected["score"].is_monotonic_decreasing
    with CellStore(tmp_path / "cv1.h5ad") as subset:  # every cell of the split, the selected genes in matrix order
        assert subset.n_obs == symphony["adata"].n_obs
        assert subset.var_names.tolist() == [g for g in symphony["adata"].var_names if g in set(selected["gene"])]
    model_dir, predictions = tmp_path / "model", tmp_path / "test.tsv"
    method_stage("logreg@top", {"C": 1.0}, 0, str(tmp_path / "cv1.h5ad"), symphony["splits"], "cv1", str(model_dir),
                 str(predictions), output_validation=str(tmp_path / "val.tsv"))
    model = load_annotator(model_dir)
    assert model.method == "logreg@top" and sorted(model.genes) == sorted(selected["gene"])
    table = pd.read_csv(predictions, sep="\t").set_index("cell_id")
    assert (table["predicted"] == table["true"]).mean() > 0.6
    # annotation aligns a query with every gene to the model's genes: the same probabilities as on the subset
    query = symphony["full"][table.index].copy()
    query.uns["sclabel"] = {"source": "query", "values": "log1p"}
    scores = score_query(model, query, {"min_gene_overlap": 0.5}, 10_000.0, 50)
    np.testing.assert_allclose(scores.probabilities, table[[f"proba:{c}" for c in model.classes]], rtol=1e-5,
                               atol=1e-8)
    assert scores.overlap == 1.0
