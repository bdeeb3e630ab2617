"""Workflow stages around the neural models: method names, pretraining cells, annotation of new data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sclabel import splits, training
from sclabel.errors import InputError
from workflow_helpers import absolute_paths, assert_summary_matches, load_config, snakemake, write_config


@pytest.mark.parametrize(("method", "parts"), [("mlp", (None, "mlp")), ("kmeans+mlp", ("kmeans", "mlp")),
                                                ("masked_bins+transformer", ("masked_bins", "transformer"))])
def test_method_names(method, parts):
    assert training.parse_method(method) == parts


@pytest.mark.parametrize("method", ["masked_bins+mlp", "kmeans+cnn", "bert"])
def test_bad_method_names_are_refused(method):
    with pytest.raises(InputError, match="methods"):
        training.parse_method(method)


def toy_combined() -> tuple[ad.AnnData, pd.Series]:
    obs = pd.DataFrame({"dataset": pd.Categorical(["a"] * 4 + ["u"] * 2)}, index=[f"c{i}" for i in range(6)])
    adata = ad.AnnData(X=sp.csr_matrix(np.ones((6, 3), dtype=np.float32)), obs=obs)
    roles = pd.Series([splits.TRAIN, splits.VAL, splits.TEST, splits.TEST], index=["c0", "c1", "c2", "c3"])
    return adata, roles


def test_pretraining_excludes_test_cells_and_keeps_unlabelled_ones():
    adata, roles = toy_combined()
    cells = training.pretraining_cells(adata, roles, {"use_test_cells": False, "datasets": None})
    assert {k: adata.obs_names[v].tolist() for k, v in cells.items()} == {"a": ["c0", "c1"], "u": ["c4", "c5"]}


def test_pretraining_may_use_test_cells_when_allowed_and_listed_datasets_only():
    adata, roles = toy_combined()
    cells = training.pretraining_cells(adata, roles, {"use_test_cells": True, "datasets": ["a"]})
    assert {k: len(v) for k, v in cells.items()} == {"a": 4}


def donor_a_query(shared_data) -> dict[str, dict[str, str]]:
    """``annotate.queries`` naming donor A's unlabelled PBMCs."""
    return {"donorA": {"source": str(shared_data / "pbmc_donorA_unlabelled.h5ad"), "values": "counts"}}


@pytest.fixture(scope="module")
def symphony_annotation(shared_data, tmp_path_factory):
    """Train an MLP on all Symphony PBMCs, annotate donor A's unlabelled PBMCs and write their summary page."""
    workdir = tmp_path_factory.mktemp("annotate")
    config = absolute_paths(load_config("pbmc_symphony.yaml"))
    config["methods"] = ["mlp"]
    config["finetune"] = {"epochs": 15}
    config["annotate"] = {"method": "mlp", "queries": donor_a_query(shared_data)}
    snakemake(workdir, write_config(workdir, config), "annotation_summary")
    return workdir, config


def assert_abstains_above_the_validation_threshold(query: ad.AnnData) -> None:
    """Cells are unassigned exactly where the rejection score passes the threshold set on validation cells."""
    threshold = query.uns["sclabel_annotation"]["rejection_threshold"]
    unassigned = query.obs["predicted_cell_type"].astype(str) == "unassigned"
    assert (unassigned == (query.obs["rejection_score"] > threshold)).all()
    assert unassigned.mean() < 0.5
    raw = query.obs["predicted_cell_type_raw"].astype(str)  # the best guess is kept where the label is unassigned
    assert (raw[~unassigned] == query.obs["predicted_cell_type"].astype(str)[~unassigned]).all()
    assert "unassigned" not in set(raw) and set(raw) <= set(query.uns["sclabel_annotation"]["labels"])


def test_annotated_query_has_predictions_confidence_and_embedding(symphony_annotation):
    workdir, _ = symphony_annotation
    query = ad.read_h5ad(workdir / "results/annotate/donorA.h5ad")
    assert query.n_obs == 2896
    assert query.obsm["X_sclabel"].shape == (2896, 200)
    assert query.obs["prediction_confidence"].between(0, 1).all()
    predicted = query.obs["predicted_cell_type"].astype(str)
    assert_abstains_above_the_validation_threshold(query)
    # a PBMC sample: T cells and monocytes are the commonest predictions, as in the reference
    top = predicted[predicted != "unassigned"].value_counts().index[:3].tolist()
    assert {"T_CD4", "Mono_CD14"} & set(top)
    assert 0.5 < query.uns["sclabel_annotation"]["gene_overlap"] < 1.0
    summary = pd.read_csv(workdir / "results/annotate/summary.tsv", sep="\t")
    assert summary["cells"].sum() == 2896


def test_the_summary_page_shows_the_annotations_counts_threshold_and_umap(symphony_annotation):
    workdir, _ = symphony_annotation
    query = ad.read_h5ad(workdir / "results/annotate/donorA.h5ad")
    page = assert_summary_matches(workdir / "results/annotate/donorA.summary.html",
                                  workdir / "results/annotate/donorA.summary.png", query)
    assert "UMAP computed on the method's embedding of the cells (obsm['X_sclabel'], 200 dimensions)" in page
    assert "by <b>mlp</b>" in page and "random_state 0" in page


