"""The on-disk cell store: a CSR h5ad written row chunk by row chunk and read back by rows.

The matrices of the data path (``results/data/**.h5ad``) are written uncompressed, with chunked datasets of
``CHUNK_ELEMENTS`` values, so a job reads exactly the rows it uses (anndata's backed ``sparse_dataset``) and never
decompresses the whole file; ``benchmarks/store_read.py`` measures the formats this was chosen against.

* ``RowWriter`` appends CSR row chunks to a new h5ad whose ``obs``/``var`` are known up front, and renames it into
  place only when every row was written.
* ``CellStore`` opens such a file (any h5ad with a CSR ``X``, in fact): ``obs``, ``var_names`` and ``uns`` are read
  at once, the matrix only by rows (``read``, ``chunks``).
* ``RowView`` is a subset of a store's rows that indexes like an in-memory matrix (``view[rows]`` gives CSR rows),
  so training and prediction code runs unchanged on a matrix larger than memory.
* ``row_blocks`` yields the rows of an order (an epoch's shuffled or class-balanced draws) batch by batch, reading
  ``buffer_cells`` rows at a time: the batches are exactly those of the in-memory path, memory is bounded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem, sparse_dataset, write_elem

from sclabel.errors import InputError
from sclabel.io import atomic_path

CHUNK_ELEMENTS = 1 << 18  # values per HDF5 chunk of X/data and X/indices (1 MiB of float32)
DEFAULT_CHUNK_CELLS = 10_000  # rows per chunk when a stage walks a whole matrix
DEFAULT_BUFFER_CELLS = 32_768  # rows read at once when streaming mini-batches
DATASET_KWARGS = {"chunks": (CHUNK_ELEMENTS,)}


def _empty_rows(n_vars: int) -> sp.csr_matrix:
    return sp.csr_matrix((0, n_vars), dtype=np.float32)


class RowWriter:
    """Write an h5ad whose ``X`` (and optional CSR layers) arrive as row chunks, atomically.

    Use as a context manager: ``append`` chunks in row order; on a clean exit the row count is checked against
    ``obs`` and the file is renamed onto ``dest``; on an error nothing is left at ``dest``. ``obs`` is written on
    exit, so per-cell columns computed while appending may be added to ``writer.obs`` before the block ends.
    """

    def __init__(self, dest: str | os.PathLike[str], obs: pd.DataFrame, var: pd.DataFrame,
                 uns: Mapping[str, Any] | None = None, layers: Sequence[str] = ()) -> None:
        self.dest = Path(dest)
        self.obs, self.var, self.uns, self.layers = obs, var, dict(uns or {}), tuple(layers)
        self.rows_written = 0

    def __enter__(self) -> RowWriter:
        self._atomic = atomic_path(self.dest)
        tmp = self._atomic.__enter__()
        self._file = h5py.File(tmp, "w")
        empty = _empty_rows(len(self.var))
        write_elem(self._file, "var", self.var)
        write_elem(self._file, "uns", self.uns)
        write_elem(self._file, "X", empty, dataset_kwargs=DATASET_KWARGS)
        layers = self._file.create_group("layers")
        layers.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        for name in self.layers:
            write_elem(layers, name, empty, dataset_kwargs=DATASET_KWARGS)
        for key in ("obsm", "varm", "obsp", "varp"):
            write_elem(self._file, key, {})
        return self

    def append(self, X: sp.spmatrix, layers: Mapping[str, sp.spmatrix] | None = None) -> None:
        """Append the next rows: ``X`` and one matrix per declared layer, all with the same rows."""
        X = sp.csr_matrix(X, dtype=np.float32)
        if X.shape[1] != len(self.var):
            raise ValueError(f"chunk has {X.shape[1]} columns, the file has {len(self.var)} genes")
        sparse_dataset(self._file["X"]).append(X)
        for name in self.layers:
            sparse_dataset(self._file["layers"][name]).append(sp.csr_matrix((layers or {})[name], dtype=np.float32))
        self.rows_written += X.shape[0]

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self.rows_written != len(self.obs):
                    raise RuntimeError(f"{self.dest}: {self.rows_written} rows written for {len(self.obs)} cells")
                write_elem(self._file, "obs", self.obs)
        except Exception as error:
            exc_type, exc, tb = type(error), error, error.__traceback__
            raise
        finally:
            self._file.close()
            self._atomic.__exit__(exc_type, exc, tb)


def write_store(adata: ad.AnnData, dest: str | os.PathLike[str], chunk_cells: int = DEFAULT_CHUNK_CELLS) -> None:
    """Write an in-memory AnnData (CSR ``X`` and layers) in the store's format."""
    layers = list(adata.layers)
    with RowWriter(dest, adata.obs, adata.var, adata.uns, layers) as writer:
        for start in range(0, adata.n_obs, chunk_cells):
            stop = min(start + chunk_cells, adata.n_obs)
            writer.append(adata.X[start:stop], {name: adata.layers[name][start:stop] for name in layers})


