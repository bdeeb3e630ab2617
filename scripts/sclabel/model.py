"""CellTypeAnnotator: an encoder + classifier head with fit / predict / save / load, and gene alignment."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from sclabel.errors import InputError
from sclabel.io import atomic_folder
from sclabel.nn.encoders import Matrix, build_encoder, pick_device, predict_batches, seed_everything
from sclabel.nn.finetune import ClassifierHead, FinetuneSettings, fit_classifier
from sclabel.qc import gene_selector
from sclabel.store import DEFAULT_BUFFER_CELLS

UNASSIGNED = "unassigned"
MODEL_FILES = ("model.json", "weights.pt", "genes.txt", "labels.txt")


def align_genes(data: ad.AnnData | tuple[Matrix, Sequence[str]], model_genes: Sequence[str],
                min_overlap: float = 0.5, source: str = "input") -> tuple[Matrix, float]:
    """Reorder the columns of an AnnData (or ``(X, genes)``) to ``model_genes``, zero-filling missing genes.

    Returns the aligned matrix (sparse stays sparse) and the fraction of model genes found; raises
    InputError naming ``source`` when that fraction is below ``min_overlap``.
    """
    X, genes = (data.X, data.var_names) if isinstance(data, ad.AnnData) else data
    selector, found = gene_selector(genes, model_genes)
    overlap = found / len(model_genes)
    if overlap < min_overlap:
        raise InputError(source, "genes", f"only {found} of {len(model_genes)} model genes ({overlap:.0%}) "
                         f"are present, below the minimum {min_overlap:.0%}",
                         "use data with the model's gene symbols (same species and naming) or a model "
                         "trained on these genes")
    aligned = X @ selector
    aligned = sp.csr_matrix(aligned, dtype=np.float32) if sp.issparse(aligned) else np.asarray(aligned, np.float32)
    return aligned, overlap


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file."""
    return [line for line in path.read_text().splitlines() if line]


class CellTypeAnnotator:
    """Cell-type classifier over a fixed gene list: encoder (mlp or transformer) + scBalance-style head."""

    def __init__(self, genes: Sequence[str], labels: Sequence[str], encoder_kind: str = "mlp",
                 encoder_hparams: dict | None = None, head_hparams: dict | None = None,
                 preprocessing: dict | None = None, config: dict | None = None,
                 inference_batch_size: int | None = None) -> None:
        self.genes = [str(gene) for gene in genes]
        self.labels = [str(label) for label in labels]
        for field, names in (("genes", self.genes), ("labels", self.labels)):
            if len(set(names)) != len(names):
                raise ValueError(f"{field} must be unique")
        self.encoder_kind = encoder_kind
        self.encoder_hparams = dict(encoder_hparams or {})
        self.head_hparams = dict(head_hparams or {})
        self.preprocessing = dict(preprocessing or {})
        self.config = dict(config or {})
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

    def fit(self, X_train: Matrix, y_train: Sequence[str], X_val: Matrix, y_val: Sequence[str],
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

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write weights.pt, genes.txt, labels.txt and model.json into ``folder`` atomically."""
        meta = {"encoder_kind": self.encoder_kind, "encoder_hparams": self.encoder.hparams,
                "head_hparams": self.head.hparams, "preprocessing": self.preprocessing, "config": self.config,
                "training": self.training, "inference_batch_size": self._batch_size()}
        with atomic_folder(folder) as tmp:
            torch.save({"encoder": self.encoder.state_dict(), "head": self.head.state_dict()}, tmp / "weights.pt")
            (tmp / "genes.txt").write_text("\n".join(self.genes) + "\n")
            (tmp / "labels.txt").write_text("\n".join(self.labels) + "\n")
            (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> CellTypeAnnotator:
        """Rebuild a model written by ``save`` (on cpu, eval mode)."""
        folder = Path(folder)
        for name in MODEL_FILES:
            if not (folder / name).is_file():
                raise InputError(folder, name, "file is missing", "point to a folder written by CellTypeAnnotator.save")
        meta = json.loads((folder / "model.json").read_text())
        model = cls(_read_lines(folder / "genes.txt"), _read_lines(folder / "labels.txt"), meta["encoder_kind"],
                    meta["encoder_hparams"], meta["head_hparams"], meta["preprocessing"], meta["config"],
                    meta.get("inference_batch_size"))
        weights = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        model.encoder.load_state_dict(weights["encoder"])
        model.head.load_state_dict(weights["head"])
        model.training = meta["training"]
        return model