@pytest.mark.parametrize("method", ["logreg", "celltypist", "consensus"])
def test_any_registered_method_annotates_with_the_same_contract(symphony_annotation, shared_data, tmp_path, method):
    workdir, config = symphony_annotation
    config = {**config, "annotate": {**config["annotate"], "method": method},
              "consensus": {"members": ["mlp", "logreg"]}}
    snakemake(workdir, write_config(tmp_path, config), "annotate")
    query = ad.read_h5ad(workdir / "results/annotate/donorA.h5ad")
    assert query.n_obs == 2896 and query.uns["sclabel_annotation"]["method"] == method
    assert "X_sclabel" not in query.obsm  # these methods have no embedding
    obs = query.obs
    if method == "logreg":  # its rejection score is the default one
        np.testing.assert_allclose(obs["rejection_score"], 1 - obs["prediction_confidence"], atol=1e-9)
    if method == "consensus":  # popV's: the share of its 2 members that disagree with it
        assert set(np.round(obs["rejection_score"], 6)) <= {0.0, 0.5, 1.0}
    if method != "celltypist":  # CellTypist abstains by its own rule
        assert_abstains_above_the_validation_threshold(query)
    predicted = obs["predicted_cell_type"].astype(str)
    top = predicted[predicted != "unassigned"].value_counts().index[:3].tolist()
    assert {"T_CD4", "Mono_CD14"} & set(top)
    model = workdir / f"results/models/{method}/final"
    assert (model / "annotator.json").is_file() and not list(model.glob("*.pkl"))


def test_majority_voting_adds_clusters_and_their_majority_beside_the_per_cell_labels(symphony_annotation,
                                                                                       shared_data, tmp_path):
    workdir, config = symphony_annotation
    config = {**config, "annotate": {**config["annotate"], "queries": donor_a_query(shared_data),
                                     "majority_voting": True}}
    snakemake(workdir, write_config(tmp_path, config), "annotate")
    annotated = ad.read_h5ad(workdir / "results/annotate/donorA.h5ad")
    obs, threshold = annotated.obs, annotated.uns["sclabel_annotation"]["rejection_threshold"]
    predicted, voted = obs["predicted_cell_type"].astype(str), obs["majority_voting"].astype(str)
    # the per-cell labels are kept as without voting: unassigned exactly above the validation-set threshold
    assert ((predicted == "unassigned") == (obs["rejection_score"] > threshold)).all()
    # every cluster carries one voted label, its commonest per-cell prediction
    frame = pd.DataFrame({"cluster": obs["over_clustering"].astype(str), "predicted": predicted, "voted": voted})
    assert frame["cluster"].nunique() > 9
    assert (frame.groupby("cluster")["voted"].nunique() == 1).all()
    counts = frame.groupby(["cluster", "predicted"]).size()
    voted_count = counts.reindex(pd.MultiIndex.from_frame(frame[["cluster", "voted"]])).to_numpy()
    assert (voted_count == frame["cluster"].map(counts.groupby(level="cluster").max()).to_numpy()).all()
    summary = pd.read_csv(workdir / "results/annotate/summary.tsv", sep="\t").set_index("predicted_cell_type")
    assert summary["cells"].sum() == summary["voted_cells"].sum() == len(obs)
    assert (summary["voted_cells"] == voted.value_counts().reindex(summary.index, fill_value=0)).all()


def test_annotation_refuses_a_query_with_too_few_model_genes(symphony_annotation, shared_data, tmp_path):
    workdir, config = symphony_annotation
    config["annotate"]["queries"] = {"mouse": {"source": str(shared_data / "tm_immune_mouse.h5ad"),
                                               "label_key": "cell_type"}}
    result = snakemake(workdir, write_config(tmp_path, config), "annotate", check=False)
    assert result.returncode != 0
    log = (workdir / "results/logs/annotate.log").read_text().strip().splitlines()
    assert "tm_immune_mouse.h5ad: genes: only" in log[-1] and "Fix:" in log[-1]
    assert not (workdir / "results/annotate/mouse.h5ad").exists()


def test_masked_bins_transformer_runs_end_to_end(tmp_path):
    config = load_config("masked_bins_small.yaml")
    snakemake(tmp_path, write_config(tmp_path, config), "results/benchmark/summary.tsv")  # the benchmark only
    summary = pd.read_csv(tmp_path / "results/benchmark/summary.tsv", sep="\t").set_index(["method", "metric"])
    assert summary.loc[("masked_bins+transformer", "known_kappa"), "n_splits"] == 2
    # it learns: the majority-class control has kappa 0 and macro F1 0.05 on these data
    assert summary.loc[("masked_bins+transformer", "known_kappa"), "mean"] > 0.2
    assert summary.loc[("masked_bins+transformer", "known_macro_f1"), "mean"] > 0.15
