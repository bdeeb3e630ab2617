"""The interface every annotation method implements, and its safe on-disk form.

An ``Annotator`` is fitted on labelled cells (training, and validation for methods that stop early), gives class
probabilities and a rejection score for new cells over its own genes, saves itself into a folder and loads back.
A saved annotator is ``annotator.json`` (method, genes, classes, preprocessing, package versions and the method's
own metadata) plus arrays in ``.npz``/``.skops``/weights-only torch files: nothing in it is unpickled. Loading goes
through the method registry (the JSON names a method, never a class to import) and refuses, in one line, a folder
saved by package versions the running env cannot read.
"""

from __future__ import annotations

import json
import os
import platform
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from sclabel import __version__, registry
from sclabel.errors import InputError

MANIFEST = "annotator.json"
FORMAT = 1  # the saved-annotator layout; a change that old readers cannot follow raises it
UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class RunContext:
    """How a job runs a method, apart from its settings: threads, store chunking, the normalisation target."""

    threads: int = 1
    chunk_cells: int = 10_000
    buffer_cells: int = 32_768
    target_sum: float = 10_000.0


class MethodNotRunnable(Exception):
    """The method cannot run on these cells (its package is missing, the data breaks its own checks): the reason."""


@dataclass
class LabelledCells:
    """Cells with their labels: ``X`` (cells x genes, in memory or a store's ``RowView``) and ``labels``."""

    X: Any
    labels: np.ndarray


def package_versions(packages: Sequence[str]) -> dict[str, str]:
    """Installed version of each package (``'absent'`` when not installed)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def major_minor(version: str) -> str:
    """'1.8' of '1.8.0' (the part that must match for a saved model to be readable)."""
    return ".".join(version.split(".")[:2])


class Annotator(ABC):
    """A cell-type annotator over a fixed gene list (log1p CP10k expression in, probabilities over classes out)."""

    # packages whose major.minor must match between save and load (e.g. scikit-learn for estimators)
    version_bound: ClassVar[tuple[str, ...]] = ()

    def __init__(self, method: str, settings: Mapping[str, Any] | None = None, seed: int = 0,
                 genes: Sequence[str] = (), context: RunContext | None = None) -> None:
        self.method = method
        self.context = context or RunContext()
        self.settings = dict(settings or {})
        self.seed = seed
        self.genes = [str(gene) for gene in genes]
        self.classes = np.array([], dtype=str)
        self.preprocessing: dict[str, Any] = {}
        self.rejection_threshold: float | None = None  # set on validation cells by ``calibrate_abstention``

    @abstractmethod
    def fit(self, train: LabelledCells, validation: LabelledCells | None = None) -> Annotator:
        """Train on ``train`` (``validation``: for early stopping, or more training cells); returns self."""

    @abstractmethod
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities [cells, classes] of gene-aligned cells, columns in ``self.classes`` order."""

    def rejection_score(self, X: Any) -> np.ndarray:
        """How unlike every known class each cell is, higher = more likely novel (default: 1 - highest class
        probability; neural methods: ``finetune.rejection``)."""
        return 1.0 - self.predict_proba(X).max(axis=1)

    def own_abstention(self, rejection: np.ndarray, predicted: np.ndarray) -> np.ndarray | None:
        """Which cells the method's own published rule leaves unassigned, given their ``rejection_score`` and most
        probable class; None (the default) when the method has no rule of its own and the workflow's threshold on
        the rejection score, calibrated on validation cells, decides."""
        return None

    def calibrate_abstention(self, validation: LabelledCells | None, known_abstention: float) -> None:
        """Set the rejection threshold that leaves ``known_abstention`` of the validation cells unassigned.

        Validation cells are cells the method did not fit on, of known types: the threshold is the
        (1 - ``known_abstention``) quantile of their rejection scores. Without validation cells nothing abstains.
        """
        from sclabel.store import row_chunks

        if validation is None or not len(validation.labels):
            self.set_rejection_threshold(np.empty(0), known_abstention)
            return
        scores = np.concatenate([self.rejection_score(chunk)
                                 for chunk in row_chunks(validation.X, self.context.chunk_cells)])
        self.set_rejection_threshold(scores, known_abstention)

    def set_rejection_threshold(self, validation_scores: np.ndarray, known_abstention: float) -> None:
        """The (1 - ``known_abstention``) quantile of known validation cells' rejection scores (None without any)."""
        self.rejection_threshold = (float(np.quantile(validation_scores, 1.0 - known_abstention, method="higher"))
                                    if len(validation_scores) else None)

    def abstains(self, rejection: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """Whether each cell is left unassigned, given its rejection score and class probabilities: the method's own
        rule, else its rejection threshold calibrated on validation cells."""
        own = self.own_abstention(rejection, self.classes[np.asarray(probabilities).argmax(axis=1)])
        if own is not None:
            return np.asarray(own, dtype=bool)
        if self.rejection_threshold is None:
            return np.zeros(len(rejection), dtype=bool)
        return np.asarray(rejection) > self.rejection_threshold

    def top_genes(self) -> pd.DataFrame:
        """Genes ranked per cell type (cell_type, gene, score, rank) from the fitted model alone."""
        raise NotImplementedError(f"{self.method} does not rank genes")

    def embed(self, X: Any) -> np.ndarray | None:
        """A low-dimensional embedding of the cells, when the method has one (None otherwise)."""
        return None

    @abstractmethod
    def save_arrays(self, folder: Path) -> dict[str, Any]:
        """Write the fitted state into ``folder`` (no pickle); returns the JSON-able metadata ``load_arrays`` needs."""

    @abstractmethod
    def load_arrays(self, folder: Path, meta: Mapping[str, Any]) -> None:
        """Restore the fitted state written by ``save_arrays``."""

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write the annotator into ``folder`` atomically."""
        from sclabel.io import atomic_folder

        with atomic_folder(folder) as tmp:
            meta = self.save_arrays(tmp)
            write_manifest(tmp, self, meta)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Annotator:
        """The annotator saved in ``folder`` (whatever its method: see ``load_annotator``)."""
        return load_annotator(folder)

    @classmethod
    def from_saved(cls, folder: Path, manifest: Mapping[str, Any]) -> Annotator:
        """Rebuild from a checked manifest and the folder's arrays."""
        annotator = cls(manifest["method"], manifest["settings"], manifest["seed"],
                        (folder / "genes.txt").read_text().splitlines())
        annotator.classes = np.asarray(manifest["classes"], dtype=str)
        annotator.preprocessing = dict(manifest["preprocessing"])
        annotator.rejection_threshold = manifest.get("rejection_threshold")
        annotator.load_arrays(folder, manifest["meta"])
        return annotator


def write_manifest(folder: Path, annotator: Annotator, meta: Mapping[str, Any]) -> None:
    """``annotator.json`` and ``genes.txt`` of a saved annotator."""
    packages = ("sclabel", "numpy", *annotator.version_bound)
    manifest = {"format": FORMAT, "method": annotator.method, "classes": [str(c) for c in annotator.classes],
                "n_genes": len(annotator.genes), "settings": annotator.settings, "seed": annotator.seed,
                "preprocessing": annotator.preprocessing, "rejection_threshold": annotator.rejection_threshold,
                "python": platform.python_version(),
                "versions": {**package_versions(packages), "sclabel": __version__},
                "version_bound": list(annotator.version_bound), "meta": dict(meta)}
    (folder / "genes.txt").write_text("".join(f"{gene}\n" for gene in annotator.genes))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """A saved annotator's manifest; one-line InputError when it is missing, unreadable or incompatible."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise InputError(path, MANIFEST, "no saved annotator here",
                         "point to a results/models/<method>/<split> folder written by the workflow")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(path, MANIFEST, f"not valid JSON ({error.msg})", "retrain the model") from None
    if manifest.get("format") != FORMAT:
        raise InputError(path, "format", f"saved in layout {manifest.get('format')}, this sclabel reads {FORMAT}",
                         "retrain the model with this version of the workflow")
    if "not_run" in manifest:
        raise InputError(path, "not_run", f"{manifest['method']} could not be trained: {manifest['not_run']}",
                         "pick a method that ran (see results/benchmark/summary.tsv)")
    installed = package_versions(manifest.get("version_bound", []))
    for package in manifest.get("version_bound", []):
        saved = manifest["versions"].get(package, "absent")
        if major_minor(saved) != major_minor(installed[package]):
            raise InputError(path, f"versions.{package}",
                             f"saved with {package} {saved}, this env has {installed[package]}",
                             f"load it in an env with {package} {major_minor(saved)}.x (the method's env file) "
                             "or retrain it")
    return manifest


def load_annotator(folder: str | os.PathLike[str]) -> Annotator:
    """The annotator saved in ``folder``, rebuilt by its registered method's class."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        cls = registry.annotator_class(manifest["method"])
    except registry.UnknownMethod as error:
        raise InputError(folder / MANIFEST, "method", str(error).split(". Fix:")[0],
                         "load it with the sclabel version that saved it") from None
    return cls.from_saved(folder, manifest)


def save_not_run(folder: str | os.PathLike[str], method: str, reason: str) -> None:
    """A model folder saying the method could not be trained on this split (loading it raises that reason)."""
    from sclabel.io import atomic_folder

    with atomic_folder(folder) as tmp:
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "method": method, "not_run": reason}) + "\n")


