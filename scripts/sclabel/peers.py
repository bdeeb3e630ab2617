"""Published annotators run as peers of the workflow's methods: CellTypist and SingleR (BiocPy ``singler``).

A peer is trained on the split's train + validation cells of the workflow's preprocessed matrix and predicts its
test cells, exactly like a baseline, and its predictions follow the same contract (``pipeline.predictions_table``).
``celltypist_fit`` and ``singler_fit`` take the training cells x genes matrix (in memory or a store's ``RowView``),
the training labels, the gene names, a seed and the peer's settings (defaults in ``DEFAULTS``; unknown keys refused)
and return (a function giving test cells' class probabilities, classes) with the classes sorted, as
``baselines.fit_predict_baseline`` does; ``celltypist_predict`` / ``singler_predict`` do both steps in memory.

Each peer's package is imported only inside its own function (``import_peer``), so each Snakemake rule needs only
its own peer's package in its conda env (``envs/celltypist.yaml``, ``envs/singler.yaml``).

A peer that cannot run on the data raises ``PeerNotRunnable``; ``peer_stage`` then writes a one-column
``not_run`` record instead of predictions, and the evaluation shows the method as ``not run: <reason>`` in
``summary.tsv`` rather than failing the sweep or leaving the method out. Reasons: the package is not installed in
the running environment; CellTypist's expression check fails; CellTypist's full-batch logistic regression
(``use_SGD: false``) needs scikit-learn < 1.8.

CellTypist input. CellTypist expects natural-log1p expression normalised to 10,000 counts per cell over all genes,
and refuses training data whose first cell does not sum to 10,000 +/- 1 after ``expm1``. The workflow's matrix is
log1p CP10k per cell (``qc.target_sum``) before genes are harmonised across datasets, and sources given as log values
often keep a gene subset (Symphony's 1,767 variable genes sum to 1,750-7,200 per cell), so the sums are short of
10,000. With ``renormalise: true`` (default) each cell is rescaled over the genes present:
``log1p(10000 * expm1(x) / sum(expm1(x)))``, per cell, so training and test cells never mix. This is valid only
when ``expm1(x)`` is proportional to the cell's expression, i.e. ``x`` is a natural log1p of a per-cell normalised
value: values above ``log1p(target_sum)`` (CellTypist's own bound is 9.22 = log1p(10,000)) or below 0 mean another
scale (log2, scaled data) and the peer is reported as not runnable. With ``renormalise: false`` the matrix is passed
unchanged and CellTypist's own check decides.

CellTypist probabilities. CellTypist scores each class one-vs-rest (``decision_function``) and reports
``expit(score)`` per class, which does not sum to 1; the probabilities here are those values divided by their sum
per cell, computed from the scores in log space (``expit_shares``): SGD models give scores of -3,000 and below, where
``expit`` itself underflows to 0 for every class. The predicted class (the largest score) is unchanged.

SingleR probabilities. SingleR scores each reference label by a quantile (``quantile``) of the Spearman correlations
between the cell and that label's reference cells over marker genes, then fine-tunes among the labels within
``fine_tune_threshold`` of the best. The probabilities are a softmax of the scores divided by ``temperature``
(correlation gaps between the first and second label are typically 0.01-0.1); when fine-tuning picks a label other
than the top-scoring one, the two labels' probabilities are swapped, so the predicted class is SingleR's label and
the probabilities are a permutation of the softmax. SingleR is deterministic; the seed is unused.

At scale. Both peers hold their training matrix in memory, so above ``max_nnz`` stored values in the split's
training matrix each trains on a seeded stratified sample of the training cells (``baselines.stratified_sample``,
classes in proportion, at least 10 cells of each) holding about ``max_nnz`` values; test cells are always all
predicted, ``chunk_cells`` at a time (CellTypist's ``annotate`` takes them dense, in pieces of ``DENSE_BYTES``). Above
``large_data_cells`` training cells CellTypist runs in its own large-data mode (``use_SGD``, ``mini_batch``,
``with_mean: false`` so the sparse matrix is never densified), whatever those three settings say; above
``aggregate_cells`` SingleR builds its reference from aggregated profiles (``train_single(aggregate=True)``:
k-means within each label, ``n ** aggregate_power`` profiles per label of n cells; needs ``scranpy``). The job's log
says which mode ran (``scale mode: ...``). Measured peaks (20k genes, 53k training cells): CellTypist 3.05 GB on a
50M-value sample (its float64 copies: ~60 bytes per value, hence its default of 30M), SingleR aggregated 1.24 GB.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel import io, qc
from sclabel.baselines import stored_values, stratified_sample
from sclabel.errors import InputError
from sclabel.metrics import NOT_RUN
from sclabel.pipeline import predict_split, read_split
from sclabel.store import DEFAULT_CHUNK_CELLS, CellStore, in_memory, row_chunks, take_rows

log = logging.getLogger("sclabel")

CONFIG = "config"
CP10K = 10_000.0
# CellTypist 1.7.1's own bound: annotate() refuses a matrix with values above 9.22 (log1p(10,000) = 9.2104)
BOUND_TOLERANCE = 0.01
DEFAULTS: dict[str, dict[str, Any]] = {
    "celltypist": {
        "renormalise": True, "use_SGD": True, "feature_selection": False, "top_genes": 300, "C": 1.0,
        "alpha": 0.0001, "max_iter": None, "mini_batch": False, "batch_number": 100, "batch_size": 1000,
        "epochs": 10, "balance_cell_type": False, "with_mean": True, "large_data_cells": 100_000,
        "max_nnz": 30_000_000,
    },
    "singler": {
        "num_de": None, "quantile": 0.8, "use_fine_tune": True, "fine_tune_threshold": 0.05, "temperature": 0.01,
        "aggregate_cells": 20_000, "aggregate_power": 0.5, "max_nnz": 50_000_000,
    },
}
PEERS = tuple(DEFAULTS)
SCALE_SETTINGS = ("renormalise", "large_data_cells", "max_nnz")  # CellTypist settings that are not train()'s
LARGE_DATA_MODE = {"use_SGD": True, "mini_batch": True, "with_mean": False}  # CellTypist's own large-data mode
SINGLER_AGGREGATION_RANK = 20  # aggregate_reference's default number of PCs
DENSE_BYTES = 256 * 2**20  # CellTypist annotates a dense query (float64): at most this much at once


class PeerNotRunnable(Exception):
    """The peer cannot run on this data or in this environment; ``str(err)`` is the reason, one line."""


def resolve_settings(peer: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The peer's defaults updated with ``settings``; unknown peers or settings raise a one-line InputError."""
    if peer not in DEFAULTS:
        raise InputError(CONFIG, "methods", f"unknown peer '{peer}'", f"use one of {', '.join(PEERS)}")
    unknown = sorted(set(settings or {}) - set(DEFAULTS[peer]))
    if unknown:
        raise InputError(CONFIG, f"peers.{peer}.{unknown[0]}", "unknown setting",
                         f"use {', '.join(sorted(DEFAULTS[peer]))}")
    return {**DEFAULTS[peer], **(settings or {})}


