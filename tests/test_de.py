"""Differential expression: pseudobulk sums, pydeseq2 recovery of a planted fold change, skips, errors, Wilcoxon."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from sclabel.de import TOO_FEW_SAMPLES, pseudobulk, pseudobulk_de, volcano_plot, wilcoxon_ranking
from sclabel.errors import InputError

PLANTED_GENE = "g0"


def simulate(n_samples: int = 6, n_cells: int = 30, n_genes: int = 200, seed: int = 0) -> ad.AnnData:
    """Negative-binomial counts: samples split over conditions A/B, two cell types, g0 x8 in condition B."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 0.25, n_genes)
    base[0] = 2.0
    blocks, obs = [], []
    for sample in range(n_samples):
        condition = "A" if sample < n_samples // 2 else "B"
        sample_effect = rng.lognormal(0.0, 0.15, n_genes)
        for cell_type, scale in (("tcell", 1.0), ("bcell", 1.5)):
            mean = base * sample_effect * scale
            mean[0] *= 8.0 if condition == "B" else 1.0
            blocks.append(rng.negative_binomial(5.0, 5.0 / (5.0 + np.tile(mean, (n_cells, 1)))))
            obs += [{"sample": f"s{sample}", "condition": condition, "cell_type": cell_type}] * n_cells
    return ad.AnnData(sp.csr_matrix(np.vstack(blocks).astype(np.float32)),
                      obs=pd.DataFrame(obs, index=[f"cell{i}" for i in range(len(obs))]),
                      var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


@pytest.fixture(scope="module")
def simulated() -> ad.AnnData:
    """Six samples (3 per condition) x two cell types x 30 cells x 200 genes."""
    return simulate()


def test_pseudobulk_sums_match_groupby(simulated: ad.AnnData) -> None:
    adata = simulated[~((simulated.obs["sample"] == "s1") & (simulated.obs["cell_type"] == "bcell"))
                      | (np.arange(simulated.n_obs) % 30 < 5)].copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    counts, metadata = pseudobulk(adata, "sample", "cell_type", min_cells=10)
    dense = pd.DataFrame(adata.layers["counts"].toarray(), columns=adata.var_names)
    expected = dense.groupby([adata.obs["sample"].to_numpy(), adata.obs["cell_type"].to_numpy()]).sum()
    expected.index = [f"{sample}|{cell_type}" for sample, cell_type in expected.index]
    assert "s1|bcell" not in counts.index and len(counts) == 11
    pd.testing.assert_frame_equal(counts, expected.loc[counts.index].astype(np.int64))
    assert list(metadata.index) == list(counts.index)
    assert (metadata["n_cells"] == 30).all()
    assert (metadata["condition"] == np.where(metadata["sample"] < "s3", "A", "B")).all()


def test_deseq2_recovers_planted_fold_change(simulated: ad.AnnData) -> None:
    results, skipped = pseudobulk_de(simulated, "sample", "condition", ("condition", "B", "A"))
    assert skipped.empty
    assert set(results["cell_type"]) == {"tcell", "bcell"}
    planted = results[results["gene"] == PLANTED_GENE]
    assert len(planted) == 2
    assert np.allclose(planted["log2_fold_change"], 3.0, atol=0.5)
    assert (planted["adjusted_p_value"] < 1e-3).all()
    others = results[results["gene"] != PLANTED_GENE]
    assert (others["adjusted_p_value"].fillna(1.0) < 0.05).mean() < 0.05
    fig = volcano_plot(results[results["cell_type"] == "bcell"], "bcell: B vs A")
    assert fig.axes[0].get_title() == "bcell: B vs A"


def test_genes_below_min_counts_are_not_tested(simulated: ad.AnnData) -> None:
    contrast = ("condition", "B", "A")
    every, _ = pseudobulk_de(simulated, "sample", "condition", contrast, cell_type="tcell")
    tcells = simulated[simulated.obs["cell_type"] == "tcell"]
    totals = pd.Series(np.asarray(tcells.X.sum(axis=0)).ravel(), index=simulated.var_names)
    threshold = int(totals.median())
    filtered, _ = pseudobulk_de(simulated, "sample", "condition", contrast, cell_type="tcell", min_counts=threshold)
    assert set(every["gene"]) == set(totals.index[totals > 0])
    assert set(filtered["gene"]) == set(totals.index[totals >= threshold])
    assert 0 < len(filtered) < len(every)
    planted = filtered.set_index("gene").loc[PLANTED_GENE]
    assert planted["log2_fold_change"] > 2 and planted["adjusted_p_value"] < 1e-3


def test_one_sample_per_condition_is_skipped_with_reason() -> None:
    adata = simulate(n_samples=2, seed=1)
    results, skipped = pseudobulk_de(adata, "sample", "condition", ("condition", "B", "A"), cell_type="bcell")
    assert results.empty
    assert list(skipped["cell_type"]) == ["bcell"]
    assert skipped["reason"].iloc[0].startswith(TOO_FEW_SAMPLES)
    assert TOO_FEW_SAMPLES == "fewer than 2 samples per condition"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"sample_key": "donor"}, "donor"),
    ({"condition_key": "treatment", "contrast": ("treatment", "B", "A")}, "treatment"),
    ({"contrast": ("condition", "C", "A")}, "condition"),
])
def test_bad_columns_give_one_line_input_error(simulated: ad.AnnData, kwargs: dict, field: str) -> None:
    arguments = {"sample_key": "sample", "condition_key": "condition", "contrast": ("condition", "B", "A")} | kwargs
    with pytest.raises(InputError) as err:
        pseudobulk_de(simulated, **arguments)
    assert "\n" not in str(err.value) and err.value.field == field


