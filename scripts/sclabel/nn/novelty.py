"""Calibration and novelty scores of a trained classifier: temperature scaling, energy, distances in its embedding.

Every score is higher for a cell less like the training cells. The distance scores compare L2-normalised
embeddings with the cosine distance (1 - cosine similarity, in [0, 2]) to a bounded, class-balanced reference
sample of the training cells' embeddings. A deep ensemble's members' disagreement is their mutual information.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar

REJECTIONS = ("max_softmax", "energy", "knn_distance", "centroid_distance", "ensemble_mi")
ENSEMBLE_REJECTIONS = ("ensemble_mi",)  # scores only a deep ensemble (finetune.n_seeds > 1) gives
DEFAULT_REJECTION = "centroid_distance"
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 100.0
QUERY_CHUNK = 1024  # query cells per distance block: a QUERY_CHUNK x reference-cells float32 matrix at a time


def nll(logits: np.ndarray, codes: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of integer labels ``codes`` under softmax(logits / temperature)."""
    scaled = torch.from_numpy(np.asarray(logits, dtype=np.float64) / temperature)
    return torch.nn.functional.cross_entropy(scaled, torch.from_numpy(np.asarray(codes, dtype=np.int64))).item()


def fit_temperature(logits: np.ndarray, codes: np.ndarray) -> float:
    """The temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising the validation NLL (1 unless lower).

    When every validation cell is classified right the NLL has no minimum (it keeps falling as the temperature goes
    to 0, which would make every confidence 1): the temperature stays 1.
    """
    if np.array_equal(np.asarray(logits).argmax(axis=1), codes):
        return 1.0
    found = minimize_scalar(lambda log_t: nll(logits, codes, float(np.exp(log_t))),
                            bounds=(float(np.log(MIN_TEMPERATURE)), float(np.log(MAX_TEMPERATURE))),
                            method="bounded")
    temperature = float(np.exp(found.x))
    return temperature if nll(logits, codes, temperature) < nll(logits, codes, 1.0) else 1.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities softmax(logits / temperature)."""
    return torch.softmax(torch.from_numpy(logits / temperature), dim=1).numpy()


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy -T * logsumexp(logits / T) (Liu et al. 2020): higher for cells unlike the training."""
    return -temperature * torch.logsumexp(torch.from_numpy(logits / temperature), dim=1).numpy()


def per_class_quota(counts: np.ndarray, max_cells: int) -> int:
    """The largest q with sum(min(count, q)) <= ``max_cells`` over the classes present (at least 1)."""
    present = np.sort(counts[counts > 0])
    budget = max_cells
    for i, count in enumerate(present):
        share = budget // (len(present) - i)
        if count > share:
            return max(int(share), 1)
        budget -= count
    return int(present[-1])


def balanced_sample(codes: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_cells`` cells: every cell of the small classes, the same seeded random
    number of each larger class (the most that fits)."""
    if len(codes) <= max_cells:
        return np.arange(len(codes))
    quota = per_class_quota(np.bincount(codes), max_cells)
    order = np.random.default_rng(seed).permutation(len(codes))
    rank = np.empty(len(codes), dtype=np.int64)
    for code in np.unique(codes):
        members = order[codes[order] == code]
        rank[members] = np.arange(len(members))
    return np.flatnonzero(rank < quota)


def l2_normalised(embedding: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    embedding = np.asarray(embedding, dtype=np.float32)
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    return embedding / np.maximum(norms, np.finfo(np.float32).tiny)


def knn_distance(queries: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance of each query embedding to its ``k`` nearest reference embeddings (unit rows)."""
    k = min(k, len(reference))
    queries = l2_normalised(queries)
    parts = []
    for start in range(0, len(queries), QUERY_CHUNK):
        distance = 1.0 - queries[start:start + QUERY_CHUNK] @ reference.T
        parts.append(np.partition(distance, k - 1, axis=1)[:, :k].mean(axis=1))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def class_centroids(reference: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Unit-length mean of each class's unit embeddings [n_classes, dim] (zero for a class with no cells)."""
    sums = np.zeros((n_classes, reference.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, reference)
    return l2_normalised(sums)


def centroid_distance(queries: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine distance of each query embedding to the nearest class centroid."""
    return (1.0 - l2_normalised(queries) @ centroids.T).min(axis=1)


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis, 0 log 0 taken as 0."""
    p = np.asarray(probabilities, dtype=np.float64)
    return -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=-1)


def mutual_information(member_probabilities: np.ndarray) -> np.ndarray:
    """BALD disagreement of ensemble members [cells, members, classes]: entropy of the mean probability minus the
    mean entropy of the members (>= 0; 0 when every member gives the same probabilities)."""
    mean_entropy = entropy(member_probabilities).mean(axis=1)
    return np.maximum(entropy(member_probabilities.mean(axis=1)) - mean_entropy, 0.0)


def joint_embedding(member_embeddings: np.ndarray) -> np.ndarray:
    """Members' embeddings [cells, members, dim] as one [cells, members * dim]: each member's unit-length, side by
    side, scaled by 1/sqrt(members). Unit length, and its cosine similarity is the mean of the members'."""
    cells, members, dim = member_embeddings.shape
    unit = l2_normalised(member_embeddings.reshape(cells * members, dim)).reshape(cells, members * dim)
    return unit / np.float32(np.sqrt(members))