def import_peer(package: str, env: str | None = None) -> ModuleType:
    """The peer's package; ``PeerNotRunnable`` when it is not installed (only its own rule's env carries it)."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise PeerNotRunnable(
            f"{package} is not installed in this environment ({err}); install it with pip install -e '.[peers]' "
            f"or run with --sdm conda (envs/{env or package}.yaml)") from err


def one_line(text: object) -> str:
    """``text`` on one line."""
    return " ".join(str(text).split())


def check_log1p_scale(matrices: Sequence[Any], target_sum: float = CP10K,
                      chunk_cells: int = DEFAULT_CHUNK_CELLS) -> None:
    """``PeerNotRunnable`` unless every value lies in [0, log1p(target_sum)]: natural-log1p normalised expression.

    Matrices in memory or a store's ``RowView`` (read ``chunk_cells`` rows at a time).
    """
    low = high = 0.0
    for X in matrices:
        for chunk in row_chunks(X, chunk_cells):
            values = sp.csr_matrix(chunk).data
            if values.size:
                low, high = min(low, float(values.min())), max(high, float(values.max()))
    bound = float(np.log1p(target_sum))
    if low < 0:
        raise PeerNotRunnable(f"CellTypist needs natural-log1p CP10k expression, but X has negative values "
                              f"(down to {low:.3g}: scaled data?)")
    if high > bound + BOUND_TOLERANCE:
        raise PeerNotRunnable(f"CellTypist needs natural-log1p CP10k expression, but X reaches {high:.2f} > "
                              f"log1p({target_sum:g}) = {bound:.2f} (another log base or normalisation)")


def cp10k_log1p(X: Any, target_sum: float = CP10K, renormalise: bool = True) -> sp.csr_matrix:
    """Natural-log1p CP10k per cell over the genes present (see the module notes); float64 CSR.

    Refuses (``PeerNotRunnable``, ``check_log1p_scale``) values below 0 or above ``log1p(target_sum)``. Without
    ``renormalise`` the values are returned unchanged.
    """
    check_log1p_scale([X], target_sum)
    if not renormalise:
        return sp.csr_matrix(X, dtype=np.float64)
    return qc.renormalised(X, CP10K, dtype=np.float64)


def expit_shares(scores: np.ndarray) -> np.ndarray:
    """``expit(scores)`` divided by its sum per row, in log space (no underflow for very negative scores)."""
    log_expit = -np.logaddexp(0.0, -scores)
    shares = np.exp(log_expit - log_expit.max(axis=1, keepdims=True))
    return shares / shares.sum(axis=1, keepdims=True)


def softmax_with_label(scores: np.ndarray, chosen: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of ``scores / temperature`` per row, with row ``i``'s largest probability moved to ``chosen[i]``."""
    z = (scores - scores.max(axis=1, keepdims=True)) / temperature
    probabilities = np.exp(z)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    rows = np.arange(len(scores))
    top = probabilities.argmax(axis=1)
    moved = top != chosen
    r, a, b = rows[moved], top[moved], chosen[moved]
    probabilities[r, a], probabilities[r, b] = probabilities[r, b], probabilities[r, a]
    return probabilities