class CellStore:
    """Read-only access to an h5ad's cells by rows; ``obs``, ``var_names`` and ``uns`` are in memory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
            self.obs: pd.DataFrame = read_elem(self._file["obs"])
            self.var: pd.DataFrame = read_elem(self._file["var"])
            self.uns: dict = read_elem(self._file["uns"]) if "uns" in self._file else {}
            self._X = sparse_dataset(self._file["X"])
            self.layers: tuple[str, ...] = tuple(self._file["layers"]) if "layers" in self._file else ()
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(self.path, "X", f"not a cell store with a sparse X ({type(exc).__name__}: {exc})",
                             "rerun the stage that wrote it (delete the file)") from exc
        if self._X.format != "csr":
            raise InputError(self.path, "X", f"matrix is {self._X.format}, not CSR", "rewrite the file with CSR X")

    @property
    def obs_names(self) -> pd.Index:
        return self.obs.index

    @property
    def var_names(self) -> pd.Index:
        return self.var.index

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def n_vars(self) -> int:
        return len(self.var)

    def matrix(self, layer: str | None = None) -> Any:
        """The backed CSR dataset of ``X`` or of a layer."""
        return self._X if layer is None else sparse_dataset(self._file["layers"][layer])

    def read(self, rows: np.ndarray | slice, layer: str | None = None) -> sp.csr_matrix:
        """Rows ``rows`` (positions, any order, repeats allowed) as an in-memory float32 CSR matrix."""
        matrix = self.matrix(layer)
        if isinstance(rows, slice):
            return sp.csr_matrix(matrix[rows], dtype=np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return _empty_rows(self.n_vars)
        unique, inverse = np.unique(rows, return_inverse=True)
        block = sp.csr_matrix(matrix[unique], dtype=np.float32)
        return block if len(unique) == len(rows) and np.array_equal(unique, rows) else block[inverse]

    def chunks(self, rows: np.ndarray | None = None, chunk_cells: int = DEFAULT_CHUNK_CELLS,
               layer: str | None = None) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
        """(row positions, their CSR rows) for ``rows`` (default all, in file order), ``chunk_cells`` at a time."""
        if rows is None:
            for start in range(0, self.n_obs, chunk_cells):
                stop = min(start + chunk_cells, self.n_obs)
                yield np.arange(start, stop), self.read(slice(start, stop), layer)
            return
        rows = np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), chunk_cells):
            part = rows[start:start + chunk_cells]
            yield part, self.read(part, layer)

    def rows_of(self, cell_ids: Sequence[str] | pd.Index) -> np.ndarray:
        """Row positions of the given cell ids (refusing ids the store does not hold)."""
        positions = self.obs_names.get_indexer(pd.Index(cell_ids).astype(str))
        if np.any(positions < 0):
            missing = pd.Index(cell_ids)[positions < 0]
            raise InputError(self.path, "obs_names", f"{len(missing)} cell ids are not in the store, e.g. "
                             f"'{missing[0]}'", "rerun the split stage after the data changed")
        return positions.astype(np.int64)

    def view(self, rows: np.ndarray | None = None) -> RowView:
        """The store's rows ``rows`` (default all) as a matrix-like view read on demand."""
        return RowView(self, np.arange(self.n_obs) if rows is None else np.asarray(rows, dtype=np.int64))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CellStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RowView:
    """A subset of a store's rows indexed like a matrix: ``view[i]`` reads rows ``rows[i]`` from disk as CSR."""

    def __init__(self, store: CellStore, rows: np.ndarray) -> None:
        self.store = store
        self.rows = rows

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.store.n_vars

    def __getitem__(self, index: Any) -> sp.csr_matrix:
        return self.store.read(self.rows[index])


Matrix = sp.spmatrix | sp.sparray | np.ndarray | RowView


def take_rows(X: Any, rows: np.ndarray) -> Any:
    """Rows ``rows`` of ``X``: a narrower ``RowView`` (nothing read) for a store's rows, else the rows in memory."""
    rows = np.asarray(rows, dtype=np.int64)
    return RowView(X.store, X.rows[rows]) if isinstance(X, RowView) else X[rows]


def in_memory(X: Any) -> Any:
    """``X`` itself when it is an in-memory matrix, else all its rows read (a ``RowView`` or another row reader)."""
    return X if isinstance(X, np.ndarray) or sp.issparse(X) else X[np.arange(X.shape[0])]


def row_chunks(X: Any, chunk_cells: int) -> Iterator[Any]:
    """``X``'s rows in order, ``chunk_cells`` at a time, each chunk in memory."""
    for start in range(0, X.shape[0], chunk_cells):
        yield X[np.arange(start, min(start + chunk_cells, X.shape[0]))]


def row_blocks(X: Matrix, batches: Sequence[np.ndarray],
               buffer_cells: int = DEFAULT_BUFFER_CELLS) -> Iterator[tuple[np.ndarray, Any]]:
    """(rows, X[rows]) for each batch of row positions, reading whole batches ``buffer_cells`` rows at a time.

    In-memory matrices are sliced per batch; a ``RowView`` is read one buffer of consecutive batches per disk
    access, so the batches and their order are those of the in-memory path while memory stays bounded.
    """
    if not isinstance(X, RowView):
        for rows in batches:
            yield rows, X[rows]
        return
    pending: list[np.ndarray] = []
    for rows in [*batches, None]:
        if pending and (rows is None or sum(map(len, pending)) + len(rows) > buffer_cells):
            block = X[np.concatenate(pending)]
            offset = 0
            for part in pending:
                yield part, block[offset:offset + len(part)]
                offset += len(part)
            pending = []
        if rows is not None:
            pending.append(np.asarray(rows, dtype=np.int64))
