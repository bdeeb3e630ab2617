"""Our TabNet encoder (sclabel.nn.tabnet on the shared fine-tuning loop) against pytorch-tabnet's TabNetClassifier.

Usage: python benchmarks/tabnet_choice.py [--genes 2000] [--epochs 20] [--lr 0.02] [--threads 1]
Data: ../shared/data/pbmc_zheng_sorted.h5ad (2,140 FACS-sorted PBMCs, 9 types), log1p CP10k, a stratified 70/10/20
train/validation/test split (seed 0) and the ``--genes`` most variable genes of the training cells. Both models get
the same architecture size (n_d = n_a = 16, 3 steps, gamma 1.3, sparsity 1e-4, batch-norm momentum 0.1), the same
batches (128 cells, class-balanced sampling), learning rate (``--lr``, default TabNet's 0.02), epoch cap, and early stopping on
validation macro F1 (patience 5); ours runs with TabNet's linear output layer and with the workflow's default
scBalance head. Prints test macro F1, Cohen's kappa, wall time and training cells/s of each, and the ratios ours /
theirs. pytorch-tabnet is not a project dependency: without it the script says so and exits.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / "shared" / "data" / "pbmc_zheng_sorted.h5ad"
sys.path.insert(0, str(REPO_ROOT / "scripts"))
SIZE = {"n_d": 16, "n_a": 16, "n_steps": 3, "gamma": 1.3, "lambda_sparse": 1e-4, "momentum": 0.1}
BATCH, PATIENCE, SEED = 128, 5, 0


def split_data(n_genes: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """log1p CP10k Zheng cells split 70/10/20 (stratified, seeded) on the training cells' most variable genes."""
    import anndata as ad
    import scanpy as sc
    from sklearn.model_selection import train_test_split

    adata = ad.read_h5ad(DATA)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    y = adata.obs["cell_type"].astype(str).to_numpy()
    train, test = train_test_split(np.arange(adata.n_obs), test_size=0.2, stratify=y, random_state=SEED)
    train, val = train_test_split(train, test_size=0.125, stratify=y[train], random_state=SEED)
    X = adata.X.tocsr()
    variance = np.asarray(X[train].power(2).mean(0)).ravel() - np.asarray(X[train].mean(0)).ravel() ** 2
    genes = np.sort(np.argsort(-variance)[:n_genes])
    X = X[:, genes].toarray().astype(np.float32)
    return {name: (X[rows], y[rows]) for name, rows in (("train", train), ("val", val), ("test", test))}


def ours(data: dict, epochs: int, lr: float, head: dict) -> tuple[np.ndarray, float, int]:
    """Test predictions, fit seconds and epochs run of sclabel's tabnet encoder with a ClassifierHead of ``head``."""
    from sclabel.model import CellTypeAnnotator
    from sclabel.nn.finetune import FinetuneSettings

    (X, y), (X_val, y_val), (X_test, _) = data["train"], data["val"], data["test"]
    model = CellTypeAnnotator([f"g{i}" for i in range(X.shape[1])], sorted(set(y)), "tabnet", SIZE, head)
    start = time.perf_counter()
    history = model.train(X, y, X_val, y_val, FinetuneSettings(epochs=epochs, batch_size=BATCH, lr=lr,
                                                               patience=PATIENCE, imbalance="sampler"),
                          seed=SEED, device="cpu", progress=False)
    return model.predict(X_test)[0], time.perf_counter() - start, len(history["epoch"])


def theirs(data: dict, epochs: int, lr: float, _head: dict) -> tuple[np.ndarray, float, int]:
    """Test predictions, fit seconds and epochs run of pytorch-tabnet's TabNetClassifier."""
    import torch
    from pytorch_tabnet.metrics import Metric
    from pytorch_tabnet.tab_model import TabNetClassifier
    from sklearn.metrics import f1_score

    class MacroF1(Metric):
        """Validation macro F1, the early-stopping criterion of our loop."""

        _name, _maximize = "macro_f1", True

        def __call__(self, y_true: np.ndarray, y_score: np.ndarray) -> float:
            return f1_score(y_true, y_score.argmax(1), average="macro")

    (X, y), (X_val, y_val), (X_test, _) = data["train"], data["val"], data["test"]
    model = TabNetClassifier(**SIZE, optimizer_fn=torch.optim.AdamW, optimizer_params={"lr": lr}, seed=SEED,
                             device_name="cpu", verbose=0)
    start = time.perf_counter()
    model.fit(X, y, eval_set=[(X_val, y_val)], eval_metric=[MacroF1], max_epochs=epochs, patience=PATIENCE,
              batch_size=BATCH, virtual_batch_size=BATCH, weights=1, drop_last=False)
    return model.predict(X_test), time.perf_counter() - start, len(model.history["loss"])


RUNS = [("ours, linear head", ours, {"hidden_dims": []}),  # TabNet's own output mapping: finetune.head_hidden_dims []
        ("ours, scBalance head", ours, {}),  # the workflow's default head: [256, 128], batch norm, dropout 0.5
        ("pytorch-tabnet", theirs, {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if importlib.util.find_spec("pytorch_tabnet") is None:
        print("skipped: pytorch-tabnet is not installed (it is no project dependency); to compare, use a venv: "
              "python -m venv --system-site-packages VENV && VENV/bin/pip install pytorch-tabnet==4.1.0 --no-deps")
        return
    import torch
    from sklearn.metrics import cohen_kappa_score, f1_score

    torch.set_num_threads(args.threads)
    data = split_data(args.genes)
    y_test = data["test"][1]
    print(f"pbmc_zheng_sorted: {len(data['train'][1])} train / {len(data['val'][1])} val / {len(y_test)} test cells, "
          f"{data['train'][0].shape[1]} genes, {args.threads} thread(s), at most {args.epochs} epochs, lr {args.lr}")
    rows = {}
    for name, fit, head in RUNS:
        predicted, seconds, epochs = fit(data, args.epochs, args.lr, head)
        rows[name] = {"macro_f1": f1_score(y_test, predicted, average="macro"),
                      "kappa": cohen_kappa_score(y_test, predicted), "seconds": seconds,
                      "cells_per_s": len(data["train"][1]) * epochs / seconds, "epochs": epochs}
        print(f"{name:>24}: macro F1 {rows[name]['macro_f1']:.3f}, kappa {rows[name]['kappa']:.3f}, "
              f"{seconds:.1f} s for {epochs} epochs, {rows[name]['cells_per_s']:.0f} training cells/s", flush=True)
    for name in [name for name in rows if name != "pytorch-tabnet"]:
        ratio = {key: rows[name][key] / rows["pytorch-tabnet"][key] for key in ("macro_f1", "kappa", "seconds",
                                                                                "cells_per_s")}
        print(f"{name} / pytorch-tabnet: " + ", ".join(f"{key} {value:.2f}" for key, value in ratio.items()))


if __name__ == "__main__":
    main()
