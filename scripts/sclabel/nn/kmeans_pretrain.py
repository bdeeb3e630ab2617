"""Self-supervised encoder pretraining on multi-granularity K-means pseudo-labels (after scPretrain, Zhang et al.)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from torch import nn
from tqdm.auto import tqdm

from sclabel.nn.encoders import dense_tensor, penalty, pick_device, predict_batches, seed_everything, time_left
from sclabel.store import DEFAULT_BUFFER_CELLS, DEFAULT_CHUNK_CELLS, Matrix, in_memory, row_blocks, row_chunks

log = logging.getLogger(__name__)

DEFAULT_CLUSTER_SIZES = (50, 100, 200)
MINIBATCH_SIZE = 4096  # cells per mini-batch K-means step


@dataclass(frozen=True)
class ScaleSettings:
    """How pretraining bounds its memory on many cells; below both thresholds results are those of the full fit.

    ``pca_cells``: the PCA is fitted on a seeded sample of this many cells when a dataset has more;
    ``minibatch_above``: mini-batch K-means replaces K-means above this many cells; ``chunk_cells``: rows
    projected or embedded at once; ``buffer_cells``: rows read from disk at once while training streams.
    """

    pca_cells: int = 20_000
    minibatch_above: int = 50_000
    chunk_cells: int = DEFAULT_CHUNK_CELLS
    buffer_cells: int = DEFAULT_BUFFER_CELLS


class Embedded:
    """The rows of ``X`` through ``encoder`` (``batch_size`` cells per forward pass), computed on demand: indexes
    like a dense matrix."""

    def __init__(self, encoder: nn.Module, X: Matrix, batch_size: int) -> None:
        self.encoder, self.X, self.batch_size = encoder, X, batch_size

    @property
    def shape(self) -> tuple[int, int]:
        return self.X.shape[0], self.encoder.out_dim

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return predict_batches(self.encoder, self.X[rows], self.batch_size)


Features = Matrix | Embedded


def n_clusters(n_cells: int, cluster_size: int) -> int:
    """Number of clusters giving about ``cluster_size`` cells each (at least 2, at most ``n_cells``)."""
    return min(n_cells, max(2, round(n_cells / cluster_size)))


def _dense(block: Matrix) -> np.ndarray:
    return block.toarray() if sp.issparse(block) else np.asarray(block)


def randomized_pca(X: Matrix, n_components: int, seed: int, n_iter: int = 7,
                   oversamples: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(mean, principal axes) of sparse or dense ``X`` by randomized SVD of the implicitly centred matrix.

    Subspace iteration after Halko, Martinsson & Tropp (2011), as sklearn's randomized PCA, which refuses
    sparse input; the matrix is never centred (or densified) in memory.
    """
    mean = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
    right = lambda M: X @ M - mean @ M  # noqa: E731  (X - 1 mean) @ M
    left = lambda P: X.T @ P - np.outer(mean, P.sum(axis=0))  # noqa: E731  (X - 1 mean).T @ P
    omega = np.random.default_rng(seed).standard_normal((X.shape[1], n_components + oversamples))
    Q = np.linalg.qr(right(omega))[0]
    for _ in range(n_iter):
        Q = np.linalg.qr(right(np.linalg.qr(left(Q))[0]))[0]
    axes = np.linalg.svd(left(Q).T, full_matrices=False)[2][:n_components]
    return mean, axes


def _principal_components(X: Features, n_pcs: int, seed: int, scale: ScaleSettings) -> np.ndarray:
    """PCA scores of ``X``; ``X`` itself (dense) when it has at most ``n_pcs`` columns.

    Up to ``scale.pca_cells`` cells the PCA (ARPACK) is fitted on all of them; above, a randomized PCA is fitted
    on a seeded random sample of that many cells and applied to all cells ``scale.chunk_cells`` at a time.
    """
    n_cells = X.shape[0]
    chunks = row_chunks(X, scale.chunk_cells)
    if X.shape[1] <= n_pcs:
        return np.concatenate([_dense(chunk) for chunk in chunks])
    if n_cells <= scale.pca_cells:
        n_components = min(n_pcs, min(X.shape) - 1)
        return PCA(n_components=n_components, svd_solver="arpack", random_state=seed).fit_transform(in_memory(X))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n_cells, scale.pca_cells, replace=False))
    mean, axes = randomized_pca(X[sample], min(n_pcs, scale.pca_cells - 1, X.shape[1] - 1), seed)
    axes = axes.astype(np.float32)
    offset = mean.astype(np.float32) @ axes.T
    return np.concatenate([chunk @ axes.T - offset for chunk in chunks])


def _kmeans(n_cells: int, cluster_size: int, seed: int, minibatch_above: int) -> KMeans | MiniBatchKMeans:
    """K-means for ``n_cells`` cells; mini-batch K-means above ``minibatch_above`` cells."""
    k = n_clusters(n_cells, cluster_size)
    if n_cells > minibatch_above:
        return MiniBatchKMeans(n_clusters=k, batch_size=MINIBATCH_SIZE, n_init=3, random_state=seed)
    return KMeans(n_clusters=k, n_init=3, random_state=seed)


def pseudo_labels(X: Features, cluster_sizes: Sequence[int] = DEFAULT_CLUSTER_SIZES, seed: int = 0,
                  n_pcs: int = 50, scale: ScaleSettings = ScaleSettings()) -> dict[int, np.ndarray]:
    """K-means cluster labels of the cells of ``X`` at each granularity (cells per cluster)."""
    pcs = _principal_components(X, n_pcs, seed, scale)
    return {size: _kmeans(X.shape[0], size, seed, scale.minibatch_above).fit_predict(pcs).astype(np.int64)
            for size in cluster_sizes}


