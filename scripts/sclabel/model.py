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
from sclabel.nn.encoders import Matrix, build_encoder, pick_device, predict_batches, seed_everything
from sclabel.nn.finetune import ClassifierHead, FinetuneSettings, fit_classifier
from sclabel.store import DEFAULT_BUFFER_CELLS

MODEL_FILES = ("model.json", "weights.pt", "labels.txt")


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file."""
    return [line for line in path.read_text().splitlines() if line]


class CellTypeAnnotator(Annotator):
    """Cell-type classifier over a fixed gene list: encoder (mlp or transformer) + scBalance-style head."""

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

    def _build(self) -> None:
        """(Re)create freshly initialised encoder and head modules, in eval mode."""
        self.encoder = build_encoder(self.encoder_kind, len(self.genes), self.encoder_hparams)
        self.head = ClassifierHead(self.encoder.out_dim, len(self.labels), **self.head_hparams)
        self.network.eval()

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
        return history

    def predict_proba(self, X: Matrix) -> np.ndarray:
        """Class probabilities [cells, labels] for gene-aligned log1p CP10k expression."""
        self._check_genes(X)
        return torch.softmax(torch.from_numpy(predict_batches(self.network, X, self._batch_size())), dim=1).numpy()

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
        """weights.pt (weights only), labels.txt and model.json (architecture, preprocessing, training record)."""
        meta = {"encoder_kind": self.encoder_kind, "encoder_hparams": self.encoder.hparams,
                "head_hparams": self.head.hparams, "preprocessing": self.preprocessing, "config": self.config,
                "training": self.training, "inference_batch_size": self._batch_size()}
        torch.save({"encoder": self.encoder.state_dict(), "head": self.head.state_dict()}, folder / "weights.pt")
        (folder / "labels.txt").write_text("\n".join(self.labels) + "\n")
        (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        return {}

    def load_arrays(self, folder: Path, meta: dict) -> None:
        """The weights written by ``save_arrays`` (the architecture is rebuilt by ``from_saved``)."""
        weights = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        self.encoder.load_state_dict(weights["encoder"])
        self.head.load_state_dict(weights["head"])

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
        model.load_arrays(folder, {})
        model.training = meta["training"]
        model.seed = manifest["seed"]
        model.rejection_threshold = manifest.get("rejection_threshold")
        return model