def test_non_integer_counts_give_input_error(simulated: ad.AnnData) -> None:
    adata = simulated.copy()
    sc.pp.log1p(adata)
    with pytest.raises(InputError, match="raw integer counts"):
        pseudobulk(adata, "sample", "cell_type")


def test_wilcoxon_ranks_b_cell_markers_high(shared_data: Path) -> None:
    adata = ad.read_h5ad(shared_data / "pbmc_zheng_sorted.h5ad")
    keep = adata.obs.groupby("cell_type", observed=True).sample(frac=0.28, random_state=0).index
    adata = adata[keep].copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    ranking = wilcoxon_ranking(adata, groupby="cell_type")
    assert list(ranking.columns) == ["cell_type", "gene", "score", "rank", "log2fc", "adjusted_p_value"]
    bcells = ranking[ranking["cell_type"] == "bcells"].set_index("gene")
    assert len(bcells) == adata.n_vars and bcells["rank"].min() == 1
    assert min(bcells.loc["CD79A", "rank"], bcells.loc["MS4A1", "rank"]) <= 20
    assert bcells.loc["CD79A", "log2fc"] > 1 and bcells.loc["CD79A", "adjusted_p_value"] < 1e-10


def test_pseudobulk_stage_streams_the_store_and_equals_the_in_memory_de(simulated: ad.AnnData, tmp_path: Path) -> None:
    from sclabel.explain import pseudobulk_stage
    from sclabel.store import write_store

    adata = simulated.copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    write_store(adata, tmp_path / "combined.h5ad")
    settings = {"sample_key": "sample", "condition_key": "condition", "contrast": ["condition", "B", "A"],
                "min_cells": 10, "min_counts": 1}
    outputs = [tmp_path / name for name in ("de.tsv", "skipped.tsv", "volcano.png")]
    pseudobulk_stage(str(tmp_path / "combined.h5ad"), settings, *map(str, outputs), chunk_cells=17)
    streamed = pd.read_csv(outputs[0], sep="\t")
    expected, _ = pseudobulk_de(adata, "sample", "condition", ("condition", "B", "A"))
    assert len(streamed) == len(expected) == 2 * adata.n_vars
    np.testing.assert_allclose(streamed["log2_fold_change"].to_numpy(), expected["log2_fold_change"].to_numpy(),
                               rtol=1e-6)
    assert streamed.loc[streamed["gene"] == PLANTED_GENE, "log2_fold_change"].gt(2).all()


def test_streamed_pseudobulk_refuses_non_integer_counts_by_chunk(simulated: ad.AnnData, tmp_path: Path) -> None:
    from sclabel.explain import pseudobulk_stage
    from sclabel.store import write_store

    adata = simulated.copy()
    adata.X = adata.X * 0.5
    write_store(adata, tmp_path / "combined.h5ad")
    settings = {"sample_key": "sample", "condition_key": "condition", "contrast": ["condition", "B", "A"],
                "min_cells": 10, "min_counts": 1}
    with pytest.raises(InputError, match="not raw integer counts"):
        pseudobulk_stage(str(tmp_path / "combined.h5ad"), settings, *(str(tmp_path / n) for n in "abc"),
                         chunk_cells=50)
