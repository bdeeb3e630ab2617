"""QC filters and CP10k + natural-log1p normalisation."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sclabel import datasets, qc, splits

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


# --- the chunked stages against the in-memory functions, on real data ---------------------------------------------

DOWNLOAD = {"retries": 0, "timeout_s": 5.0}
PANCREAS = {
    "pancreas_xin": {"file": "pancreas_xin.h5ad", "label_key": "cell_type", "values": "log1p"},
    "pancreas_wang": {"file": "pancreas_wang.h5ad", "label_key": "cell_type", "values": "log1p"},
    "pancreas_baron": {"file": "pancreas_baron_toy.h5ad", "label_key": "cell_type", "values": "counts",
                       "obs_filter": {"species": ["human"]}, "label_map": {"activated_stellate": "stellate"}},
}
PBMC = {
    "pbmc_symphony": {"file": "pbmc_symphony.h5ad", "label_key": "cell_type", "batch_key": "protocol",
                      "values": "log1p"},
    "pbmc_donorA": {"file": "pbmc_donorA_unlabelled.h5ad", "values": "counts"},
}


def downloaded(shared_data, tmp_path, specs: dict, chunk_cells: int) -> list[str]:
    """The datasets written by the download stage (as stores), by name."""
    paths = []
    for name, spec in specs.items():
        spec = {key: value for key, value in spec.items() if key != "file"} | {
            "source": str(shared_data / spec["file"])}
        paths.append(str(tmp_path / "raw" / f"{name}.h5ad"))
        datasets.download_stage(name, spec, DOWNLOAD, paths[-1], str(tmp_path / "dl"), chunk_cells)
    return paths


def assert_same_data(expected: ad.AnnData, path: str) -> None:
    """The store at ``path`` holds exactly ``expected``: X, layers, obs, var and uns."""
    actual = ad.read_h5ad(path)
    assert actual.X.shape == expected.X.shape and (sp.csr_matrix(actual.X) != expected.X).nnz == 0
    assert sorted(actual.layers) == sorted(expected.layers)
    for name in expected.layers:
        assert (sp.csr_matrix(actual.layers[name]) != sp.csr_matrix(expected.layers[name])).nnz == 0
    pd.testing.assert_frame_equal(actual.obs, expected.obs)
    pd.testing.assert_frame_equal(actual.var, expected.var)
    assert set(actual.uns) == set(expected.uns)
    assert {key: np.asarray(value).tolist() for key, value in actual.uns["sclabel"].items()} == {
        key: np.asarray(value).tolist() for key, value in expected.uns["sclabel"].items()}


@pytest.mark.parametrize("name", ["pancreas_baron", "pbmc_symphony", "pbmc_donorA"])
def test_qc_stage_by_chunks_equals_in_memory_qc_on_real_data(shared_data, tmp_path, name):
    specs = {**PANCREAS, **PBMC}
    (raw,) = downloaded(shared_data, tmp_path, {name: specs[name]}, chunk_cells=170)
    adata = ad.read_h5ad(raw)
    median_genes = int(np.median(np.diff(adata.X.indptr)))  # so that min_genes removes about half the cells
    settings = {"min_genes": median_genes, "max_pct_mito": 5.0, "mito_prefix": "MT-", "min_cells": 5,
                "target_sum": 1e4}
    qc.qc_stage(raw, settings, str(tmp_path / "qc.h5ad"), str(tmp_path / "qc.tsv"), chunk_cells=97)
    expected, table = qc.qc_filter(adata, settings, adata.uns["sclabel"]["source"])
    expected = qc.normalise(expected, settings["target_sum"])
    assert_same_data(expected, str(tmp_path / "qc.h5ad"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "qc.tsv", sep="\t"), table)
    assert table.set_index("step").loc[["min_genes", "min_cells"], "removed"].gt(0).all()  # the filters bite


@pytest.mark.parametrize(("specs", "harmonise"), [
    (PANCREAS, {"gene_join": "inner", "case": "keep", "renormalise": True}),   # log + counts data, rescaled
    (PBMC, {"gene_join": "labelled", "case": "keep", "renormalise": False}),  # unlabelled donor A zero-filled
    (PBMC, {"gene_join": "outer", "case": "upper", "renormalise": False}),
])
def test_harmonise_stage_by_chunks_equals_combine_on_real_data(shared_data, tmp_path, specs, harmonise):
    settings = {"min_genes": 10, "max_pct_mito": 100, "mito_prefix": "MT-", "min_cells": 0, "target_sum": 1e4}
    qc_files = []
    for name, raw in zip(specs, downloaded(shared_data, tmp_path, specs, chunk_cells=300)):
        qc_files.append(str(tmp_path / f"{name}.qc.h5ad"))
        qc.qc_stage(raw, settings, qc_files[-1], str(tmp_path / f"{name}.tsv"), chunk_cells=250)
    output = str(tmp_path / "combined.h5ad")
    qc.harmonise_stage(qc_files, list(specs), harmonise, 1e4, output, str(tmp_path / "genes.tsv"),
                       chunk_cells=123)
    expected, report = qc.combine([ad.read_h5ad(path) for path in qc_files], harmonise["gene_join"],
                                  harmonise["case"], list(specs), 1e4 if harmonise["renormalise"] else None)
    assert_same_data(expected, output)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "genes.tsv", sep="\t"), report)


def test_split_stage_reads_no_matrix(shared_data, tmp_path, monkeypatch):
    (raw,) = downloaded(shared_data, tmp_path, {"pbmc_symphony": PBMC["pbmc_symphony"]}, chunk_cells=500)
    from sclabel import store

    def no_matrix(*args, **kwargs):
        raise AssertionError("the split stage read the matrix")

    monkeypatch.setattr(store.CellStore, "read", no_matrix)
    monkeypatch.setattr(ad, "read_h5ad", no_matrix)
    settings = {"scheme": "lodo", "lodo_key": "batch", "holdout": None, "n_folds": 3, "val_fraction": 0.1, "seed": 0}
    splits.split_stage(raw, settings, str(tmp_path / "splits.tsv"), str(tmp_path / "classes.tsv"))
    table = pd.read_csv(tmp_path / "splits.tsv", sep="\t", index_col=0)
    assert list(table.columns) == ["lodo_3pv1", "lodo_3pv2", "lodo_5p", "final"] and len(table) == 1200