def _cycled_batches(n_cells: int, steps: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """[steps, batch] row indices drawn from back-to-back shuffles of ``n_cells`` rows."""
    batch = min(batch_size, n_cells)
    passes = math.ceil(steps * batch / n_cells)
    stream = np.concatenate([rng.permutation(n_cells) for _ in range(passes)])
    return stream[: steps * batch].reshape(steps, batch)


def _round_labels(datasets: dict[str, Matrix], encoder: nn.Module, cluster_sizes: Sequence[int],
                  round_no: int, seed: int, scale: ScaleSettings,
                  batch_size: int) -> dict[str, dict[int, np.ndarray]]:
    """Pseudo-labels per dataset: from the expression in round 1, from the encoder's embedding after."""
    return {name: pseudo_labels(X if round_no == 1 else Embedded(encoder, X, batch_size), cluster_sizes, seed,
                                scale=scale)
            for name, X in datasets.items()}


def _train_round(datasets: dict[str, Matrix], encoder: nn.Module, labels: dict[str, dict[int, np.ndarray]],
                 epochs: int, batch_size: int, lr: float, rng: np.random.Generator, device: torch.device,
                 buffer_cells: int, desc: str, progress: bool) -> list[dict]:
    """Train the encoder with fresh linear heads on one round of pseudo-labels; per-epoch stats.

    Each epoch's batches are drawn up front per dataset and read ``buffer_cells`` rows at a time
    (``store.row_blocks``), so a dataset on disk streams with the batches of the in-memory path.
    """
    heads = nn.ModuleDict({
        name: nn.ModuleList([nn.Linear(encoder.out_dim, int(y.max()) + 1) for y in per_size.values()])
        for name, per_size in labels.items()}).to(device)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *heads.parameters()], lr=lr)
    steps = max(math.ceil(X.shape[0] / batch_size) for X in datasets.values())
    encoder.train()
    stats = []
    epoch_seconds: list[float] = []
    for epoch in (bar := tqdm(range(1, epochs + 1), desc=desc, disable=not progress)):
        started = time.perf_counter()
        batches = {name: _cycled_batches(X.shape[0], steps, batch_size, rng) for name, X in datasets.items()}
        streams = {name: row_blocks(X, batches[name], buffer_cells) for name, X in datasets.items()}
        sums = dict.fromkeys(datasets, 0.0)
        for _step in range(steps):
            losses = {}
            for name, stream in streams.items():
                rows, block = next(stream)
                z = encoder(dense_tensor(block, device))
                losses[name] = penalty(encoder) + sum(
                    nn.functional.cross_entropy(head(z), torch.from_numpy(y[rows]).to(device))
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
        epoch_seconds.append(time.perf_counter() - started)
        log.info("%s, epoch %d/%d: loss %.4f, %s left in the round, %.0f cells/s", desc, epoch, epochs,
                 sum(dataset_loss.values()), time_left(epoch_seconds, epochs - epoch),
                 sum(stats[-1]["cells_seen"].values()) / max(epoch_seconds[-1], 1e-9))
    return stats


def pretrain_kmeans(datasets: dict[str, Matrix], encoder: nn.Module,
                    cluster_sizes: Sequence[int] = DEFAULT_CLUSTER_SIZES, rounds: int = 2, epochs: int = 10,
                    batch_size: int = 128, lr: float = 1e-3, seed: int = 0, device: str = "auto",
                    progress: bool = True, scale: ScaleSettings = ScaleSettings()) -> dict:
    """Pretrain ``encoder`` in place on K-means pseudo-labels of every dataset; returns the history.

    Every step draws one batch from each dataset and sums the cross-entropies of all (dataset,
    granularity) heads. Round 1 clusters the expression; each later round re-clusters the encoder's
    embedding and trains fresh heads. History lists per epoch: ``round``, ``loss`` (sum over datasets),
    ``steps``, ``dataset_loss[name]``, ``cells_seen[name]``; and per round ``k[name][size]``. A dataset may
    be a ``store.RowView``: it is then clustered, embedded and trained on chunk by chunk (``scale``).
    """
    seed_everything(seed)
    device = pick_device(str(device))
    encoder.to(device)
    rng = np.random.default_rng(seed)
    history: dict = {"round": [], "loss": [], "steps": [], "k": [],
                     "dataset_loss": {name: [] for name in datasets}, "cells_seen": {name: [] for name in datasets}}
    for round_no in range(1, rounds + 1):
        labels = _round_labels(datasets, encoder, cluster_sizes, round_no, seed, scale, batch_size)
        history["k"].append({name: {size: int(y.max()) + 1 for size, y in per_size.items()}
                             for name, per_size in labels.items()})
        for epoch in _train_round(datasets, encoder, labels, epochs, batch_size, lr, rng, device,
                                  scale.buffer_cells, f"k-means pretrain round {round_no}/{rounds}", progress):
            history["round"].append(round_no)
            history["steps"].append(epoch["steps"])
            history["loss"].append(sum(epoch["dataset_loss"].values()))
            for name in datasets:
                history["dataset_loss"][name].append(epoch["dataset_loss"][name])
                history["cells_seen"][name].append(epoch["cells_seen"][name])
    encoder.eval()
    return history
