"""Interpretation stages run by Snakemake on the real PBMC and pancreas data."""

from __future__ import annotations

import pandas as pd
import pytest

from workflow_helpers import absolute_paths, load_config, snakemake, write_config

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def symphony_interpretation(shared_data, tmp_path_factory):
    """Top genes, enrichment and marker recall of logreg, mlp and the Wilcoxon reference on Symphony's PBMCs."""
    workdir = tmp_path_factory.mktemp("interpret")
    config = absolute_paths(load_config("pbmc_symphony.yaml"))
    config["methods"] = ["logreg", "mlp"]
    targets = [f"results/interpret/enrichment/{m}" for m in ("logreg", "mlp", "wilcoxon")]
    snakemake(workdir, write_config(workdir, config), *targets, "results/interpret/marker_recall.png")
    return workdir


@pytest.mark.parametrize("method", ["logreg", "mlp", "wilcoxon"])
def test_b_cell_top_genes_are_b_cell_markers(symphony_interpretation, method):
    ranking = pd.read_csv(symphony_interpretation / f"results/interpret/top_genes/{method}.tsv", sep="\t")
    assert list(ranking.columns) == ["method", "attribution", "cell_type", "gene", "score", "rank"]
    top = set(ranking[(ranking["cell_type"] == "B") & (ranking["rank"] <= 20)]["gene"])
    assert top & {"CD79A", "CD79B", "MS4A1", "CD19"}


@pytest.mark.parametrize("method", ["logreg", "mlp", "wilcoxon"])
def test_b_cells_enrich_for_b_cell_sets(symphony_interpretation, method):
    folder = symphony_interpretation / f"results/interpret/enrichment/{method}"
    table = pd.read_csv(folder / "PanglaoDB.tsv", sep="\t")
    best = table[table["cell_type"] == "B"].sort_values("adjusted_p_value").iloc[0]
    assert "B Cells" in best["term"] and best["adjusted_p_value"] < 1e-3
    assert {"Azimuth.tsv", "GO_BP.tsv", "dotplot_B.png"} <= {p.name for p in folder.iterdir()}


def test_marker_recall_curves(symphony_interpretation):
    recall = pd.read_csv(symphony_interpretation / "results/interpret/marker_recall.tsv", sep="\t")
    assert set(recall["method"]) == {"logreg", "mlp", "wilcoxon"}
    b_cells = recall[(recall["cell_type"] == "B") & (recall["method"] == "wilcoxon")].set_index("k")["recall"]
    assert b_cells.is_monotonic_increasing and b_cells.loc[200] > b_cells.loc[5] > 0


def test_pseudobulk_de_recovers_species_differences_and_states_skips(shared_data, tmp_path):
    config = absolute_paths(load_config("pancreas_pseudobulk.yaml"))
    snakemake(tmp_path, write_config(tmp_path, config), "results/interpret/pseudobulk_volcano.png")
    results = pd.read_csv(tmp_path / "results/interpret/pseudobulk_de.tsv", sep="\t")
    skipped = pd.read_csv(tmp_path / "results/interpret/pseudobulk_skipped.tsv", sep="\t")
    assert {"beta", "delta", "macrophage"} <= set(results["cell_type"])
    assert (results["adjusted_p_value"] < 0.05).sum() > 10
    # alpha and activated stellate cells come from a single mouse with >= 5 cells: skipped with the reason stated
    assert set(skipped["cell_type"]) == {"alpha", "activated_stellate"}
    assert skipped["reason"].str.startswith("fewer than 2 samples per condition").all()
    assert not set(skipped["cell_type"]) & set(results["cell_type"])
