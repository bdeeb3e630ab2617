"""Reading every supported format into the standard form, and one-line errors for bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from sclabel import datasets, qc
from sclabel.errors import InputError

GENES = [f"G{i}" for i in range(6)] + ["MT-CO1"]


@pytest.fixture
def counts() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    return sp.csr_matrix(rng.poisson(2.0, size=(8, len(GENES))).astype(np.float32))


@pytest.fixture
def cells() -> list[str]:
    return [f"AAAC{i}-1" for i in range(8)]


@pytest.fixture
def labels(cells) -> pd.Series:
    return pd.Series(["T", "B"] * 4, index=cells)


def standard(path: Path, **spec) -> ad.AnnData:
    """The dataset as the download stage writes it (h5ad sources 3 rows at a time), read back."""
    spec = {"source": str(path), "values": "counts", **spec}
    output = path.parent / "out" / "toy.h5ad"
    datasets.download_stage("toy", spec, {"retries": 0, "timeout_s": 5.0}, str(output), str(path.parent / "dl"),
                            chunk_cells=3)
    return ad.read_h5ad(output)


def write_h5ad(tmp_path: Path, X, cells, obs: dict | None = None) -> Path:
    path = tmp_path / "toy.h5ad"
    ad.AnnData(X=X, obs=pd.DataFrame(obs or {}, index=cells), var=pd.DataFrame(index=GENES)).write_h5ad(path)
    return path


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message and "Fix:" in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_builtin_pbmc68k_has_labels_and_log_values():
    raw, source = datasets.acquire("pbmc", {"source": "builtin:pbmc68k_reduced"}, Path("."), 0, 1.0, "config")
    adata = datasets.standardise(raw, {"label_key": "bulk_labels", "values": "log1p"}, "pbmc", source)
    assert adata.shape == (700, 765)
    assert adata.obs["cell_type"].nunique() == 10
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32
    assert (adata.obs["dataset"] == "pbmc").all() and (adata.obs["batch"] == "pbmc").all()


def test_h5ad_round_trip_with_batch_and_donor(tmp_path, counts, cells, labels):
    path = write_h5ad(tmp_path, counts, cells, {"ct": labels, "chem": ["v2"] * 8, "who": ["d1", "d2"] * 4})
    adata = standard(path, label_key="ct", batch_key="chem", donor_key="who")
    np.testing.assert_array_equal(adata.X.toarray(), counts.toarray())
    assert adata.obs["cell_type"].tolist() == labels.tolist()
    assert adata.obs["batch"].unique().tolist() == ["v2"]
    assert adata.obs["donor"].tolist() == ["d1", "d2"] * 4


def test_h5ad_streamed_by_chunks_equals_the_in_memory_form(tmp_path, counts, cells, labels):
    obs = {"ct": labels, "species": pd.Categorical(["human", "mouse"] * 4)}
    for X in (counts, counts.toarray()):  # CSR and dense X stream alike
        path = write_h5ad(tmp_path, X, cells, obs)
        spec = {"source": str(path), "values": "counts", "label_key": "ct", "obs_filter": {"species": ["human"]}}
        adata = standard(path, **{key: value for key, value in spec.items() if key != "source"})
        expected = datasets.standardise(ad.read_h5ad(path), spec, "toy", str(path))
        assert adata.n_obs == 4 and (adata.X != expected.X).nnz == 0
        pd.testing.assert_frame_equal(adata.obs, expected.obs)
        assert adata.obs["species"].cat.categories.tolist() == ["human"]  # as adata[keep] leaves it
        with h5py.File(tmp_path / "out" / "toy.h5ad") as handle:
            assert handle["X"]["data"].compression is None and handle["X"]["data"].chunks is not None


def test_10x_mtx_folder(tmp_path, counts, cells, labels):
    folder = tmp_path / "filtered_feature_bc_matrix"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as handle:
        scipy.io.mmwrite(handle, counts.T.tocoo())
    with gzip.open(folder / "features.tsv.gz", "wt") as handle:
        handle.writelines(f"ENSG{i}\t{g}\tGene Expression\n" for i, g in enumerate(GENES))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as handle:
        handle.writelines(f"{c}\n" for c in cells)
    labels.rename("ct").to_csv(tmp_path / "labels.tsv", sep="\t")
    adata = standard(folder, format="10x_mtx", labels=str(tmp_path / "labels.tsv"), label_key="ct")
    np.testing.assert_array_equal(adata.X.toarray(), counts.toarray())
    assert adata.var_names.tolist() == GENES
    assert adata.obs["cell_type"].tolist() == labels.tolist()


def test_10x_h5(tmp_path, counts, cells, labels):
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group["data"], group["indices"], group["indptr"] = counts.data, counts.indices, counts.indptr
        group["shape"] = np.array([len(GENES), len(cells)])
        group["barcodes"] = np.array(cells, dtype="S")
        features = group.create_group("features")
        features["id"] = np.array([f"ENSG{i}" for i in range(len(GENES))], dtype="S")
        features["name"] = np.array(GENES, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * len(GENES), dtype="S")
        features["genome"] = np.array(["GRCh38"] * len(GENES), dtype="S")
    labels.rename("ct").to_csv(tmp_path / "labels.csv")
    adata = standard(path, format="10x_h5", labels=str(tmp_path / "labels.csv"), label_key="ct")
    np.testing.assert_array_equal(adata.X.toarray(), counts.toarray())
    assert adata.obs_names.tolist() == cells


@pytest.mark.parametrize("orientation", ["cells_by_genes", "genes_by_cells"])
def test_csv_with_labels_file_in_chunks(tmp_path, counts, cells, labels, orientation, monkeypatch):
    monkeypatch.setattr(datasets, "CSV_CHUNK_ROWS", 3)  # force several chunks on a small table
    table = pd.DataFrame(counts.toarray(), index=cells, columns=GENES)
    (table if orientation == "cells_by_genes" else table.T).to_csv(tmp_path / "expr.csv")
    labels.rename("ct").to_csv(tmp_path / "labels.csv")
    adata = standard(tmp_path / "expr.csv", format="csv", orientation=orientation,
                     labels=str(tmp_path / "labels.csv"), label_key="ct")
    np.testing.assert_array_equal(adata.X.toarray(), counts.toarray())
    assert adata.obs["cell_type"].tolist() == labels.tolist()


def test_file_url_source(tmp_path, counts, cells, labels):
    path = write_h5ad(tmp_path, counts, cells, {"ct": labels})
    adata = standard(Path(path), source=f"file://{path}", label_key="ct")
    assert adata.n_obs == 8


def test_missing_label_column(tmp_path, counts, cells):
    path = write_h5ad(tmp_path, counts, cells, {"celltype": ["T"] * 8})
    with pytest.raises(InputError) as err:
        standard(path, label_key="cell_type")
    assert_one_line(err, str(path), "obs['cell_type']", "celltype")


def test_unknown_builtin_source():
    with pytest.raises(InputError) as err:
        datasets.acquire("x", {"source": "builtin:nope"}, Path("."), 0, 1.0, "config")
    assert_one_line(err, "config", "builtin:nope", "builtin:pbmc68k_reduced")


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as err:
        standard(tmp_path / "absent.h5ad")
    assert_one_line(err, "absent.h5ad", "file not found")


def test_non_finite_values(tmp_path, counts, cells, labels):
    X = counts.toarray()
    X[2, 3] = X[6, 1] = np.nan
    path = write_h5ad(tmp_path, sp.csr_matrix(X), cells, {"ct": labels})
    with pytest.raises(InputError) as err:
        standard(path, label_key="ct")
    assert_one_line(err, str(path), "X", "2 non-finite")  # counted over every chunk


def test_negative_counts(tmp_path, counts, cells, labels):
    X = counts.toarray()
    X[7, 0] = -1  # in the last chunk: nothing may be kept
    path = write_h5ad(tmp_path, sp.csr_matrix(X), cells, {"ct": labels})
    with pytest.raises(InputError) as err:
        standard(path, label_key="ct")
    assert_one_line(err, str(path), "negative counts")
    assert not list((tmp_path / "out").iterdir())


def test_duplicate_cell_ids(tmp_path, counts, labels):
    path = write_h5ad(tmp_path, counts, ["same"] * 2 + [f"c{i}" for i in range(6)], {"ct": labels.to_numpy()})
    with pytest.raises(InputError) as err:
        standard(path, label_key="ct")
    assert_one_line(err, str(path), "duplicate cell ids", "'same'")


def test_corrupt_h5ad(tmp_path):
    path = tmp_path / "broken.h5ad"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    with pytest.raises(InputError) as err:
        standard(path)
    assert_one_line(err, str(path), "not a readable h5ad")


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.h5ad"
    ad.AnnData(X=sp.csr_matrix((0, 3), dtype=np.float32), var=pd.DataFrame(index=["a", "b", "c"])).write_h5ad(path)
    with pytest.raises(InputError) as err:
        standard(path)
    assert_one_line(err, str(path), "empty")


def test_missing_batch_column(tmp_path, counts, cells, labels):
    path = write_h5ad(tmp_path, counts, cells, {"ct": labels})
    with pytest.raises(InputError) as err:
        standard(path, label_key="ct", batch_key="protocol")
    assert_one_line(err, str(path), "obs['protocol']", "batch_key")


def test_url_without_checksum():
    with pytest.raises(InputError) as err:
        datasets.acquire("web", {"source": "https://example.org/a.h5ad"}, Path("."), 0, 1.0, "config")
    assert_one_line(err, "config", "datasets.web.sha256")


def test_zero_cells_after_qc(tmp_path, counts, cells, labels):
    adata = standard(write_h5ad(tmp_path, counts, cells, {"ct": labels}), label_key="ct")
    settings = {"min_genes": 100, "max_pct_mito": 20, "mito_prefix": "MT-", "min_cells": 1, "target_sum": 1e4}
    with pytest.raises(InputError) as err:
        qc.qc_filter(adata, settings, "toy.h5ad")
    assert_one_line(err, "toy.h5ad", "no cells left", "qc.min_genes")


def test_no_shared_genes(tmp_path, counts, cells, labels):
    first = standard(write_h5ad(tmp_path, counts, cells, {"ct": labels}), label_key="ct")
    second = first.copy()
    second.var_names = [f"X{i}" for i in range(second.n_vars)]
    with pytest.raises(InputError) as err:
        qc.combine([first, second], "inner", "keep", ["a", "b"])
    assert_one_line(err, "a, b", "share no gene names")
