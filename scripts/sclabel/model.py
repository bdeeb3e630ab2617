"""CellTypeAnnotator: the neural methods' Annotator (an encoder + classifier head), and gene alignment."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sclabel.annotator import UNASSIGNED, Annotator, LabelledCells
from sclabel.errors import InputError
from sclabel.nn import novelty
from sclabel.nn.encoders import Matrix, build_encoder, pick_device, predict_batches, seed_everything
from sclabel.nn.finetune import ClassifierHead, FinetuneSettings, fit_classifier
from sclabel.store import DEFAULT_BUFFER_CELLS, take_rows

MODEL_FILES = ("model.json", "weights.pt", "labels.txt")
REFERENCE_FILE = "reference.npz"
REFERENCE_CELLS = 20_000  # default cap on the training cells whose embeddings the distance scores compare to
NEIGHBOURS = 10  # default k of knn_distance


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file."""
    return [line for line in path.read_text().splitlines() if line]


class CellTypeAnnotator(Annotator):
    """Cell-type classifier over a fixed gene list: encoder (mlp or transformer) + scBalance-style head.

    Training also fits a softmax temperature on the validation cells and keeps a class-balanced sample of the
    training cells' embeddings (the reference of the distance-based rejection scores).
    """

    version_bound = ("torch",)

    def __init__(self, genes: Sequence[str], labels: Sequence[str], encoder_kind: str = "mlp",
                 encoder_hparams: dict | None = None, head_hparams: dict | None = None,
                 preprocessing: dict | None = None, config: dict | None = None,
                 inference_batch_size: int | None = None) -> None:
        config = dict(config or {})
        super().__init__(config.get("method", encoder_kind), config.get("finetune"), 0, genes)
        self.labels = [str(label) for label in labels]
        self.classes = np.array(self.labels, dtype=str)
        for field, names in (("genes", self.genes), ("labels", self.labels)):
            if len(set(names)) != len(names):
                raise ValueError(f"{field} must be unique")
        self.encoder_kind = encoder_kind
        self.encoder_hparams = dict(encoder_hparams or {})
        self.head_hparams = dict(head_hparams or {})
        self.preprocessing = dict(preprocessing or {})
        self.config = config
        self.training: dict = {}
        self.inference_batch_size = inference_batch_size  # cells per forward pass; None: fine-tuning batch size
        self._build()
        if self.rejection not in novelty.REJECTIONS:
            raise ValueError(f"finetune.rejection {self.rejection!r} is not one of {', '.join(novelty.REJECTIONS)}")

    def _build(self) -> None:
        """(Re)create freshly initialised encoder and head modules (eval mode), uncalibrated, without reference."""
        self.encoder = build_encoder(self.encoder_kind, len(self.genes), self.encoder_hparams)
        self.head = ClassifierHead(self.encoder.out_dim, len(self.labels), **self.head_hparams)
        self.network.eval()
        self.temperature = 1.0
        self.reference = np.zeros((0, self.encoder.out_dim), dtype=np.float32)  # unit-length training embeddings
        self.reference_codes = np.zeros(0, dtype=np.int64)  # their class codes

    @property
    def rejection(self) -> str:
        """The rejection score ``rejection_score`` gives by default (``finetune.rejection``)."""
        return self.settings.get("rejection", novelty.DEFAULT_REJECTION)

    @property
    def network(self) -> nn.Sequential:
        """Encoder followed by head, mapping expression to class logits."""
        return nn.Sequential(self.encoder, self.head)

    def to(self, device: str = "auto") -> CellTypeAnnotator:
        """Move the modules to ``device`` (see ``pick_device``); returns self."""
        self.network.to(pick_device(device))
        return self

    def _check_genes(self, X: Matrix) -> None:
        """Refuse a matrix whose columns do not match the model's genes."""
        if X.shape[1] != len(self.genes):
            raise ValueError(f"matrix has {X.shape[1]} genes but the model has {len(self.genes)}; "
                             "reorder its columns with align_genes first")

    def _batch_size(self) -> int:
        """Cells per forward pass at inference: the set value, else the fine-tuning batch size."""
        return (self.inference_batch_size or self.training.get("settings", {}).get("batch_size")
                or FinetuneSettings.batch_size)

    def encode_labels(self, y: Sequence[str]) -> np.ndarray:
        """Integer codes of string labels, refusing labels the model does not know."""
        code = {label: i for i, label in enumerate(self.labels)}
        unknown = sorted({str(label) for label in y} - code.keys())
        if unknown:
            raise ValueError(f"labels not in the model's label list: {', '.join(unknown[:5])}")
        return np.array([code[str(label)] for label in y], dtype=np.int64)

    def fit(self, train: LabelledCells, validation: LabelledCells | None = None, **options) -> CellTypeAnnotator:
        """Train with early stopping on ``validation`` (required); ``options`` as for ``train``."""
        if validation is None:
            raise ValueError("neural methods stop early on validation cells: pass them")
        self.train(train.X, train.labels, validation.X, validation.labels, **options)
        return self

    def train(self, X_train: Matrix, y_train: Sequence[str], X_val: Matrix, y_val: Sequence[str],
            settings: FinetuneSettings | None = None, seed: int = 0, device: str = "auto",
            checkpoint_dir: Path | None = None, pretrained_encoder_state: dict | None = None,
            progress: bool = True, on_epoch_end: Callable[[int, dict], None] | None = None,
            buffer_cells: int = DEFAULT_BUFFER_CELLS) -> dict:
        """Train from a fresh seeded initialisation (optionally a pretrained encoder); returns the history.

        ``X_train``/``X_val`` may be ``store.RowView``s, streamed ``buffer_cells`` rows at a time.
        """
        settings = settings or FinetuneSettings()
        self._check_genes(X_train)
        self._check_genes(X_val)
        seed_everything(seed)
        self._build()
        if pretrained_encoder_state is not None:
            self.encoder.load_state_dict(pretrained_encoder_state)
        history = fit_classifier(self.encoder, self.head, X_train, self.encode_labels(y_train), X_val,
                                 self.encode_labels(y_val), settings, seed, device, checkpoint_dir, progress,
                                 on_epoch_end, buffer_cells)
        self.training = {"settings": asdict(settings), "seed": seed, "history": history}
        self.seed = seed
        self.calibrate(X_val, y_val)
        self.fit_reference(X_train, y_train, self.settings.get("rejection_reference_cells", REFERENCE_CELLS), seed)
        return history

    def calibrate(self, X_val: Matrix, y_val: Sequence[str]) -> float:
        """Fit the softmax temperature on validation cells (lowest NLL, see ``novelty.fit_temperature``); returns it."""
        logits, codes = self.logits(X_val), self.encode_labels(y_val)
        self.temperature = novelty.fit_temperature(logits, codes)
        self.training["calibration"] = {"temperature": self.temperature, "val_nll": novelty.nll(logits, codes, 1.0),
                                        "val_nll_calibrated": novelty.nll(logits, codes, self.temperature)}
        return self.temperature

    def fit_reference(self, X_train: Matrix, y_train: Sequence[str], max_cells: int, seed: int) -> None:
        """Keep the unit-length embeddings of a seeded class-balanced sample of at most ``max_cells`` training cells."""
        codes = self.encode_labels(y_train)
        rows = novelty.balanced_sample(codes, max_cells, seed)
        self.reference = novelty.l2_normalised(self.embed(take_rows(X_train, rows)))
        self.reference_codes = codes[rows]

    def logits(self, X: Matrix) -> np.ndarray:
        """Class logits [cells, labels] (before the temperature)."""
        self._check_genes(X)
        return predict_batches(self.network, X, self._batch_size())

    def predict_proba(self, X: Matrix) -> np.ndarray:
        """Class probabilities [cells, labels] for gene-aligned log1p CP10k expression."""
        return novelty.softmax(self.logits(X), self.temperature)

    def rejection_score(self, X: Matrix, kind: str | None = None) -> np.ndarray:
        """How unlike the training cells each cell is, higher = more novel (``kind``: one of ``novelty.REJECTIONS``,
        default ``finetune.rejection``): 1 - calibrated top probability, energy, or the cosine distance to the k
        nearest reference cells or to the nearest class centroid in the embedding."""
        kind = kind or self.rejection
        if kind == "max_softmax":
            return 1.0 - self.predict_proba(X).max(axis=1)
        if kind == "energy":
            return novelty.energy(self.logits(X), self.temperature)
        if kind not in novelty.REJECTIONS:
            raise ValueError(f"rejection {kind!r} is not one of {', '.join(novelty.REJECTIONS)}")
        if not len(self.reference):
            raise ValueError(f"{kind} needs the training cells' reference embeddings: train the model (or load one "
                             f"saved with {REFERENCE_FILE})")
        if kind == "knn_distance":
            return novelty.knn_distance(self.embed(X), self.reference, self.settings.get("rejection_k", NEIGHBOURS))
        return novelty.centroid_distance(
            self.embed(X), novelty.class_centroids(self.reference, self.reference_codes, len(self.labels)))

    def predict(self, X: Matrix, threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Most probable label per cell ("unassigned" when its probability < ``threshold``) and that probability."""
        proba = self.predict_proba(X)
        confidence = proba.max(axis=1)
        labels = np.array(self.labels, dtype=object)[proba.argmax(axis=1)]
        labels[confidence < threshold] = UNASSIGNED
        return labels.astype(str), confidence

    def embed(self, X: Matrix) -> np.ndarray:
        """Encoder embedding [cells, out_dim]."""
        self._check_genes(X)
        return predict_batches(self.encoder, X, self._batch_size())

    def save_arrays(self, folder: Path) -> dict:
        """weights.pt (weights only), reference.npz (reference embeddings and their class codes), labels.txt and
        model.json (architecture, preprocessing, training record); the temperature goes into the manifest."""
        meta = {"encoder_kind": self.encoder_kind, "encoder_hparams": self.encoder.hparams,
                "head_hparams": self.head.hparams, "preprocessing": self.preprocessing, "config": self.config,
                "training": self.training, "inference_batch_size": self._batch_size()}
        torch.save({"encoder": self.encoder.state_dict(), "head": self.head.state_dict()}, folder / "weights.pt")
        (folder / "labels.txt").write_text("\n".join(self.labels) + "\n")
        (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        np.savez(folder / REFERENCE_FILE, embeddings=self.reference, codes=self.reference_codes)
        return {"temperature": self.temperature}

    def load_arrays(self, folder: Path, meta: dict) -> None:
        """The weights, temperature and reference written by ``save_arrays`` (the architecture is rebuilt by
        ``from_saved``; a model saved before calibration loads with temperature 1 and no reference)."""
        weights = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        self.encoder.load_state_dict(weights["encoder"])
        self.head.load_state_dict(weights["head"])
        self.temperature = float(meta.get("temperature", 1.0))
        if (folder / REFERENCE_FILE).is_file():
            with np.load(folder / REFERENCE_FILE, allow_pickle=False) as reference:
                self.reference, self.reference_codes = reference["embeddings"], reference["codes"]

    @classmethod
    def from_saved(cls, folder: Path, manifest: dict) -> CellTypeAnnotator:
        """Rebuild a model written by ``save`` (on cpu, eval mode)."""
        for name in MODEL_FILES:
            if not (folder / name).is_file():
                raise InputError(folder, name, "file is missing", "point to a folder written by CellTypeAnnotator.save")
        meta = json.loads((folder / "model.json").read_text())
        model = cls(_read_lines(folder / "genes.txt"), _read_lines(folder / "labels.txt"), meta["encoder_kind"],
                    meta["encoder_hparams"], meta["head_hparams"], meta["preprocessing"], meta["config"],
                    meta.get("inference_batch_size"))
        model.load_arrays(folder, manifest["meta"])
        model.training = meta["training"]
        model.seed = manifest["seed"]
        model.rejection_threshold = manifest.get("rejection_threshold")
        return model
