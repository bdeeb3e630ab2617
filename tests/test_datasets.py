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
from sklearn.metrics import accuracy_score, f1_score

from sclabel import datasets, evaluation, fetch, io, qc, splits
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
    raw, source = datasets.acquire("pbmc", {"source": "builtin:pbmc68k_reduced"}, Path("."), fetch.Limits(),
                                   "config")
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
        datasets.acquire("x", {"source": "builtin:nope"}, Path("."), fetch.Limits(), "config")
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
        datasets.acquire("web", {"source": "https://example.org/a.h5ad"}, Path("."), fetch.Limits(), "config")
    assert_one_line(err, "config", "datasets.web.sha256")


def test_zero_cells_after_qc(tmp_path, counts, cells, labels):
    adata = standard(write_h5ad(tmp_path, counts, cells, {"ct": labels}), label_key="ct")
    settings = {"min_genes": 100, "max_pct_mito": 20, "mito_prefix": "MT-", "min_cells": 1, "target_sum": 1e4}
    with pytest.raises(InputError) as err:
        qc.qc_filter(adata, settings, "toy.h5ad")
    assert_one_line(err, "toy.h5ad", "no cells left", "qc.min_genes")


@pytest.mark.parametrize("join, problem", [("inner", "share no gene names"),
                                           ("outer", "share no gene names (outer join)")])
def test_datasets_sharing_no_genes_are_refused_under_either_join(tmp_path, counts, cells, labels, join, problem):
    first = standard(write_h5ad(tmp_path, counts, cells, {"ct": labels}), label_key="ct")
    second = first.copy()
    second.var_names = [f"X{i}" for i in range(second.n_vars)]
    with pytest.raises(InputError) as err:
        qc.combine([first, second], join, "keep", ["a", "b"])
    assert_one_line(err, "a, b", problem, "harmonise.case")


NA_LIKE = ["NA", "None", "nan", "null"]  # cell types pandas' read_csv would turn into NaN
NA_LIKE_IDS = ["NA", "None", "nan", "null", "001", "1", "1.0", "TRUE"]  # ids pandas would read as NaN, numbers, bool
PASS_ALL = {"min_genes": 1, "max_pct_mito": 100, "mito_prefix": "MT-", "min_cells": 0, "target_sum": 1e4}


def write_csv_dataset(tmp_path: Path, counts, cells, labels: list[str]) -> dict:
    """A CSV expression table with a separate labels table; returns its dataset spec."""
    pd.DataFrame(counts.toarray(), index=cells, columns=GENES).to_csv(tmp_path / "expr.csv")
    pd.Series(labels, index=cells, name="ct").to_csv(tmp_path / "labels.csv")
    return {"source": str(tmp_path / "expr.csv"), "format": "csv", "labels": str(tmp_path / "labels.csv")}


@pytest.mark.parametrize("fmt", ["h5ad", "csv"])
def test_labels_and_ids_pandas_reads_as_missing_round_trip_to_class_counts_and_metrics(tmp_path, counts, fmt):
    labels = NA_LIKE * 2
    spec = ({"source": str(write_h5ad(tmp_path, counts, NA_LIKE_IDS, {"ct": labels}))} if fmt == "h5ad"
            else write_csv_dataset(tmp_path, counts, NA_LIKE_IDS, labels))
    raw, qc_file, combined = (str(tmp_path / name) for name in ("raw.h5ad", "qc.h5ad", "combined.h5ad"))
    datasets.download_stage("toy", {**spec, "label_key": "ct"}, {"retries": 0, "timeout_s": 5.0}, raw,
                            str(tmp_path / "dl"), chunk_cells=3)
    qc.qc_stage(raw, PASS_ALL, qc_file, str(tmp_path / "qc.tsv"), chunk_cells=3)
    qc.harmonise_stage([qc_file], ["toy"], {"gene_join": "inner", "case": "keep", "renormalise": False}, 1e4,
                       combined, str(tmp_path / "genes.tsv"), chunk_cells=3)
    adata = ad.read_h5ad(combined)
    assert adata.obs_names.tolist() == NA_LIKE_IDS and adata.obs["cell_type"].tolist() == labels
    splits_file, class_counts = str(tmp_path / "splits.tsv"), str(tmp_path / "class_counts.tsv")
    settings = {"scheme": "cv", "n_folds": 2, "val_fraction": 0.0, "seed": 0}
    splits.split_stage(combined, settings, splits_file, class_counts)
    assert sorted(splits.read_split(splits_file, "cv1").index) == sorted(NA_LIKE_IDS)
    counts_table = io.read_tsv(class_counts, ["split", "cell_type"])
    assert counts_table.groupby("cell_type")["total"].max().to_dict() == {label: 2 for label in NA_LIKE}

    # a prediction whose true label is "NA" is scored as the class "NA", not as a missing label
    test = splits.read_split(splits_file, "cv1").eq(splits.TEST)
    cells = adata.obs.loc[test[test].index, "cell_type"].astype(str)
    predicted = cells.where(cells != "nan", "NA")  # 'nan' cells predicted as 'NA': 2 of 4 right
    prediction = Path(tmp_path / "predictions/logreg/cv1.tsv")
    prediction.parent.mkdir(parents=True)
    pd.DataFrame({"cell_id": cells.index, "true": cells.to_numpy(), "predicted": predicted.to_numpy(),
                  "confidence": 0.9}).to_csv(prediction, sep="\t", index=False)
    out = [str(tmp_path / f"{name}.tsv") for name in ("metrics", "summary", "per_class", "confusion", "paired")]
    evaluation.evaluate_stage([str(prediction)], class_counts, {"unassigned_threshold": 0.0, "rare_fraction": 0.05},
                              *out)
    scores = io.read_tsv(out[0], ["method"]).set_index("metric")["value"]
    assert scores["known_accuracy"] == pytest.approx(accuracy_score(cells, predicted))
    assert scores["known_macro_f1"] == pytest.approx(f1_score(cells, predicted, labels=sorted(set(cells)),
                                                              average="macro"))
    per_class = io.read_tsv(out[2], ["cell_type"]).set_index("cell_type")
    assert sorted(per_class.index) == sorted(NA_LIKE) and per_class.loc["NA", "precision"] == 0.5


