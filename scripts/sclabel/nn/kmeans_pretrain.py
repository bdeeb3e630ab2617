"""Self-supervised encoder pretraining on multi-granularity K-means pseudo-labels (after scPretrain, Zhang et al.)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from torch import nn
from tqdm.auto import tqdm

from sclabel.nn.encoders import Matrix, dense_batch, pick_device, predict_batches, seed_everything

DEFAULT_CLUSTER_SIZES = (50, 100, 200)


def n_clusters(n_cells: int, cluster_size: int) -> int:
    """Number of clusters giving about ``cluster_size`` cells each (at least 2, at most ``n_cells``)."""
    return min(n_cells, max(2, round(n_cells / cluster_size)))


def _principal_components(X: Matrix, n_pcs: int, seed: int) -> np.ndarray:
    """PCA scores of ``X`` (sparse or dense); ``X`` itself when it has at most ``n_pcs`` columns."""
    if X.shape[1] <= n_pcs:
        return X.toarray() if sp.issparse(X) else np.asarray(X)
    n_components = min(n_pcs, min(X.shape) - 1)
    return PCA(n_components=n_components, svd_solver="arpack", random_state=seed).fit_transform(X)


def pseudo_labels(X: Matrix, cluster_sizes: Sequence[int] = DEFAULT_CLUSTER_SIZES, seed: int = 0,
                  n_pcs: int = 50) -> dict[int, np.ndarray]:
    """K-means cluster labels of the cells of ``X`` at each granularity (cells per cluster)."""
    pcs = _principal_components(X, n_pcs, seed)
    return {size: KMeans(n_clusters=n_clusters(X.shape[0], size), n_init=3, random_state=seed)
            .fit_predict(pcs).astype(np.int64)
            for size in cluster_sizes}


def _cycled_batches(n_cells: int, steps: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """[steps, batch] row indices drawn from back-to-back shuffles of ``n_cells`` rows."""
    batch = min(batch_size, n_cells)
    passes = math.ceil(steps * batch / n_cells)
    stream = np.concatenate([rng.permutation(n_cells) for _ in range(passes)])
    return stream[: steps * batch].reshape(steps, batch)


def _round_labels(datasets: dict[str, Matrix], encoder: nn.Module, cluster_sizes: Sequence[int],
                  round_no: int, seed: int) -> dict[str, dict[int, np.ndarray]]:
    """Pseudo-labels per dataset: from the expression in round 1, from the encoder's embedding after."""
    return {name: pseudo_labels(X if round_no == 1 else predict_batches(encoder, X), cluster_sizes, seed)
            for name, X in datasets.items()}


def _train_round(datasets: dict[str, Matrix], encoder: nn.Module, labels: dict[str, dict[int, np.ndarray]],
                 epochs: int, batch_size: int, lr: float, rng: np.random.Generator, device: torch.device,
                 desc: str, progress: bool) -> list[dict]:
    """Train the encoder with fresh linear heads on one round of pseudo-labels; per-epoch stats."""
    heads = nn.ModuleDict({
        name: nn.ModuleList([nn.Linear(encoder.out_dim, int(y.max()) + 1) for y in per_size.values()])
        for name, per_size in labels.items()}).to(device)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *heads.parameters()], lr=lr)
    steps = max(math.ceil(X.shape[0] / batch_size) for X in datasets.values())
    encoder.train()
    stats = []
    for _ in (bar := tqdm(range(epochs), desc=desc, disable=not progress)):
        batches = {name: _cycled_batches(X.shape[0], steps, batch_size, rng) for name, X in datasets.items()}
        sums = dict.fromkeys(datasets, 0.0)
        for step in range(steps):
            losses = {}
            for name, X in datasets.items():
                rows = batches[name][step]
                z = encoder(dense_batch(X, rows, device))
                losses[name] = sum(nn.functional.cross_entropy(head(z), torch.from_numpy(y[rows]).to(device))
                                   for head, y in zip(heads[name], labels[name].values()))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            for name, loss in losses.items():
                sums[name] += loss.item()
        dataset_loss = {name: total / steps for name, total in sums.items()}
        stats.append({"steps": steps, "dataset_loss": dataset_loss,
                      "cells_seen": {name: int(b.size) for name, b in batches.items()}})
        bar.set_postfix(loss=f"{sum(dataset_loss.values()):.3f}")
    return stats


def pretrain_kmeans(datasets: dict[str, Matrix], encoder: nn.Module,
                    cluster_sizes: Sequence[int] = DEFAULT_CLUSTER_SIZES, rounds: int = 2, epochs: int = 10,
                    batch_size: int = 128, lr: float = 1e-3, seed: int = 0, device: str = "auto",
                    progress: bool = True) -> dict:
    """Pretrain ``encoder`` in place on K-means pseudo-labels of every dataset; returns the history.

    Every step draws one batch from each dataset and sums the cross-entropies of all (dataset,
    granularity) heads. Round 1 clusters the expression; each later round re-clusters the encoder's
    embedding and trains fresh heads. History lists per epoch: ``round``, ``loss`` (sum over datasets),
    ``steps``, ``dataset_loss[name]``, ``cells_seen[name]``; and per round ``k[name][size]``.
    """
    seed_everything(seed)
    device = pick_device(str(device))
    encoder.to(device)
    rng = np.random.default_rng(seed)
    history: dict = {"round": [], "loss": [], "steps": [], "k": [],
                     "dataset_loss": {name: [] for name in datasets}, "cells_seen": {name: [] for name in datasets}}
    for round_no in range(1, rounds + 1):
        labels = _round_labels(datasets, encoder, cluster_sizes, round_no, seed)
        history["k"].append({name: {size: int(y.max()) + 1 for size, y in per_size.items()}
                             for name, per_size in labels.items()})
        for epoch in _train_round(datasets, encoder, labels, epochs, batch_size, lr, rng, device,
                                  f"k-means pretrain round {round_no}/{rounds}", progress):
            history["round"].append(round_no)
            history["steps"].append(epoch["steps"])
            history["loss"].append(sum(epoch["dataset_loss"].values()))
            for name in datasets:
                history["dataset_loss"][name].append(epoch["dataset_loss"][name])
                history["cells_seen"][name].append(epoch["cells_seen"][name])
    encoder.eval()
    return history
