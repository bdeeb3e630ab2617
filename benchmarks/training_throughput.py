"""Pretraining and fine-tuning throughput (cells/s) and peak memory of each neural method, on CPU or GPU.

Usage: python benchmarks/training_throughput.py [--device auto|cpu|cuda] [--threads 2] [--cells 1200]
           [--data symphony|synthetic|PATH.h5ad] [--genes 20000] [--batch-sizes 128 1024] [--precision fp32 bf16]
           [--epochs 3] [--pretrain-cells N] [--tasks ...]
Data: ``symphony``: ../shared/data/pbmc_symphony.h5ad (labelled, 1,767 genes) and pbmc_donorA_unlabelled.h5ad
(unlabelled); ``synthetic``: ``--cells`` PBMCs x ``--genes`` genes resampled from the shared data by
benchmarks/scale.py's seeded generator (log1p CP10k), which serve as both labelled and unlabelled cells.
Each measurement runs in a fresh process so peak memory is its own; every line also gives the ratio of its
throughput to a logistic-regression fit on (at most 2,000 of) the same cells in the same process (the baseline users
would run). ``--batch-sizes`` and ``--precision`` apply to the fine-tuning tasks and the masked-bin pretraining
(its batch size is the smallest given). The task ``bf16 vs fp32 (mlp)`` trains mlp twice with the same seed, once per
precision, and reports both macro F1s on held-out cells, their argmax agreement, and the largest probability change
when the fp32 model alone predicts under bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import queue as queues
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"
sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
TASKS = ("kmeans pretrain (mlp)", "masked_bins pretrain (transformer)", "fine-tune mlp", "fine-tune transformer",
         "bf16 vs fp32 (mlp)")
BASELINE_CELLS = 2_000
HELD_OUT_CELLS = 2_000


@dataclass(frozen=True)
class Run:
    """One measurement: a task at a batch size and precision on the given data."""

    task: str
    device: str
    threads: int
    cells: int
    data: str  # "symphony" or the path of a synthetic h5ad
    batch_size: int
    precision: str
    epochs: int
    pretrain_cells: int  # masked-bin pretraining's cells (the first ones)


def log1p_cp10k(X):
    """Counts → natural log1p of counts per 10,000 (sparse stays sparse)."""
    import numpy as np
    import scipy.sparse as sp

    totals = np.asarray(X.sum(axis=1)).ravel()
    X = sp.csr_matrix(sp.diags(1e4 / np.maximum(totals, 1e-12)) @ X, dtype=np.float32)
    X.data = np.log1p(X.data)
    return X


def load_data(run: Run):
    """(labelled, unlabelled) AnnData: Symphony + donor A on their shared genes, or the synthetic cells twice."""
    import anndata as ad
    import numpy as np

    if run.data != "symphony":  # an h5ad of counts with obs['cell_type']
        cells = ad.read_h5ad(run.data)
        cells.X = log1p_cp10k(cells.X)
        return cells, cells
    labelled = ad.read_h5ad(SHARED / "pbmc_symphony.h5ad")
    unlabelled = ad.read_h5ad(SHARED / "pbmc_donorA_unlabelled.h5ad")
    unlabelled.X = log1p_cp10k(unlabelled.X)
    genes = labelled.var_names.intersection(unlabelled.var_names)
    rows = np.random.default_rng(0).permutation(labelled.n_obs)[:run.cells]
    return labelled[rows, genes].copy(), unlabelled[:run.cells, genes].copy()


def logreg_rate(X, y) -> float:
    """Cells per second of an L2 logistic-regression fit + predict on at most BASELINE_CELLS cells: the baseline."""
    from sclabel.annotator import LabelledCells
    from sclabel.baselines import BaselineAnnotator

    X, y = X[:BASELINE_CELLS], y[:BASELINE_CELLS]
    start = time.perf_counter()
    BaselineAnnotator("logreg", {}, 0).fit(LabelledCells(X, y)).predict_proba(X)
    return X.shape[0] / (time.perf_counter() - start)


def precision_agreement(genes, X, y, run: Run) -> dict:
    """mlp trained once per precision (same seed): held-out macro F1 of each, argmax agreement, and the largest
    probability change of the fp32 model predicting under bf16 autocast."""
    import numpy as np
    import torch
    from sklearn.metrics import f1_score

    from sclabel.model import CellTypeAnnotator
    from sclabel.nn.encoders import autocast, dense_tensor
    from sclabel.nn.finetune import FinetuneSettings

    n_held = min(HELD_OUT_CELLS, X.shape[0] // 4)
    train, held = slice(n_held, None), slice(0, n_held)
    probabilities, f1 = {}, {}
    for precision in ("fp32", "bf16"):
        model = CellTypeAnnotator(genes, sorted(set(y)), "mlp")
        model.train(X[train], y[train], X[held][:500], y[held][:500],
                    FinetuneSettings(epochs=run.epochs, batch_size=run.batch_size, patience=run.epochs,
                                     precision=precision), seed=0, device=run.device, progress=False)
        probabilities[precision] = model.predict_proba(X[held])
        f1[precision] = f1_score(y[held], np.asarray(model.labels)[probabilities[precision].argmax(1)],
                                 average="macro")
        if precision == "fp32":
            network = model.network.eval()
            x = dense_tensor(X[held], next(network.parameters()).device)
            with torch.no_grad():
                exact = torch.softmax(network(x), 1)
                with autocast(x.device, "bf16"):
                    rounded = torch.softmax(network(x).float(), 1)
            same_weights = float((exact - rounded).abs().max())
    return {"macro_f1_fp32": f1["fp32"], "macro_f1_bf16": f1["bf16"],
            "argmax_agreement": float((probabilities["fp32"].argmax(1) == probabilities["bf16"].argmax(1)).mean()),
            "max_probability_change_same_weights": same_weights}


def measure(run: Run, queue: mp.Queue) -> None:
    """Run one task in this (fresh) process and report throughput and peak memory."""
    import torch

    from sclabel.model import CellTypeAnnotator
    from sclabel.nn.encoders import build_encoder, pick_device
    from sclabel.nn.finetune import FinetuneSettings

    torch.set_num_threads(run.threads)
    logging.basicConfig(level=logging.INFO, format="  %(message)s")  # the loops' per-epoch lines (cells/s)
    labelled, unlabelled = load_data(run)
    device = str(pick_device(run.device))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    y = labelled.obs["cell_type"].astype(str).to_numpy()
    baseline = logreg_rate(labelled.X, y)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    genes = list(labelled.var_names)
    extra: dict = {}
    start = time.perf_counter()
    if run.task == "kmeans pretrain (mlp)":
        from sclabel.nn.kmeans_pretrain import pretrain_kmeans

        pretrain_kmeans({"labelled": labelled.X, "unlabelled": unlabelled.X}, build_encoder("mlp", len(genes), {}),
                        epochs=run.epochs, rounds=2, seed=0, device=device, progress=False)
        cells = 2 * run.epochs * max(labelled.n_obs, unlabelled.n_obs) * 2
    elif run.task == "masked_bins pretrain (transformer)":
        from sclabel.nn.transformer import pretrain_masked_bins

        X = unlabelled.X[:run.pretrain_cells]
        pretrain_masked_bins(build_encoder("transformer", len(genes), {}), X, epochs=1,
                             batch_size=run.batch_size, seed=0, device=device, progress=False,
                             precision=run.precision)
        cells = X.shape[0]
    elif run.task == "bf16 vs fp32 (mlp)":
        extra = precision_agreement(genes, labelled.X, y, run)
        cells = 2 * run.epochs * (labelled.n_obs - min(HELD_OUT_CELLS, labelled.n_obs // 4))
    else:
        kind = "mlp" if "mlp" in run.task else "transformer"
        model = CellTypeAnnotator(genes, sorted(set(y)), kind)
        model.train(labelled.X, y, labelled.X[:200], y[:200],
                    FinetuneSettings(epochs=run.epochs, batch_size=run.batch_size, patience=run.epochs,
                                     precision=run.precision),
                    seed=0, device=device, progress=False)
        cells = run.epochs * labelled.n_obs
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss)
    queue.put({"task": run.task, "device": device, "threads": run.threads, "cells": labelled.n_obs,
               "genes": len(genes), "batch_size": run.batch_size, "precision": run.precision,
               "cells_per_s": cells / seconds, "seconds": seconds, "peak_extra_mb": peak,
               "ratio_to_logreg_fit": (cells / seconds) / baseline, **extra})


def outcome(run: Run, process: mp.Process, queue: mp.Queue) -> dict:
    """The measurement ``process`` reports, or its exit code when it dies without one (killed for memory, say)."""
    while True:
        try:
            return queue.get(timeout=5)
        except queues.Empty:
            if not process.is_alive():
                return {"task": run.task, "batch_size": run.batch_size, "precision": run.precision,
                        "error": f"measurement process ended with exit code {process.exitcode}"}


def runs(args: argparse.Namespace, data: str) -> list[Run]:
    """Every measurement the arguments ask for, in task order."""
    default_batch = {"fine-tune transformer": 16, "masked_bins pretrain (transformer)": 16}
    found = []
    for task in args.tasks:
        batch_sizes = args.batch_sizes or [default_batch.get(task, 128)]
        if task == "masked_bins pretrain (transformer)":
            batch_sizes = [min(batch_sizes)]  # one pretraining run, at the smallest batch asked for
        if task == "kmeans pretrain (mlp)":
            batch_sizes = [128]
        precisions = ["fp32"] if task in ("kmeans pretrain (mlp)", "bf16 vs fp32 (mlp)") else args.precision
        epochs = args.epochs if args.epochs else (1 if "transformer" in task else 10)
        found += [Run(task, args.device, args.threads, args.cells, data, batch, precision, epochs,
                      args.pretrain_cells or args.cells)
                  for batch in batch_sizes for precision in precisions]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cells", type=int, default=1200)
    parser.add_argument("--data", default="symphony",
                        help="symphony, synthetic (generated here) or the path of a synthetic h5ad written before")
    parser.add_argument("--genes", type=int, default=20_000, help="synthetic genes")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    parser.add_argument("--epochs", type=int, default=None, help="default: 10 for mlp tasks, 1 for transformers")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS[:4]))
    parser.add_argument("--pretrain-cells", type=int, default=None, help="masked-bin cells (default: --cells)")
    args = parser.parse_args()
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        data = args.data
        if args.data == "synthetic":
            from scale import generate

            started = time.perf_counter()
            data = str(generate(Path(folder) / "synthetic.h5ad", args.cells, seed=0, n_genes=args.genes))
            print(json.dumps({"generated_cells": args.cells, "genes": args.genes,
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)
        for run in runs(args, data):
            queue = context.Queue()
            process = context.Process(target=measure, args=(run, queue))
            process.start()
            result = outcome(run, process, queue)
            process.join()
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}),
                  flush=True)


if __name__ == "__main__":
    main()