def test_labels_are_stripped_before_the_label_map(tmp_path, counts, cells):
    path = write_h5ad(tmp_path, counts, cells, {"ct": [" T ", "B\t", "NA ", " T"] * 2})
    adata = standard(path, label_key="ct", label_map={" B ": "B cell"})
    assert adata.obs["cell_type"].tolist() == ["T", "B cell", "NA", "T"] * 2


def test_blank_label_is_missing(tmp_path, counts, cells):
    spec = write_csv_dataset(tmp_path, counts, cells, ["T", "  ", "B", "", "T", "B", "T", "B"])
    with pytest.raises(InputError) as err:
        standard(Path(spec["source"]), **spec, label_key="ct")
    assert_one_line(err, spec["labels"], "obs['ct']", "2 cells have no label", f"'{cells[1]}'")


def test_nan_label_in_h5ad_is_refused(tmp_path, counts, cells):
    path = write_h5ad(tmp_path, counts, cells, {"ct": pd.Categorical(["T", None, "B", "B", "T", "B", "T", "B"])})
    with pytest.raises(InputError) as err:
        standard(path, label_key="ct")
    assert_one_line(err, str(path), "obs['ct']", "1 cells have no label", "fill the labels")


@pytest.mark.parametrize("reserved", ["unassigned", " Unassigned "])
def test_reserved_label_is_refused(tmp_path, counts, cells, reserved):
    path = write_h5ad(tmp_path, counts, cells, {"ct": ["T", "B", reserved, "B"] * 2})
    with pytest.raises(InputError) as err:
        standard(path, label_key="ct")
    assert_one_line(err, str(path), "obs['ct']", "2 cells are labelled", "reserved", "datasets.toy.label_map")
    adata = standard(path, label_key="ct", label_map={"Unassigned": "unclassified", "unassigned": "unclassified"})
    assert adata.obs["cell_type"].tolist() == ["T", "B", "unclassified", "B"] * 2


def test_reserved_label_in_a_labels_file_names_that_file(tmp_path, counts, cells):
    spec = write_csv_dataset(tmp_path, counts, cells, ["T", "UNASSIGNED"] * 4)
    with pytest.raises(InputError) as err:
        standard(Path(spec["source"]), **spec, label_key="ct")
    assert_one_line(err, f"{spec['labels']}: obs['ct']: 4 cells are labelled 'UNASSIGNED'", "label_map")


def test_label_map_mapping_onto_the_reserved_label_is_refused(tmp_path, counts, cells, labels):
    path = write_h5ad(tmp_path, counts, cells, {"ct": labels})
    with pytest.raises(InputError) as err:
        standard(path, label_key="ct", label_map={"B": "Unassigned"})
    assert_one_line(err, str(path), "obs['ct']", "4 cells are labelled 'Unassigned'")


def test_label_map_key_yaml_did_not_read_as_text_is_refused(tmp_path, counts, cells, labels):
    path = write_h5ad(tmp_path, counts, cells, {"ct": labels})
    with pytest.raises(InputError) as err:
        standard(path, label_key="ct", label_map={None: "T cell"})  # YAML `null: T cell`
    assert_one_line(err, "config", "datasets.toy.label_map", "None is not text", "quote")


def test_duplicate_ids_in_labels_file_are_refused(tmp_path, counts, cells):
    spec = write_csv_dataset(tmp_path, counts, cells, ["T", "B"] * 4)
    table = pd.read_csv(spec["labels"], dtype=str)
    pd.concat([table, table.iloc[[3]]]).to_csv(spec["labels"], index=False)
    with pytest.raises(InputError) as err:
        standard(Path(spec["source"]), **spec, label_key="ct")
    assert_one_line(err, "labels.csv", "cell ids", "1 duplicate cell ids", f"'{cells[3]}'")


