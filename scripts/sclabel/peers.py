"""Published annotators run as peers of the workflow's methods: CellTypist and SingleR (BiocPy ``singler``).

Each peer is an ``Annotator`` (``CelltypistAnnotator``, ``SinglerAnnotator``) run by ``method_stage`` like every
method: fitted on the split's training cells of the workflow's preprocessed matrix (in memory or a store's
``RowView``), saved under ``results/models/{method}/{split}`` and predicting the test cells; its settings are the
peer's defaults (``DEFAULTS``) updated by the config, unknown keys refused. Nothing is pickled: CellTypist's classifier
and scaler are skops files (loaded only as those scikit-learn types) rebuilt into a ``celltypist.models.Model``;
SingleR's reference is ``reference.npz`` (profiles over the marker genes, their labels, the pairwise markers)
rebuilt with ``train_single``.

Each peer's package is imported only inside its own functions (``import_peer``), so each rule env needs only its own
peer's package (``envs/celltypist.yaml``, ``envs/singler.yaml``).

A peer that cannot run on the data raises ``PeerNotRunnable`` (a ``MethodNotRunnable``); ``method_stage`` then writes
a ``not_run`` record instead of the model and predictions, and the evaluation shows the method as
``not run: <reason>`` in ``summary.tsv`` rather than failing the sweep or leaving the method out. Reasons: the package
is not installed in the running environment; CellTypist's expression check fails; CellTypist's default solver
(``use_SGD: false``) finds scikit-learn >= 1.8 (pyproject.toml and every env pin a scikit-learn below 1.8).

Defaults. Both peers run at their packages' published defaults: CellTypist as ``celltypist.train`` trains by default
(full-batch logistic regression, one-vs-rest, CellTypist's own solver choice: lbfgs, sag above 50,000 cells; no
feature selection), SingleR as ``classify_single`` classifies by default (quantile 0.8, fine-tuning within 0.05).
A non-default mode (``use_SGD``, ``feature_selection``, ...) is opt-in through ``peers.<peer>``; the job's log names
the classifier that ran and methods.tsv the settings.

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
``expit`` itself underflows to 0 for every class. The predicted class (the largest score) is unchanged. The rejection
score is CellTypist's own: 1 - its largest ``expit(score)``, and a cell abstains by CellTypist's 'prob match' rule,
no class's probability above ``p_thres`` (0.5), i.e. a rejection score of at least 1 - ``p_thres``.

SingleR probabilities. SingleR scores each reference label by a quantile (``quantile``) of the Spearman correlations
between the cell and that label's reference cells over marker genes, then fine-tunes among the labels within
``fine_tune_threshold`` of the best. The probabilities are a softmax of the scores divided by ``temperature``
(correlation gaps between the first and second label are typically 0.01-0.1); when fine-tuning picks a label other
than the top-scoring one, the two labels' probabilities are swapped, so the predicted class is SingleR's label and
the probabilities are a permutation of the softmax. The temperature shapes only these probabilities (the confidence
column and the ranking metrics); rejection and abstention use SingleR's own scores. The rejection score is
``(2 - delta) / 4`` (in [0, 1], higher = more likely novel) of SingleR's delta: the first-pass score of SingleR's label
minus the median score over labels, what SingleR's ``pruneScores`` thresholds. A cell abstains where ``pruneScores``
at its defaults prunes it (``prune_scores``; BiocPy's singler 0.5.0 has no pruning of its own): delta below
``min_diff_med`` (0), or more than ``nmads`` (3) MADs below the median delta of the cells given the same label. That
rule compares cells given the same label, so it depends on the set of cells classified together.
SingleR is deterministic; the seed is unused.

At scale. Both peers hold their training matrix in memory, so above ``max_nnz`` stored values in the split's
training matrix each trains on a seeded stratified sample of the training cells (``baselines.stratified_sample``,
classes in proportion, at least 10 cells of each) holding about ``max_nnz`` values; test cells are always all
predicted, ``chunk_cells`` at a time (CellTypist's ``annotate`` takes them dense, in pieces of ``DENSE_BYTES``). Above
``large_data_cells`` training cells CellTypist runs in its own large-data mode (``use_SGD``, ``mini_batch``,
``with_mean: false`` so the sparse matrix is never densified), whatever those three settings say; above
``aggregate_cells`` SingleR builds its reference from aggregated profiles (``singler.aggregate_reference``: k-means
within each label, ``n ** aggregate_power`` profiles per label of n cells; needs ``scranpy``), its markers still
from every cell, as ``train_single(aggregate=True)`` does. The job's log
says which mode ran (``scale mode: ...``). Measured peaks (20k genes, 53k training cells): CellTypist 3.05 GB on a
50M-value sample (its float64 copies: ~60 bytes per value, hence its default of 30M), SingleR aggregated 1.24 GB.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import expit

from sclabel import qc
from sclabel.annotator import Annotator, LabelledCells, MethodNotRunnable, RunContext
from sclabel.baselines import stored_values, stratified_sample
from sclabel.errors import InputError, one_line
from sclabel.ranking import rank_table
from sclabel.store import DEFAULT_CHUNK_CELLS, in_memory, row_chunks, take_rows

log = logging.getLogger("sclabel")

CONFIG = "config"
CP10K = 10_000.0
# CellTypist 1.7.1's own bound: annotate() refuses a matrix with values above 9.22 (log1p(10,000) = 9.2104)
BOUND_TOLERANCE = 0.01
DEFAULTS: dict[str, dict[str, Any]] = {
    "celltypist": {
        "renormalise": True, "use_SGD": False, "solver": None, "feature_selection": False, "top_genes": 300,
        "C": 1.0, "alpha": 0.0001, "max_iter": None, "mini_batch": False, "batch_number": 100, "batch_size": 1000,
        "epochs": 10, "balance_cell_type": False, "with_mean": True, "p_thres": 0.5, "large_data_cells": 100_000,
        "max_nnz": 30_000_000,
    },
    "singler": {
        "num_de": None, "quantile": 0.8, "use_fine_tune": True, "fine_tune_threshold": 0.05, "temperature": 0.01,
        "nmads": 3.0, "min_diff_med": 0.0, "aggregate_cells": 20_000, "aggregate_power": 0.5, "max_nnz": 50_000_000,
    },
}
PEERS = tuple(DEFAULTS)
WORKFLOW_SETTINGS = ("renormalise", "p_thres", "large_data_cells", "max_nnz")  # CellTypist settings not train()'s
MAD_SCALE = 1.4826  # R's mad(): the MAD scaled to a normal standard deviation, as SingleR's pruneScores uses it
LARGE_DATA_MODE = {"use_SGD": True, "mini_batch": True, "with_mean": False}  # CellTypist's own large-data mode
SINGLER_AGGREGATION_RANK = 20  # aggregate_reference's default number of PCs
DENSE_BYTES = 256 * 2**20  # CellTypist annotates a dense query (float64): at most this much at once


class PeerNotRunnable(MethodNotRunnable):
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
    """Columns of ``probabilities`` (or scores; in ``labels`` order) rearranged to ``classes``; the same set both."""
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


def celltypist_train(X: Any, labels: np.ndarray, genes: np.ndarray, seed: int, settings: Mapping[str, Any],
                     threads: int, target_sum: float) -> Any:
    """A CellTypist ``Model`` trained on the cells (a bounded sample; large-data mode above ``large_data_cells``)."""
    celltypist = import_peer("celltypist")
    options = {key: value for key, value in settings.items() if key not in WORKFLOW_SETTINGS}
    large = len(labels) > settings["large_data_cells"]
    if large:
        options.update(LARGE_DATA_MODE)
    cells = training_sample(labels, X, settings["max_nnz"], seed)
    log.info("scale mode: CellTypist%s (use_SGD %s, mini_batch %s, with_mean %s) on %d of %d training cells",
             " large-data mode" if large else "", options["use_SGD"], options["mini_batch"], options["with_mean"],
             len(cells), len(labels))
    X = cp10k_log1p(in_memory(take_rows(X, cells)), target_sum, settings["renormalise"])
    rng_state = np.random.get_state()
    np.random.seed(seed)  # CellTypist's mini-batches draw from numpy's global generator
    try:
        model = celltypist.train(X, labels=labels[cells], genes=genes, n_jobs=threads, random_state=seed, **options)
    except TypeError as err:
        if "multi_class" not in str(err):
            raise
        import sklearn

        raise PeerNotRunnable(
            f"CellTypist {celltypist.__version__}'s default solver (use_SGD: false) passes multi_class, which "
            f"scikit-learn 1.8 removed (installed: {sklearn.__version__}); install scikit-learn < 1.8 as "
            "pyproject.toml pins it (pip install -e .), or run with --sdm conda") from err
    except ValueError as err:
        if "Invalid expression matrix" not in str(err):
            raise
        message = one_line(str(err).replace("\N{OCTAGONAL SIGN}", ""))  # CellTypist prefixes its errors with a sign
        raise PeerNotRunnable(f"CellTypist's input check failed: {message}") from err
    finally:
        np.random.set_state(rng_state)
    log.info("CellTypist classifier: %s", classifier_text(model.classifier))
    return model


def classifier_text(classifier: Any) -> str:
    """The classifier CellTypist trained, as the log names it (its type and solver or loss)."""
    params = classifier.get_params()
    return (f"{type(classifier).__name__} (solver {params['solver']}, max_iter {params['max_iter']})"
            if "solver" in params else f"{type(classifier).__name__} (loss {params['loss']})")


def celltypist_scores(model: Any, X: Any, genes: Sequence[str], classes: np.ndarray, target_sum: float,
                      renormalise: bool) -> np.ndarray:
    """CellTypist's decision scores of cells, columns in ``classes`` order, dense ``DENSE_BYTES`` at a time."""
    celltypist = import_peer("celltypist")
    X = cp10k_log1p(X, target_sum, renormalise)
    scores = []
    for part in row_chunks(X, max(1, DENSE_BYTES // (8 * len(genes)))):
        query = ad.AnnData(part.toarray())  # annotate fails on a sparse query of a with_mean=False model
        query.var_names = np.asarray(genes, dtype=str)
        scores.append(celltypist.annotate(query, model=model, majority_voting=False).decision_matrix)
    decision = pd.concat(scores)
    return in_class_order(decision.to_numpy(dtype=float), list(decision.columns), classes)


def qualified_name(cls: type) -> str:
    """``module.Class`` of a class, as skops names types."""
    return f"{cls.__module__}.{cls.__qualname__}"


def load_skops(path: Path, allowed: Sequence[type]) -> Any:
    """The object a ``.skops`` file holds, refused (one-line InputError) unless it is one of the ``allowed`` types."""
    import skops.io

    names = [qualified_name(cls) for cls in allowed]
    try:
        loaded = skops.io.load(path, trusted=names)
    except skops.io.exceptions.UntrustedTypesFoundException as err:
        raise InputError(path, "types", one_line(err).rstrip("."), "retrain the model with this workflow") from None
    if type(loaded) not in allowed:
        raise InputError(path, "type", f"holds a {qualified_name(type(loaded))}, expected {' or '.join(names)}",
                         "retrain the model with this workflow")
    return loaded


class CelltypistAnnotator(Annotator):
    """CellTypist 1.7.1 trained on the training cells; saved as its classifier and scaler in skops files."""

    version_bound = ("scikit-learn", "celltypist")
    CLASSIFIER, SCALER = "classifier.skops", "scaler.skops"

    def __init__(self, method: str, settings: Mapping[str, Any] | None = None, seed: int = 0,
                 genes: Sequence[str] = (), context: RunContext | None = None) -> None:
        super().__init__(method, resolve_settings("celltypist", settings), seed, genes, context)
        self.model: Any = None  # a celltypist.models.Model

    def fit(self, train: LabelledCells, validation: LabelledCells | None = None) -> CelltypistAnnotator:
        """Train CellTypist on the training cells; ``PeerNotRunnable`` when the data breaks its checks."""
        cells = LabelledCells(train.X, np.asarray(train.labels).astype(str))
        target_sum = self.context.target_sum
        check_log1p_scale([cells.X], target_sum, self.context.chunk_cells)  # one reason naming the largest value
        self.model = celltypist_train(cells.X, cells.labels, np.asarray(self.genes, dtype=str), self.seed,
                                      self.settings, self.context.threads, target_sum)
        self.classes = np.unique(cells.labels)
        self.preprocessing = {"target_sum": target_sum}
        return self

    def scores(self, X: Any) -> np.ndarray:
        """CellTypist's decision scores of the cells, columns in ``classes`` order."""
        return celltypist_scores(self.model, X, self.genes, self.classes, self.preprocessing["target_sum"],
                                 self.settings["renormalise"])

    def predict_proba(self, X: Any) -> np.ndarray:
        """CellTypist's scores as probabilities (``expit_shares``), columns in ``classes`` order."""
        return expit_shares(self.scores(X))

    def rejection_score(self, X: Any) -> np.ndarray:
        """1 - CellTypist's own probability of its predicted class (``expit`` of the largest score)."""
        return expit(-self.scores(X).max(axis=1))

    def own_abstention(self, rejection: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """CellTypist's 'prob match' rule: unassigned where no class's probability exceeds ``p_thres``."""
        return rejection >= 1.0 - self.settings["p_thres"]

    def top_genes(self) -> pd.DataFrame:
        """Genes ranked per cell type by the classifier's coefficients (over its features)."""
        classifier = self.model.classifier
        coefficients = np.atleast_2d(np.asarray(classifier.coef_, dtype=np.float64))
        if len(classifier.classes_) == 2:  # sklearn's binary model: the row is the log-odds of classes_[1]
            coefficients = np.vstack([-coefficients, coefficients])
        return rank_table(coefficients, [str(c) for c in classifier.classes_], [str(g) for g in self.model.features])

    def save_arrays(self, folder: Path) -> dict[str, Any]:
        """The classifier (its feature list included) and scaler as skops files; CellTypist's description as meta."""
        import skops.io

        skops.io.dump(self.model.classifier, folder / self.CLASSIFIER)
        skops.io.dump(self.model.scaler, folder / self.SCALER)
        return {"description": self.model.description}

    def load_arrays(self, folder: Path, meta: Mapping[str, Any]) -> None:
        """Rebuild CellTypist's ``Model`` from the skops files (only its classifier and scaler types are accepted)."""
        from sklearn.linear_model import LogisticRegression, SGDClassifier
        from sklearn.preprocessing import StandardScaler

        models = import_peer("celltypist.models", env="celltypist")
        classifier = load_skops(folder / self.CLASSIFIER, (LogisticRegression, SGDClassifier))
        self.model = models.Model(classifier, load_skops(folder / self.SCALER, (StandardScaler,)),
                                  dict(meta["description"]))


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


def marker_arrays(markers: Mapping[str, Mapping[str, Sequence[str]]], classes: np.ndarray,
                  genes: Sequence[str]) -> dict[str, np.ndarray]:
    """SingleR's pairwise markers (``markers[a][b]``: genes up in a over b, in order) as flat integer arrays."""
    position = {gene: i for i, gene in enumerate(genes)}
    code = {label: i for i, label in enumerate(classes)}
    pairs = [(code[str(a)], code[str(b)], position[str(gene)])
             for a, inner in markers.items() for b, listed in inner.items() for gene in listed]
    first, second, gene = np.array(pairs, dtype=np.int64).reshape(-1, 3).T
    return {"marker_up": first, "marker_over": second, "marker_gene": gene}


def markers_from_arrays(arrays: Mapping[str, np.ndarray], classes: np.ndarray,
                        genes: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """The pairwise markers back from ``marker_arrays``."""
    markers: dict[str, dict[str, list[str]]] = {a: {b: [] for b in classes} for a in classes}
    for up, over, gene in zip(arrays["marker_up"], arrays["marker_over"], arrays["marker_gene"]):
        markers[classes[up]][classes[over]].append(genes[gene])
    return markers


def delta_from_median(scores: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """SingleR's delta per cell: the score of its label (column ``chosen``) minus the median score over labels."""
    return scores[np.arange(len(scores)), chosen] - np.median(scores, axis=1)


def prune_scores(delta: np.ndarray, labels: np.ndarray, nmads: float = 3.0, min_diff_med: float = 0.0) -> np.ndarray:
    """Cells SingleR's ``pruneScores`` prunes: delta below ``min_diff_med``, or, among the rest given the same label,
    more than ``nmads`` MADs (R's ``mad``, scaled by 1.4826) below that label's median delta."""
    keep = delta >= min_diff_med
    for label in np.unique(labels[keep]):
        members = np.flatnonzero(keep & (labels == label))
        current = delta[members]
        median = np.median(current)
        mad = MAD_SCALE * np.median(np.abs(current - median))
        keep[members] = current >= median - nmads * mad
    return ~keep


class SinglerAnnotator(Annotator):
    """SingleR (BiocPy ``singler``) with a reference of training cells or profiles aggregated from them.

    Saved as ``reference.npz``: the reference profiles over the marker genes (CSR arrays), their labels and the
    pairwise markers; loading rebuilds SingleR's reference with ``train_single`` on exactly these.
    """

    version_bound = ("singler",)
    REFERENCE = "reference.npz"

    def __init__(self, method: str, settings: Mapping[str, Any] | None = None, seed: int = 0,
                 genes: Sequence[str] = (), context: RunContext | None = None) -> None:
        super().__init__(method, resolve_settings("singler", settings), seed, genes, context)
        self.state: dict[str, np.ndarray] = {}  # what reference.npz holds
        self.reference: Any = None  # singler's TrainedSingleReference, built from ``state``

    def fit(self, train: LabelledCells, validation: LabelledCells | None = None) -> SinglerAnnotator:
        """Markers from the training cells, the reference from them or their per-type aggregates."""
        singler = import_peer("singler")
        cells = LabelledCells(train.X, np.asarray(train.labels).astype(str))
        settings, threads = self.settings, self.context.threads
        aggregate = len(cells.labels) > settings["aggregate_cells"]
        if aggregate and settings["aggregate_power"] > 0:
            import_peer("scranpy", env="singler")  # SingleR's aggregation clusters each label with scranpy
        sample = training_sample(cells.labels, cells.X, settings["max_nnz"], self.seed)
        log.info("scale mode: SingleR reference from %d of %d training cells%s", len(sample), len(cells.labels),
                 f", aggregated (power {settings['aggregate_power']})" if aggregate else "")
        labels = list(cells.labels[sample])
        data = genes_by_cells(in_memory(take_rows(cells.X, sample)))
        markers = singler.get_classic_markers(ref_data=[data], ref_labels=[labels], ref_features=[self.genes],
                                              num_de=settings["num_de"], num_threads=threads)
        if aggregate:
            rank = aggregation_rank(np.asarray(labels), settings["aggregate_power"])
            profiles = singler.aggregate_reference(data, labels, self.genes, power=settings["aggregate_power"],
                                                   num_threads=threads, rank=rank)
            data, labels = profiles.assay(0), list(profiles.get_column_data().get_column("label"))
        self.classes = np.unique(cells.labels[sample])
        used = np.flatnonzero(np.isin(self.genes, [g for inner in markers.values() for listed in inner.values()
                                                   for g in listed]))
        reference = sp.csr_matrix(data[used, :].T)
        marker_genes = [self.genes[i] for i in used]
        self.state = {"data": reference.data, "indices": reference.indices, "indptr": reference.indptr,
                      "shape": np.array(reference.shape), "used_genes": used,
                      "labels": np.searchsorted(self.classes, labels),
                      **marker_arrays(markers, self.classes, marker_genes)}
        self.reference = self.build_reference()
        return self

    def build_reference(self) -> Any:
        """SingleR's trained reference from ``state`` (profiles over the marker genes, their labels, the markers)."""
        singler = import_peer("singler")
        state = self.state
        profiles = sp.csr_matrix((state["data"], state["indices"], state["indptr"]), shape=tuple(state["shape"]))
        marker_genes = [self.genes[i] for i in state["used_genes"]]
        return singler.train_single(genes_by_cells(profiles), list(self.classes[state["labels"]]), marker_genes,
                                    test_features=self.genes,
                                    markers=markers_from_arrays(state, self.classes, marker_genes),
                                    num_threads=self.context.threads)

    def classify(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """SingleR's first-pass scores (columns in ``classes`` order) and its label's column, per cell."""
        singler = import_peer("singler")
        settings = self.settings
        result = singler.classify_single(genes_by_cells(X), self.reference, quantile=settings["quantile"],
                                         use_fine_tune=settings["use_fine_tune"],
                                         fine_tune_threshold=settings["fine_tune_threshold"],
                                         num_threads=self.context.threads)
        labels = [str(label) for label in self.reference.labels]
        table = result.get_column("scores")
        scores = np.column_stack([np.asarray(table.get_column(label), dtype=float) for label in labels])
        position = {str(label): i for i, label in enumerate(self.classes)}
        return (in_class_order(scores, labels, self.classes),
                np.array([position[str(label)] for label in result.get_column("best")], dtype=int))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Softmax of SingleR's scores, its fine-tuned label on top (``softmax_with_label``), in ``classes`` order."""
        scores, chosen = self.classify(X)
        return softmax_with_label(scores, chosen, self.settings["temperature"])

    def rejection_score(self, X: Any) -> np.ndarray:
        """``(2 - delta) / 4`` of SingleR's delta from the median (see the module notes): higher, more likely novel."""
        scores, chosen = self.classify(X)
        return (2.0 - delta_from_median(scores, chosen)) / 4.0

    def own_abstention(self, rejection: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """SingleR's ``pruneScores`` at its defaults on the deltas behind ``rejection`` (``prune_scores``)."""
        return prune_scores(2.0 - 4.0 * np.asarray(rejection, dtype=float), np.asarray(predicted).astype(str),
                            self.settings["nmads"], self.settings["min_diff_med"])

    def save_arrays(self, folder: Path) -> dict[str, Any]:
        """``reference.npz`` (no pickled objects)."""
        np.savez(folder / self.REFERENCE, **self.state)
        return {}

    def load_arrays(self, folder: Path, meta: Mapping[str, Any]) -> None:
        """Read ``reference.npz`` and rebuild the reference."""
        with np.load(folder / self.REFERENCE, allow_pickle=False) as arrays:
            self.state = {name: arrays[name] for name in arrays.files}
        self.reference = self.build_reference()
