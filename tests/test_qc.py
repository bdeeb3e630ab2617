"""QC filters and CP10k + natural-log1p normalisation."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sclabel import qc

SETTINGS = {"min_genes": 3, "max_pct_mito": 30.0, "mito_prefix": "MT-", "min_cells": 2, "target_sum": 1e4}


def toy(values: str = "counts") -> ad.AnnData:
    X = np.array([
        [5, 3, 2, 0, 0],   # 3 genes, no mito -> kept
        [1, 1, 0, 0, 8],   # 3 genes, mito 80% -> removed by max_pct_mito
        [0, 0, 4, 0, 0],   # 1 gene -> removed by min_genes
        [2, 2, 2, 1, 1],   # 5 genes, mito 12.5% -> kept
    ], dtype=np.float32)
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame({"dataset": ["toy"] * 4}, index=list("abcd")),
                       var=pd.DataFrame(index=["G1", "G2", "G3", "G4", "MT-ND1"]))
    adata.uns["sclabel"] = {"values": values, "source": "toy.h5ad"}
    return adata


def test_filters_remove_what_they_should_and_report_it():
    kept, table = qc.qc_filter(toy(), SETTINGS, "toy.h5ad")
    assert kept.obs_names.tolist() == ["a", "d"]
    assert kept.var_names.tolist() == ["G1", "G2", "G3"]  # G4 and MT-ND1 are in one kept cell only
    removed = table.set_index("step")["removed"].to_dict()
    assert removed == {"min_genes": 1, "max_pct_mito": 1, "min_cells": 2}
    assert kept.obs["pct_mito"].tolist() == pytest.approx([0.0, 12.5])


def test_counts_are_cp10k_natural_log1p_and_kept_in_a_layer():
    adata = qc.normalise(toy(), 1e4)
    raw = toy().X.toarray()
    expected = np.log1p(raw / raw.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(adata.X.toarray(), expected, rtol=1e-5)
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), raw)
    assert sp.issparse(adata.X)


def test_log1p_input_is_left_as_given():
    adata = toy("log1p")
    before = adata.X.toarray().copy()
    np.testing.assert_array_equal(qc.normalise(adata, 1e4).X.toarray(), before)
    assert "counts" not in adata.layers


def test_mito_percent_of_log_values_uses_expm1():
    adata = toy("log1p")
    adata.X = sp.csr_matrix(np.log1p(toy().X.toarray()))
    np.testing.assert_allclose(qc.mito_percent(adata, "mt-"), [0, 80, 0, 12.5], rtol=1e-5)


def test_outer_join_zero_fills_and_reports():
    first, second = qc.normalise(toy(), 1e4), qc.normalise(toy(), 1e4)
    second = second[:, ["G1", "G2"]].copy()
    second.obs_names = ["e", "f", "g", "h"]
    combined, report = qc.combine([first, second], "outer", "keep", ["one", "two"])
    assert combined.n_vars == 5 and combined.n_obs == 8
    assert combined[["e"], "G3"].X.toarray().item() == 0
    assert report.set_index("dataset").loc["two", "genes_zero_filled"] == 3
    inner, _ = qc.combine([first, second], "inner", "keep", ["one", "two"])
    assert inner.var_names.tolist() == ["G1", "G2"]


def test_renormalised_rescales_each_cell_to_the_target_over_its_genes():
    X = sp.csr_matrix(np.log1p(np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 6.0]], dtype=np.float32)))
    out = qc.renormalised(X, 10.0)
    assert sp.issparse(out) and out.nnz == X.nnz
    expected = np.log1p(np.array([[2.5, 7.5, 0.0], [0.0, 0.0, 0.0], [2.5, 0.0, 7.5]]))
    assert np.allclose(out.toarray(), expected, atol=1e-6)
    assert np.allclose(X.toarray(), np.log1p([[1, 3, 0], [0, 0, 0], [2, 0, 6]]))  # input untouched


def test_combine_renormalises_studies_on_different_scales_to_one():
    small, large = toy(), toy()
    small.X = sp.csr_matrix(np.log1p(small.X.toarray()))
    large.X = sp.csr_matrix(np.log1p(large.X.toarray() * 100))  # the same cells, another library size
    large.obs_names = [f"{c}2" for c in large.obs_names]
    plain, _ = qc.combine([small, large], "inner", "keep", ["small", "large"])
    assert not np.allclose(plain.X[:4].toarray(), plain.X[4:].toarray())
    rescaled, _ = qc.combine([small, large], "inner", "keep", ["small", "large"], renormalise_to=1e4)
    assert np.allclose(rescaled.X[:4].toarray(), rescaled.X[4:].toarray(), atol=1e-4)
    assert np.allclose(np.expm1(rescaled.X.toarray()).sum(axis=1), 1e4, rtol=1e-4)
    assert rescaled.uns["sclabel"]["renormalised_to"] == 1e4