def test_csv_ids_that_read_as_one_number_stay_distinct(tmp_path, counts):
    ids = ["1", "01", "1.0", "001", "NA", "nan", "c7", "c8"]  # read as numbers these would be four copies of 1
    spec = write_csv_dataset(tmp_path, counts, ids, ["T", "B"] * 4)
    adata = standard(Path(spec["source"]), **spec, label_key="ct")
    assert adata.obs_names.tolist() == ids and adata.obs["cell_type"].tolist() == ["T", "B"] * 4


def real_subset(shared_data: Path, tmp_path: Path, name: str, n_cells: int = 100) -> Path:
    """``n_cells`` cells of a real dataset (those with non-integer values first), written to ``tmp_path``."""
    path = tmp_path / f"{name}.h5ad"
    adata = ad.read_h5ad(shared_data / f"{name}.h5ad")
    X = sp.csr_matrix(adata.X)
    fractional = np.add.reduceat(X.data != np.round(X.data), X.indptr[:-1]) * (np.diff(X.indptr) > 0)
    adata[np.argsort(-fractional, kind="stable")[:n_cells]].copy().write_h5ad(path)
    return path


def test_log_normalised_data_declared_counts_is_refused(shared_data, tmp_path):
    path = real_subset(shared_data, tmp_path, "pbmc_symphony")  # log1p CP10k as distributed
    with pytest.raises(InputError) as err:
        standard(path, label_key="cell_type", values="counts")
    assert_one_line(err, str(path), "X:", "look log-normalised", "values: log1p")
    assert standard(path, label_key="cell_type", values="log1p").n_obs == 100


def test_integer_counts_declared_log1p_are_refused(shared_data, tmp_path):
    path = real_subset(shared_data, tmp_path, "pbmc_zheng_sorted")  # raw UMI counts
    with pytest.raises(InputError) as err:
        standard(path, label_key="cell_type", values="log1p")
    assert_one_line(err, str(path), "every value is an integer", "values: counts")


def test_values_that_overflow_a_library_size_are_refused(tmp_path, counts, cells, labels):
    huge = counts.copy()
    huge.data[0] = 3e38  # finite in float32, but a library size of inf: normalisation would zero the cell
    path = write_h5ad(tmp_path, huge, cells, {"ct": labels.to_numpy()})
    with pytest.raises(InputError) as err:
        standard(path, label_key="ct")
    assert_one_line(err, str(path), "X: values up to 3e+38", "largest plausible counts")


@pytest.mark.parametrize(("name", "values", "warning"), [
    ("pancreas_cepo", "counts", "non-integer values under values: counts"),  # a Smart-seq batch's estimated counts
    ("pancreas_xin", "log1p", "per-cell sums of expm1"),  # log-scale, not CP10k
])
def test_plausible_but_unusual_scale_warns_and_is_kept(shared_data, tmp_path, caplog, name, values, warning):
    path = real_subset(shared_data, tmp_path, name)
    with caplog.at_level("WARNING", logger="sclabel"):
        assert standard(path, label_key="cell_type", values=values).n_obs > 0
    assert warning in caplog.text


def test_missing_labels_file_is_one_line(tmp_path, counts, cells):
    spec = write_csv_dataset(tmp_path, counts, cells, ["T", "B"] * 4)
    spec["labels"] = str(tmp_path / "no_such_labels.csv")
    with pytest.raises(InputError) as err:
        standard(Path(spec["source"]), **spec, label_key="ct")
    assert_one_line(err, "no_such_labels.csv", "labels: file not found", "datasets.<name>.labels")


def test_h5ad_without_x_reads_the_declared_counts_layer(tmp_path, counts, cells, labels):
    path = tmp_path / "layers_only.h5ad"
    ad.AnnData(obs=pd.DataFrame({"ct": labels.to_numpy()}, index=cells), var=pd.DataFrame(index=GENES),
               layers={"counts": counts}).write_h5ad(path)
    adata = standard(path, label_key="ct", values="counts")
    np.testing.assert_array_equal(adata.X.toarray(), counts.toarray())
    with pytest.raises(InputError) as err:
        standard(path, label_key="ct", values="log1p")
    assert_one_line(err, str(path), "X: the file has no X matrix", "layers: counts")


def test_labels_differing_only_in_whitespace_form_one_class(tmp_path, counts, cells, caplog):
    written = ["T cell", " T cell", "T  cell", "T cell\t", "B", "B ", "B", "B"]
    path = write_h5ad(tmp_path, counts, cells, {"ct": written})
    with caplog.at_level("WARNING", logger="sclabel"):
        adata = standard(path, label_key="ct", label_map={"T   cell ": "T"})
    assert adata.obs["cell_type"].tolist() == ["T"] * 4 + ["B"] * 4
    assert "whitespace normalised" in caplog.text