def in_class_order(probabilities: np.ndarray, labels: Sequence[str], classes: np.ndarray) -> np.ndarray:
    """Columns of ``probabilities`` (in ``labels`` order) rearranged to ``classes``; both must hold the same set."""
    labels = [str(label) for label in labels]
    if sorted(labels) != sorted(map(str, classes)):
        raise RuntimeError(f"peer returned classes {labels}, expected the training classes {list(classes)}")
    position = {label: i for i, label in enumerate(labels)}
    return probabilities[:, [position[str(c)] for c in classes]]


def training_sample(labels: np.ndarray, X: Any, max_nnz: int, seed: int) -> np.ndarray:
    """Positions of the training cells a peer holds in memory: all, or a stratified sample of ~``max_nnz`` values."""
    values = stored_values(X)
    if values <= max_nnz:
        return np.arange(len(labels), dtype=np.int64)
    return stratified_sample(labels, int(len(labels) * max_nnz / values), seed)


def celltypist_fit(train_X: Any, train_labels: Sequence[str], genes: Sequence[str], seed: int,
                   settings: Mapping[str, Any] | None = None, threads: int = 1,
                   target_sum: float = CP10K) -> tuple[Callable[[Any], np.ndarray], np.ndarray]:
    """Train CellTypist on the training cells; (predict: test cells -> class probabilities, sorted classes)."""
    settings = resolve_settings("celltypist", settings)
    celltypist = import_peer("celltypist")
    train_labels = np.asarray(train_labels, dtype=str)
    classes = np.unique(train_labels)
    genes = np.asarray(genes, dtype=str)
    options = {key: value for key, value in settings.items() if key not in SCALE_SETTINGS}
    if len(train_labels) > settings["large_data_cells"]:
        options.update(LARGE_DATA_MODE)
    cells = training_sample(train_labels, train_X, settings["max_nnz"], seed)
    log.info("scale mode: CellTypist%s (use_SGD %s, mini_batch %s, with_mean %s) on %d of %d training cells",
             " large-data mode" if len(train_labels) > settings["large_data_cells"] else "", options["use_SGD"],
             options["mini_batch"], options["with_mean"], len(cells), len(train_labels))
    X = cp10k_log1p(in_memory(take_rows(train_X, cells)), target_sum, settings["renormalise"])
    rng_state = np.random.get_state()
    np.random.seed(seed)  # CellTypist's mini-batches draw from numpy's global generator
    try:
        model = celltypist.train(X, labels=train_labels[cells], genes=genes, n_jobs=threads, random_state=seed,
                                 **options)
    except TypeError as err:
        if "multi_class" not in str(err):
            raise
        import sklearn

        raise PeerNotRunnable(
            f"CellTypist {celltypist.__version__}'s logistic regression (use_SGD: false) passes multi_class, which "
            f"scikit-learn 1.8 removed (installed: {sklearn.__version__}); set peers.celltypist.use_SGD: true or "
            "run with --sdm conda (envs/celltypist.yaml has scikit-learn < 1.8)") from err
    except ValueError as err:
        if "Invalid expression matrix" not in str(err):
            raise
        message = one_line(str(err).replace("\N{OCTAGONAL SIGN}", ""))  # CellTypist prefixes its errors with a sign
        raise PeerNotRunnable(f"CellTypist's input check failed: {message}") from err
    finally:
        np.random.set_state(rng_state)
    dense_cells = max(1, DENSE_BYTES // (8 * len(genes)))

    def predict(test_X: Any) -> np.ndarray:
        test_X = cp10k_log1p(test_X, target_sum, settings["renormalise"])
        scores = []
        for part in row_chunks(test_X, dense_cells):
            query = ad.AnnData(part.toarray())  # annotate fails on a sparse query of a with_mean=False model
            query.var_names = genes
            scores.append(celltypist.annotate(query, model=model, majority_voting=False).decision_matrix)
        decision = pd.concat(scores)
        return in_class_order(expit_shares(decision.to_numpy(dtype=float)), list(decision.columns), classes)

    return predict, classes


def celltypist_predict(train_X: Any, train_labels: Sequence[str], test_X: Any, genes: Sequence[str], seed: int,
                       settings: Mapping[str, Any] | None = None, threads: int = 1,
                       target_sum: float = CP10K) -> tuple[np.ndarray, np.ndarray]:
    """Train CellTypist on the training cells and annotate the test cells (best match, no majority voting)."""
    check_log1p_scale([train_X, test_X], target_sum)  # one reason naming the largest value of either
    predict, classes = celltypist_fit(train_X, train_labels, genes, seed, settings, threads, target_sum)
    return predict(test_X), classes


def genes_by_cells(X: Any) -> sp.csc_matrix:
    """A cells x genes matrix as genes x cells CSC with sorted indices (what singler's matrix backend accepts)."""
    X = sp.csr_matrix(X, copy=True)
    X.sum_duplicates()  # also sorts the indices, which row selection may leave unsorted
    return X.T


def aggregation_rank(labels: np.ndarray, power: float, rank: int = SINGLER_AGGREGATION_RANK) -> int:
    """PCs for SingleR's per-label clustering: its default, fewer for a small label that is clustered.

    ``aggregate_reference`` clusters the raw (sparse) matrix instead of PCs for a label of at most ``rank + 1``
    cells, which scranpy's k-means refuses; fewer PCs keep every clustered label on PCs.
    """
    counts = np.unique(labels, return_counts=True)[1]
    clustered = counts[np.floor(counts.astype(float) ** power) > 1]
    return int(min(rank, clustered.min(initial=rank + 1) - 1))


def singler_fit(train_X: Any, train_labels: Sequence[str], genes: Sequence[str], seed: int,
                settings: Mapping[str, Any] | None = None,
                threads: int = 1) -> tuple[Callable[[Any], np.ndarray], np.ndarray]:
    """Build a SingleR reference from the training cells (classic markers); (predict, sorted classes)."""
    settings = resolve_settings("singler", settings)
    singler = import_peer("singler")
    train_labels = np.asarray(train_labels, dtype=str)
    classes = np.unique(train_labels)
    genes = [str(gene) for gene in genes]
    aggregate = len(train_labels) > settings["aggregate_cells"]
    if aggregate and settings["aggregate_power"] > 0:
        import_peer("scranpy", env="singler")  # SingleR's aggregation clusters each label with scranpy
    cells = training_sample(train_labels, train_X, settings["max_nnz"], seed)
    log.info("scale mode: SingleR reference from %d of %d training cells%s", len(cells), len(train_labels),
             f", aggregated (power {settings['aggregate_power']})" if aggregate else "")
    reference = singler.train_single(genes_by_cells(in_memory(take_rows(train_X, cells))), list(train_labels[cells]),
                                     genes, test_features=genes, num_de=settings["num_de"], num_threads=threads,
                                     aggregate=aggregate,
                                     aggregate_args={"power": settings["aggregate_power"], "num_threads": threads,
                                                     "rank": aggregation_rank(train_labels[cells],
                                                                              settings["aggregate_power"])})
    labels = [str(label) for label in reference.labels]
    position = {label: i for i, label in enumerate(labels)}

    def predict(test_X: Any) -> np.ndarray:
        result = singler.classify_single(genes_by_cells(test_X), reference, quantile=settings["quantile"],
                                         use_fine_tune=settings["use_fine_tune"],
                                         fine_tune_threshold=settings["fine_tune_threshold"], num_threads=threads)
        table = result.get_column("scores")
        scores = np.column_stack([np.asarray(table.get_column(label), dtype=float) for label in reference.labels])
        chosen = np.array([position[str(label)] for label in result.get_column("best")], dtype=int)
        probabilities = softmax_with_label(scores, chosen, settings["temperature"])
        return in_class_order(probabilities, labels, classes)

    return predict, classes


def singler_predict(train_X: Any, train_labels: Sequence[str], test_X: Any, genes: Sequence[str], seed: int,
                    settings: Mapping[str, Any] | None = None, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Build a SingleR reference from the training cells (classic markers) and classify the test cells."""
    predict, classes = singler_fit(train_X, train_labels, genes, seed, settings, threads)
    return predict(test_X), classes


FIT = {"celltypist": celltypist_fit, "singler": singler_fit}


def not_run_record(reason: str) -> pd.DataFrame:
    """What a peer that cannot run writes instead of predictions: one ``not_run`` column holding the reason."""
    return pd.DataFrame({NOT_RUN: [one_line(reason)]})


def fit_peer(peer: str, settings: Mapping[str, Any] | None, seed: int, train_X: Any, train_labels: Sequence[str],
             genes: Sequence[str], threads: int = 1,
             target_sum: float = CP10K) -> tuple[Callable[[Any], np.ndarray], np.ndarray]:
    """Train peer ``peer``; (predict: test cells -> class probabilities, sorted classes), or ``PeerNotRunnable``."""
    settings = resolve_settings(peer, settings)
    extra = {"target_sum": target_sum} if peer == "celltypist" else {}
    return FIT[peer](train_X, train_labels, genes, seed, settings, threads=threads, **extra)


def predict_peer(peer: str, settings: Mapping[str, Any] | None, seed: int, train_X: Any, train_labels: Sequence[str],
                 test_X: Any, genes: Sequence[str], threads: int = 1,
                 target_sum: float = CP10K) -> tuple[np.ndarray, np.ndarray]:
    """Run peer ``peer``; (test class probabilities, sorted classes), or ``PeerNotRunnable``."""
    if peer == "celltypist":
        check_log1p_scale([train_X, test_X], target_sum)  # one reason naming the largest value of either
    predict, classes = fit_peer(peer, settings, seed, train_X, train_labels, genes, threads, target_sum)
    return predict(test_X), classes


def peer_stage(peer: str, settings: Mapping[str, Any], seed: int, threads: int, target_sum: float, input_h5ad: str,
               splits_file: str, split: str, output: str, chunk_cells: int = DEFAULT_CHUNK_CELLS) -> None:
    """Train a peer on the split's train + val cells of the preprocessed matrix; write its test predictions.

    The matrix is opened as a ``CellStore``: only the split's rows are read, test cells ``chunk_cells`` at a time.
    When the peer cannot run, write the ``not_run`` record with the reason instead (and log it as a warning).
    """
    roles = read_split(splits_file, split)
    with CellStore(input_h5ad) as store:
        genes = store.var_names

        def fit(X: Any, y: np.ndarray) -> tuple[Callable[[Any], np.ndarray], np.ndarray]:
            return fit_peer(peer, settings, seed, X, y, genes, threads=threads, target_sum=target_sum)

        try:
            if peer == "celltypist":  # one reason naming the largest value of the split's cells, before training
                check_log1p_scale([store.view(store.rows_of(roles.index))], target_sum, chunk_cells)
            predict_split(peer, fit, store.view(), store.obs_names, store.obs["cell_type"].astype(str), roles,
                          output, chunk_cells)
        except PeerNotRunnable as err:
            log.warning("%s not run on %s: %s", peer, split, err)
            io.write_tsv(not_run_record(str(err)), output)
