"""The on-disk cell store: chunked writes round-trip, row reads match the in-memory matrix, streams keep order."""

from __future__ import annotations

import errno
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sclabel import io
from sclabel.errors import InputError
from sclabel.store import CellStore, RowWriter, row_blocks, write_store


def _adata(n_cells: int = 600, n_genes: int = 40) -> ad.AnnData:
    rng = np.random.default_rng(0)
    X = sp.random(n_cells, n_genes, density=0.2, format="csr", dtype=np.float32, random_state=1)
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["T", "B", "NA"], n_cells))},
                       index=[f"cell{i}" for i in range(n_cells)])
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    adata.layers["counts"] = X * 3
    adata.uns["sclabel"] = {"values": "counts"}
    return adata


def test_chunked_write_round_trips_through_anndata(tmp_path: Path) -> None:
    adata = _adata()
    write_store(adata, tmp_path / "x.h5ad", chunk_cells=70)
    back = ad.read_h5ad(tmp_path / "x.h5ad")
    assert (back.X != adata.X).nnz == 0 and (back.layers["counts"] != adata.layers["counts"]).nnz == 0
    assert back.obs["cell_type"].tolist() == adata.obs["cell_type"].tolist()
    assert back.uns["sclabel"]["values"] == "counts"


def test_rows_read_in_any_order_with_repeats(tmp_path: Path) -> None:
    adata = _adata()
    write_store(adata, tmp_path / "x.h5ad")
    rows = np.random.default_rng(2).integers(0, adata.n_obs, 300)
    with CellStore(tmp_path / "x.h5ad") as store:
        assert (store.read(rows) != adata.X[rows]).nnz == 0
        assert (store.read(rows, layer="counts") != adata.layers["counts"][rows]).nnz == 0
        assert np.array_equal(store.rows_of(["cell5", "cell2"]), [5, 2])
        with pytest.raises(InputError, match="not in the store"):
            store.rows_of(["nope"])


def test_streamed_batches_equal_in_memory_batches(tmp_path: Path) -> None:
    adata = _adata()
    write_store(adata, tmp_path / "x.h5ad")
    subset = np.arange(50, 550)
    batches = np.array_split(np.random.default_rng(3).permutation(len(subset)), 9)
    in_memory = list(row_blocks(adata.X[subset], batches))
    with CellStore(tmp_path / "x.h5ad") as store:
        streamed = list(row_blocks(store.view(subset), batches, buffer_cells=120))
    assert len(streamed) == len(in_memory) == 9
    for (rows_a, a), (rows_b, b) in zip(in_memory, streamed):
        assert np.array_equal(rows_a, rows_b) and (a != b).nnz == 0


def test_a_writer_that_fails_leaves_no_file(tmp_path: Path) -> None:
    adata = _adata()
    with pytest.raises(RuntimeError, match="rows written"):
        with RowWriter(tmp_path / "x.h5ad", adata.obs, adata.var) as writer:
            writer.append(adata.X[:10])
    assert not (tmp_path / "x.h5ad").exists()
    assert not list(tmp_path.iterdir())


def test_full_disk_during_an_atomic_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def fill_disk(self, path, **options):
        Path(path).write_text("cell_id\tpart")  # what reached the disk before it filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", fill_disk)
    with pytest.raises(InputError) as err:
        io.write_tsv(pd.DataFrame({"cell_id": ["a"]}), tmp_path / "out" / "table.tsv")
    with pytest.raises(InputError) as folder_err:
        with io.atomic_folder(tmp_path / "out" / "model") as tmp:
            pd.DataFrame().to_csv(tmp / "weights.tsv")
    for error, name in ((err, "table.tsv"), (folder_err, "model")):
        message = str(error.value)
        assert "\n" not in message and f"{name}: disk: no space left" in message and "Fix: free space" in message
    assert list((tmp_path / "out").iterdir()) == []
