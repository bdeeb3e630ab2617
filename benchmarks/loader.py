"""Mini-batch loaders over an on-disk CSR matrix: ours (``store.row_blocks`` over a ``RowView``) against annbatch
and scdataset, on a synthetic store of ~50k cells x 20k genes (~1,500 non-zeros per cell).

One epoch of 128-cell batches, shuffled and class-balanced, each loader in a fresh process (so its peak RSS is its
own); cells/s and peak RSS are printed as ratios against ours measured in the same run. Every loader gets the same
read budget (``--buffer-cells`` rows held at once) and reads the same file through anndata's backed CSR dataset.

Ours draws exactly the in-memory path's batches (a uniform shuffle, or class-balanced draws with replacement), so
training from disk is bit-identical to training in memory; annbatch and scdataset sample contiguous blocks / chunks
to read faster and so give different (less random) batches.

    python benchmarks/loader.py                               # generates /tmp/sclabel_loader/store.h5ad once
    PYTHONPATH=/tmp/site python benchmarks/loader.py          # with scdataset installed in /tmp/site
    python benchmarks/loader.py --annbatch-python /tmp/venv312/bin/python   # annbatch needs Python >= 3.12

A loader whose package is missing is reported as not installed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
LOADERS = ("ours", "scdataset", "annbatch")
MODES = ("shuffled", "balanced")
N_CLASSES = 12


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def class_labels(n_cells: int, seed: int) -> np.ndarray:
    """Imbalanced class codes (shares ~ 1/k), in contiguous runs as in a store sorted by cell type."""
    shares = 1 / np.arange(1, N_CLASSES + 1)
    sizes = np.floor(shares / shares.sum() * n_cells).astype(int)
    sizes[0] += n_cells - sizes.sum()
    return np.repeat(np.arange(N_CLASSES), sizes)


def generate(path: Path, n_cells: int, n_genes: int, nnz: int, seed: int, chunk_cells: int = 5000) -> None:
    """Write a synthetic log1p-like store with ``nnz`` +- 20% detected genes per cell, chunk by chunk."""
    import pandas as pd
    import scipy.sparse as sp

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from sclabel.store import RowWriter

    rng = np.random.default_rng(seed)
    labels = class_labels(n_cells, seed)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{c}" for c in labels])},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    with RowWriter(path, obs, var) as writer:
        for start in range(0, n_cells, chunk_cells):
            rows = min(chunk_cells, n_cells - start)
            counts = rng.integers(int(nnz * 0.8), int(nnz * 1.2) + 1, rows)
            indices = np.concatenate([np.sort(rng.choice(n_genes, k, replace=False)) for k in counts])
            data = np.log1p(rng.gamma(1.0, 2.0, counts.sum())).astype(np.float32)
            indptr = np.concatenate([[0], np.cumsum(counts)])
            writer.append(sp.csr_matrix((data, indices, indptr), shape=(rows, n_genes)))


class Rows:
    """A backed matrix with ``len`` (what scdataset indexes)."""

    def __init__(self, X) -> None:
        self.X = X

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, rows: np.ndarray):
        return self.X[rows]


def _ours(path: Path, mode: str, batch_size: int, buffer_cells: int, seed: int) -> Iterator:
    """Our batches: the in-memory path's epoch order, read ``buffer_cells`` rows at a time."""
    import torch

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from sclabel.nn.encoders import iterate_minibatches
    from sclabel.nn.finetune import epoch_order
    from sclabel.store import CellStore, row_blocks

    store = CellStore(path)
    y = store.obs["cell_type"].cat.codes.to_numpy().astype(np.int64)
    order = epoch_order(y, N_CLASSES, "sampler" if mode == "balanced" else "none",
                        torch.Generator().manual_seed(seed))
    batches = list(iterate_minibatches(order, batch_size))
    return (block for _, block in row_blocks(store.view(), batches, buffer_cells))


