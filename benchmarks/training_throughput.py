"""Pretraining and fine-tuning throughput (cells/s) and peak memory of each neural method, on CPU or GPU.

Usage: python benchmarks/training_throughput.py [--device auto|cpu|cuda] [--threads 2] [--cells 1200]
Data: ../shared/data/pbmc_symphony.h5ad (labelled, 1,767 genes) and pbmc_donorA_unlabelled.h5ad (unlabelled).
Each measurement runs in a fresh process so peak memory is its own; every line also gives the ratio of its
throughput to a logistic-regression fit on the same cells in the same process (the baseline users would run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"
sys.path.insert(0, str(REPO_ROOT / "scripts"))


def load_data(n_cells: int):
    """Symphony (log1p CP10k) and donor A (counts → log1p CP10k) on their shared genes."""
    import anndata as ad
    import numpy as np
    import scanpy as sc

    labelled = ad.read_h5ad(SHARED / "pbmc_symphony.h5ad")
    unlabelled = ad.read_h5ad(SHARED / "pbmc_donorA_unlabelled.h5ad")
    sc.pp.normalize_total(unlabelled, target_sum=1e4)
    sc.pp.log1p(unlabelled)
    genes = labelled.var_names.intersection(unlabelled.var_names)
    rows = np.random.default_rng(0).permutation(labelled.n_obs)[:n_cells]
    return labelled[rows, genes].copy(), unlabelled[:n_cells, genes].copy()


def logreg_rate(X, y) -> float:
    """Cells per second of an L2 logistic-regression fit: the in-process baseline."""
    from sclabel.annotator import LabelledCells
    from sclabel.baselines import BaselineAnnotator

    start = time.perf_counter()
    BaselineAnnotator("logreg", {}, 0).fit(LabelledCells(X, y)).predict_proba(X)
    return X.shape[0] / (time.perf_counter() - start)


def measure(task: str, device: str, threads: int, n_cells: int, queue: mp.Queue) -> None:
    """Run one task in this (fresh) process and report throughput and peak memory."""
    import torch

    from sclabel.model import CellTypeAnnotator
    from sclabel.nn.encoders import build_encoder, pick_device
    from sclabel.nn.finetune import FinetuneSettings

    torch.set_num_threads(threads)
    labelled, unlabelled = load_data(n_cells)
    device = str(pick_device(device))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    y = labelled.obs["cell_type"].astype(str).to_numpy()
    baseline = logreg_rate(labelled.X, y)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    genes = list(labelled.var_names)
    start = time.perf_counter()
    if task == "kmeans pretrain (mlp)":
        from sclabel.nn.kmeans_pretrain import pretrain_kmeans

        epochs = 10
        pretrain_kmeans({"symphony": labelled.X, "donorA": unlabelled.X}, build_encoder("mlp", len(genes), {}),
                        epochs=epochs // 2, rounds=2, seed=0, device=device, progress=False)
        cells = epochs * max(labelled.n_obs, unlabelled.n_obs) * 2
    elif task == "masked_bins pretrain (transformer)":
        from sclabel.nn.transformer import pretrain_masked_bins

        encoder = build_encoder("transformer", len(genes), {})
        epochs = 1
        pretrain_masked_bins(encoder, unlabelled.X, epochs=epochs, batch_size=16, seed=0, device=device,
                             progress=False)
        cells = epochs * unlabelled.n_obs
    else:
        kind = "mlp" if "mlp" in task else "transformer"
        epochs = 10 if kind == "mlp" else 1
        model = CellTypeAnnotator(genes, sorted(set(y)), kind)
        model.train(labelled.X, y, labelled.X[:200], y[:200],
                    FinetuneSettings(epochs=epochs, batch_size=128 if kind == "mlp" else 16, patience=epochs),
                    seed=0, device=device, progress=False)
        cells = epochs * labelled.n_obs
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss)
    queue.put({"task": task, "device": device, "genes": len(genes), "cells_per_s": cells / seconds,
               "seconds": seconds, "peak_extra_mb": peak, "ratio_to_logreg_fit": (cells / seconds) / baseline})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cells", type=int, default=1200)
    args = parser.parse_args()
    tasks = ["kmeans pretrain (mlp)", "masked_bins pretrain (transformer)", "fine-tune mlp",
             "fine-tune transformer"]
    context = mp.get_context("spawn")
    for task in tasks:
        queue = context.Queue()
        process = context.Process(target=measure, args=(task, args.device, args.threads, args.cells, queue))
        process.start()
        result = queue.get()
        process.join()
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}), flush=True)


if __name__ == "__main__":
    main()