def validation_macro_f1(annotator: Annotator, cells: LabelledCells) -> float:
    """Macro F1 of the annotator's most probable class on the cells of its known types, over those cells' own types.

    The one score every per-dataset choice made on validation cells uses (the linear baselines' ``C``, the neural
    methods' loss mode): ``metrics.headline_scores``'s macro F1 without abstention.
    """
    from sclabel.metrics import headline_scores
    from sclabel.store import row_chunks

    labels = np.asarray(cells.labels).astype(str)
    probabilities = np.vstack([annotator.predict_proba(chunk)
                               for chunk in row_chunks(cells.X, annotator.context.chunk_cells)])
    known = np.isin(labels, annotator.classes)
    if not known.any():
        return float("nan")
    predicted = np.asarray(annotator.classes)[probabilities.argmax(axis=1)]
    return headline_scores(labels[known], predicted[known])["macro_f1"]


def best_on_validation(scores: Mapping[Any, float]) -> Any:
    """The candidate with the highest validation score; a tie goes to the one listed first (NaN never wins)."""
    candidates = list(scores)
    finite = [key for key in candidates if np.isfinite(scores[key])]
    return max(finite, key=lambda key: scores[key]) if finite else candidates[0]


def predicted_labels(classes: np.ndarray, probabilities: np.ndarray, abstained: np.ndarray) -> np.ndarray:
    """Most probable class per cell; ``unassigned`` where the method abstained."""
    labels = np.asarray(classes).astype(object)[probabilities.argmax(axis=1)]
    labels[np.asarray(abstained, dtype=bool)] = UNASSIGNED
    return labels.astype(str)