def _scdataset(path: Path, mode: str, batch_size: int, buffer_cells: int, seed: int) -> Iterator:
    """scdataset's block sampling over the backed CSR matrix, one fetch of ``buffer_cells`` rows at a time."""
    import h5py
    from anndata.io import sparse_dataset
    from scdataset import BlockShuffling, ClassBalancedSampling, scDataset

    file = h5py.File(path, "r")
    labels = np.asarray(file["obs"]["cell_type"]["codes"])
    strategy = (ClassBalancedSampling(labels, block_size=8, total_size=len(labels)) if mode == "balanced"
                else BlockShuffling(block_size=8))
    return iter(scDataset(Rows(sparse_dataset(file["X"])), strategy, batch_size=batch_size,
                          fetch_factor=buffer_cells // batch_size, seed=seed))


def annbatch_copy(path: Path) -> Path:
    """annbatch's sharded zarr copy of the store (its loader does not read h5ad), written once."""
    return path.with_suffix(".annbatch.zarr")


def _convert(path: Path) -> None:
    """Write ``annbatch_copy(path)`` with annbatch's ``write_sharded`` (default 64-row chunks, lz4)."""
    import anndata as ad
    import zarr
    from annbatch import write_sharded

    write_sharded(zarr.open_group(annbatch_copy(path), mode="w", zarr_format=3), ad.read_h5ad(path))


def _annbatch(path: Path, mode: str, batch_size: int, buffer_cells: int, seed: int) -> Iterator:
    """annbatch's chunk sampling (512-row chunks, ``buffer_cells`` rows preloaded) over its zarr copy."""
    import pandas as pd
    import zarr
    from anndata.io import read_elem, sparse_dataset
    from annbatch import Loader
    from annbatch.samplers import RandomSampler, WeightedClassSampler

    group = zarr.open_group(annbatch_copy(path), mode="r")
    labels = pd.Categorical(read_elem(group["obs"])["cell_type"])
    chunk, rng = 512, np.random.default_rng(seed)
    sampler = (WeightedClassSampler(chunk, buffer_cells // chunk, batch_size, classes=labels,
                                    num_samples=len(labels), rng=rng) if mode == "balanced"
               else RandomSampler(chunk, buffer_cells // chunk, batch_size, rng=rng))
    loader = Loader(batch_sampler=sampler, preload_to_gpu=False).add_dataset(sparse_dataset(group["X"]))
    return (output["X"] for output in loader)


WORKERS: dict[str, Callable[..., Iterator]] = {"ours": _ours, "scdataset": _scdataset, "annbatch": _annbatch}


def work(loader: str, path: Path, mode: str, batch_size: int, buffer_cells: int, seed: int) -> dict:
    """One epoch through ``loader`` (set up before the clock starts): cells, seconds, peak RSS (MB); or why not."""
    try:
        if loader == "annbatch" and not annbatch_copy(path).exists():
            started = time.perf_counter()
            _convert(path)
            return {"converted_s": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}
        batches = WORKERS[loader](path, mode, batch_size, buffer_cells, seed)
    except ImportError as err:
        return {"error": f"not installed ({err.name})"}
    before = peak_rss_mb()
    start = time.perf_counter()
    cells = nnz = 0
    for batch in batches:
        cells += batch.shape[0]
        nnz += batch.nnz
    return {"cells": cells, "nnz": nnz, "seconds": time.perf_counter() - start, "rss_start_mb": before,
            "peak_rss_mb": peak_rss_mb()}


def run_worker(python: str, loader: str, args: argparse.Namespace) -> dict:
    """``work`` in a fresh process of ``python``."""
    command = [python, __file__, "--worker", loader, "--mode", args.mode, "--store", str(args.store),
               "--batch-size", str(args.batch_size), "--buffer-cells", str(args.buffer_cells), "--seed",
               str(args.seed)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("/tmp/sclabel_loader/store.h5ad"))
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=1_500, help="mean detected genes per cell")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--buffer-cells", type=int, default=32_768, help="rows each loader holds at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--loaders", nargs="+", choices=LOADERS, default=list(LOADERS), help="ours always runs")
    parser.add_argument("--annbatch-python", default=sys.executable, help="interpreter with annbatch (Python >= 3.12)")
    parser.add_argument("--worker", choices=LOADERS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="shuffled", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(work(args.worker, args.store, args.mode, args.batch_size, args.buffer_cells, args.seed)))
        return
    if not args.store.is_file():
        args.store.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        generate(args.store, args.cells, args.genes, args.nnz, args.seed)
        print(f"wrote {args.store} ({args.store.stat().st_size / 2**30:.2f} GiB) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    print(f"{'mode':<9} {'loader':<10} {'cells/s':>9} {'peak RSS MB':>12} {'epoch growth MB':>16} "
          f"{'cells/s vs ours':>16} {'RSS vs ours':>12}")
    for mode in args.modes:
        args.mode = mode
        results = {name: run_worker(args.annbatch_python if name == "annbatch" else sys.executable, name, args)
                   for name in LOADERS if name == "ours" or name in args.loaders}
        if "converted_s" in results.get("annbatch", {}):
            converted = results["annbatch"]
            print(f"annbatch: wrote its zarr copy in {converted['converted_s']:.0f} s, peak RSS "
                  f"{converted['peak_rss_mb']:.0f} MB", flush=True)
            results["annbatch"] = run_worker(args.annbatch_python, "annbatch", args)
        ours = results["ours"]
        for name, result in results.items():
            if "error" in result:
                print(f"{mode:<9} {name:<10} {result['error']}", flush=True)
                continue
            speed = result["cells"] / result["seconds"]
            ratio = speed / (ours["cells"] / ours["seconds"]) if "error" not in ours else float("nan")
            rss_ratio = result["peak_rss_mb"] / ours["peak_rss_mb"] if "error" not in ours else float("nan")
            growth = result["peak_rss_mb"] - result["rss_start_mb"]
            print(f"{mode:<9} {name:<10} {speed:>9.0f} {result['peak_rss_mb']:>12.0f} {growth:>16.0f} "
                  f"{ratio:>16.2f} {rss_ratio:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
