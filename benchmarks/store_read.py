"""Read throughput of the cell store's on-disk format against the alternatives, for the jobs' access patterns.

Usage: python benchmarks/store_read.py [--cells 50000] [--genes 20000] [--nnz 1500] [--dir /tmp/store_read]
A synthetic cells x genes CSR matrix (about ``--nnz`` non-zeros per cell, log-scale float32 values, seeded) is
written as a gzip h5ad (anndata's default compressed file), an lzf h5ad, the store's uncompressed chunked h5ad
(``sclabel.store.write_store``) and anndata's zarr, then read back by rows through anndata's backed
``sparse_dataset`` in three patterns: whole matrix in contiguous 10,000-row chunks (QC, harmonise, prediction),
8,192 random rows sorted (a bounded sample: PCA, K-means), and 128-row random batches (mini-batch training).
Each line gives rows/s (best of ``--rounds``) and the ratio to the store's format, measured in this process, plus
the file size and write time. The uncompressed variants with other chunk sizes hold ``X`` only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from anndata.io import sparse_dataset, write_elem

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from sclabel.store import CHUNK_ELEMENTS, write_store  # noqa: E402

STORE = f"store: uncompressed h5ad, {CHUNK_ELEMENTS // 1024}k-value chunks"
CHUNK_VARIANTS = (1 << 12, 1 << 14, 1 << 16, 1 << 18)

CHUNK_ROWS = 10_000
SAMPLE_ROWS = 8_192
BATCH_ROWS = 128
N_BATCHES = 100
N_SAMPLES = 3


def synthetic(n_cells: int, n_genes: int, nnz: int, seed: int = 0) -> ad.AnnData:
    """Random sparse log-expression: ~``nnz`` distinct genes per cell, built 5,000 rows at a time."""
    rng = np.random.default_rng(seed)
    blocks = []
    for start in range(0, n_cells, 5000):
        rows = min(5000, n_cells - start)
        cols = np.sort(rng.integers(0, n_genes, size=(rows, nnz), dtype=np.int32), axis=1)
        fresh = np.ones_like(cols, dtype=bool)
        fresh[:, 1:] = cols[:, 1:] != cols[:, :-1]
        indptr = np.concatenate([[0], np.cumsum(fresh.sum(axis=1))])
        values = np.log1p(rng.geometric(0.4, size=int(indptr[-1]))).astype(np.float32)
        blocks.append(sp.csr_matrix((values, cols[fresh], indptr), shape=(rows, n_genes)))
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    return ad.AnnData(X=sp.vstack(blocks, format="csr"), obs=obs, var=var)


def write_chunked_x(adata: ad.AnnData, path: Path, elements: int) -> None:
    """Only ``X``, uncompressed, in HDF5 chunks of ``elements`` values (the store's layout, another chunk size)."""
    with h5py.File(path, "w") as handle:
        write_elem(handle, "X", adata.X, dataset_kwargs={"chunks": (elements,)})


def writers() -> dict[str, Callable[[ad.AnnData, Path], None]]:
    """Format name -> writer; the store's own format is STORE."""
    chunked = {f"uncompressed h5ad, {n // 1024}k-value chunks": (lambda n: lambda adata, path:
               write_chunked_x(adata, path, n))(n) for n in CHUNK_VARIANTS if n != CHUNK_ELEMENTS}
    return {
        "gzip h5ad": lambda adata, path: adata.write_h5ad(path, compression="gzip"),
        "lzf h5ad": lambda adata, path: adata.write_h5ad(path, compression="lzf"),
        "uncompressed h5ad, contiguous": lambda adata, path: adata.write_h5ad(path),
        STORE: lambda adata, path: write_store(adata, path),
        **chunked,
        "zarr": lambda adata, path: adata.write_zarr(path),
    }


def open_matrix(path: Path):
    """The backed CSR matrix of an h5ad file or zarr store."""
    group = zarr.open_group(path, mode="r") if path.suffix == ".zarr" else h5py.File(path, "r")
    return sparse_dataset(group["X"])


def rows_per_second(read: Callable[[], int]) -> float:
    start = time.perf_counter()
    rows = read()
    return rows / (time.perf_counter() - start)


def patterns(n_cells: int) -> dict[str, Callable[[object], int]]:
    """Access pattern -> a function reading it from a backed matrix and returning the rows read."""
    rng = np.random.default_rng(1)
    samples = [np.sort(rng.choice(n_cells, min(SAMPLE_ROWS, n_cells), replace=False)) for _ in range(N_SAMPLES)]
    batches = [np.sort(rng.choice(n_cells, BATCH_ROWS, replace=False)) for _ in range(N_BATCHES)]

    def chunks(X) -> int:
        return sum(X[start:min(start + CHUNK_ROWS, n_cells)].shape[0] for start in range(0, n_cells, CHUNK_ROWS))

    def sample(X) -> int:
        return sum(X[rows].shape[0] for rows in samples)

    def batch(X) -> int:
        return sum(X[rows].shape[0] for rows in batches)

    return {f"{CHUNK_ROWS:,}-row chunks": chunks, f"{SAMPLE_ROWS:,} random rows": sample,
            f"{BATCH_ROWS}-row random batches": batch}


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=1_500)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/store_read"))
    parser.add_argument("--rounds", type=int, default=3, help="repeats of every read; the best is reported")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    adata = synthetic(args.cells, args.genes, args.nnz)
    print(f"{args.cells:,} cells x {args.genes:,} genes, {adata.X.nnz / args.cells:,.0f} non-zeros per cell")
    paths, written = {}, {}
    for name, write in writers().items():
        path = args.dir / ("x.zarr" if name == "zarr" else f"{''.join(c for c in name if c.isalnum())}.h5ad")
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        start = time.perf_counter()
        write(adata, path)
        paths[name], written[name] = path, time.perf_counter() - start
    del adata
    rates = {name: {} for name in paths}
    for _ in range(args.rounds):  # formats interleaved, best round kept: other load on the machine hurts all alike
        for pattern, read in patterns(args.cells).items():
            for name, path in paths.items():
                rate = rows_per_second(lambda: read(open_matrix(path)))
                rates[name][pattern] = max(rate, rates[name].get(pattern, 0.0))
    store = STORE
    header = ["format", "size MB", "write s"] + [f"{p} rows/s (x store)" for p in rates[store]]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, by_pattern in rates.items():
        cells = [f"{rate:,.0f} ({rate / rates[store][p]:.2f}x)" for p, rate in by_pattern.items()]
        print(f"| {name} | {size_mb(paths[name]):,.0f} | {written[name]:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
