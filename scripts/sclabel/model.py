"""CellTypeAnnotator: the neural methods' Annotator (an encoder + classifier head, or a deep ensemble of them)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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
log = logging.getLogger(__name__)


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file."""
    return [line for line in path.read_text().splitlines() if line]


@dataclass
class Member:
    """One independently seeded network: an encoder, its classifier head and its softmax temperature."""

    encoder: nn.Module
    head: ClassifierHead
    temperature: float = 1.0

    @property
    def network(self) -> nn.Sequential:
        """Encoder followed by head, mapping expression to class logits, in the head's mode (a new container starts
        in training mode, and ``predict_batches`` restores the mode it finds)."""
        network = nn.Sequential(self.encoder, self.head)
        network.training = self.head.training
        return network


class Stacked(nn.Module):
    """Several modules applied to the same batch, outputs stacked [cells, modules, ...] (one pass over the cells)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.training = modules[0].training  # so predict_batches restores the parts' own mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each module's output for ``x``, stacked along dimension 1."""
        return torch.stack([part(x) for part in self.parts], dim=1)


def member_checkpoints(checkpoint_dir: Path | None, index: int) -> Path | None:
    """Checkpoint folder of ensemble member ``index``: the run's own folder for the first, a subfolder for others."""
    if checkpoint_dir is None or index == 0:
        return checkpoint_dir
    return Path(checkpoint_dir) / f"member{index}"


class CellTypeAnnotator(Annotator):
    """Cell-type classifier over a fixed gene list: encoder (mlp or transformer) + scBalance-style head.

    Training also fits a softmax temperature on the validation cells and keeps a class-balanced sample of the
    training cells' embeddings (the reference of the distance-based rejection scores).

    With ``finetune.n_seeds`` = N > 1 it is a deep ensemble: N members trained one after another on the same cells
    with seeds seed, seed + 1, ..., each with its own temperature; the class probabilities are the mean of the
    members' calibrated probabilities, the embedding is the members' unit embeddings side by side (scaled to unit
    length) and ``ensemble_mi`` scores their disagreement. ``encoder``, ``head``, ``network`` and ``temperature``
    are the first member's (the model's own when N = 1).
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
        self.n_seeds = int(self.settings.get("n_seeds", 1))
        if self.n_seeds < 1:
            raise ValueError(f"finetune.n_seeds must be at least 1, not {self.n_seeds}")
        self._build()
        if self.rejection not in novelty.REJECTIONS:
            raise ValueError(f"finetune.rejection {self.rejection!r} is not one of {', '.join(novelty.REJECTIONS)}")
        if self.rejection in novelty.ENSEMBLE_REJECTIONS and self.n_seeds < 2:
            raise ValueError(f"finetune.rejection {self.rejection} scores an ensemble's disagreement: "
                             "set finetune.n_seeds to 2 or more")

    def _new_member(self) -> Member:
        """A freshly initialised encoder and head (eval mode) from the global torch generator, uncalibrated."""
        encoder = build_encoder(self.encoder_kind, len(self.genes), self.encoder_hparams)
        member = Member(encoder, ClassifierHead(encoder.out_dim, len(self.labels), **self.head_hparams))
        member.network.eval()
        return member

    def _build(self) -> None:
        """(Re)create ``n_seeds`` freshly initialised members, uncalibrated, without reference."""
        self._set_members([self._new_member() for _ in range(self.n_seeds)])

    def _set_members(self, members: list[Member]) -> None:
        """Use ``members`` and drop the reference (its embedding is theirs)."""
        self.members = members
        width = self.encoder.out_dim * (len(members) if len(members) > 1 else 1)
        self.reference = np.zeros((0, width), dtype=np.float32)  # unit-length training embeddings
        self.reference_codes = np.zeros(0, dtype=np.int64)  # their class codes

    @property
    def encoder(self) -> nn.Module:
        """The first member's encoder."""
        return self.members[0].encoder

    @property
    def head(self) -> ClassifierHead:
        """The first member's classifier head."""
        return self.members[0].head

    @property
    def temperature(self) -> float:
        """The first member's softmax temperature."""
        return self.members[0].temperature

    @property
    def rejection(self) -> str:
        """The rejection score ``rejection_score`` gives by default (``finetune.rejection``)."""
        return self.settings.get("rejection", novelty.DEFAULT_REJECTION)

    @property
    def network(self) -> nn.Sequential:
        """The first member's encoder followed by its head, mapping expression to class logits."""
        return self.members[0].network

    def to(self, device: str = "auto") -> CellTypeAnnotator:
        """Move every member's modules to ``device`` (see ``pick_device``); returns self."""
        for member in self.members:
            member.network.to(pick_device(device))
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
        """Train from a fresh seeded initialisation (optionally a pretrained encoder); returns the (first member's)
        history.

        ``X_train``/``X_val`` may be ``store.RowView``s, streamed ``buffer_cells`` rows at a time. An ensemble's
        members are trained one after another (member i with seed ``seed`` + i, checkpoints in
        ``member_checkpoints``); each one's training time is logged and kept in ``training["members"]``.
        """
        settings = settings or FinetuneSettings()
        self._check_genes(X_train)
        self._check_genes(X_val)
        codes_train, codes_val = self.encode_labels(y_train), self.encode_labels(y_val)
        members, histories, records = [], [], []
        for index in range(self.n_seeds):
            member_seed = seed + index
            seed_everything(member_seed)
            member = self._new_member()
            if pretrained_encoder_state is not None:
                member.encoder.load_state_dict(pretrained_encoder_state)
            started = time.perf_counter()
            history = fit_classifier(member.encoder, member.head, X_train, codes_train, X_val, codes_val, settings,
                                     member_seed, device, member_checkpoints(checkpoint_dir, index), progress,
                                     on_epoch_end, buffer_cells)
            seconds = time.perf_counter() - started
            log.info("member %d/%d (seed %d): %.1f s, best epoch %d, validation macro F1 %.4f", index + 1,
                     self.n_seeds, member_seed, seconds, history["best_epoch"], history["best_val_macro_f1"])
            members.append(member)
            histories.append(history)
            records.append({"seed": member_seed, "seconds": round(seconds, 3), "best_epoch": history["best_epoch"],
                            "best_val_macro_f1": history["best_val_macro_f1"], "start_epoch": history["start_epoch"]})
        self._set_members(members)
        self.training = {"settings": asdict(settings), "seed": seed, "history": histories[0], "members": records}
        self.seed = seed
        self.calibrate(X_val, y_val)
        self.fit_reference(X_train, y_train, self.settings.get("rejection_reference_cells", REFERENCE_CELLS), seed)
        return histories[0]

    def calibrate(self, X_val: Matrix, y_val: Sequence[str]) -> list[float]:
        """Fit each member's softmax temperature on validation cells (lowest NLL, see ``novelty.fit_temperature``);
        returns them. ``training["calibration"]`` records the fit (one entry per member under ``members`` when
        there are several)."""
        codes = self.encode_labels(y_val)
        fits = []
        for member, logits in zip(self.members, self.member_logits(X_val).transpose(1, 0, 2)):
            member.temperature = novelty.fit_temperature(logits, codes)
            fits.append({"temperature": member.temperature, "val_nll": novelty.nll(logits, codes, 1.0),
                         "val_nll_calibrated": novelty.nll(logits, codes, member.temperature)})
        self.training["calibration"] = fits[0] if len(fits) == 1 else {"members": fits}
        return [member.temperature for member in self.members]

    def fit_reference(self, X_train: Matrix, y_train: Sequence[str], max_cells: int, seed: int) -> None:
        """Keep the unit-length embeddings of a seeded class-balanced sample of at most ``max_cells`` training cells."""
        codes = self.encode_labels(y_train)
        rows = novelty.balanced_sample(codes, max_cells, seed)
        self.reference = novelty.l2_normalised(self.embed(take_rows(X_train, rows)))
        self.reference_codes = codes[rows]

    def member_logits(self, X: Matrix) -> np.ndarray:
        """Every member's class logits [cells, members, labels] (before the temperatures), in one pass over ``X``."""
        self._check_genes(X)
        return predict_batches(Stacked([member.network for member in self.members]), X, self._batch_size())

    def logits(self, X: Matrix) -> np.ndarray:
        """The first member's class logits [cells, labels] (before the temperature)."""
        return self.member_logits(X)[:, 0]

    def member_probabilities(self, X: Matrix) -> np.ndarray:
        """Every member's calibrated class probabilities [cells, members, labels]."""
        logits = self.member_logits(X)
        return np.stack([novelty.softmax(logits[:, i], member.temperature) for i, member in enumerate(self.members)],
                        axis=1)

    def predict_proba(self, X: Matrix) -> np.ndarray:
        """Class probabilities [cells, labels] for gene-aligned log1p CP10k expression (an ensemble: the mean of
        its members' calibrated probabilities)."""
        return self.member_probabilities(X).mean(axis=1)

    @property
    def rejection_options(self) -> tuple[str, ...]:
        """The rejection scores this model gives: every ``novelty.REJECTIONS`` option (``ensemble_mi`` only for an
        ensemble)."""
        return tuple(kind for kind in novelty.REJECTIONS
                     if len(self.members) > 1 or kind not in novelty.ENSEMBLE_REJECTIONS)

    def rejection_score(self, X: Matrix, kind: str | None = None) -> np.ndarray:
        """How unlike the training cells each cell is, higher = more novel (``kind``: one of ``novelty.REJECTIONS``,
        default ``finetune.rejection``): 1 - calibrated top probability, energy (an ensemble: its members' mean),
        the cosine distance to the k nearest reference cells or to the nearest class centroid in the embedding, or
        an ensemble's mutual information (``ensemble_mi``)."""
        kind = kind or self.rejection
        if kind == "max_softmax":
            return 1.0 - self.predict_proba(X).max(axis=1)
        if kind == "energy":
            logits = self.member_logits(X)
            return np.mean([novelty.energy(logits[:, i], member.temperature)
                            for i, member in enumerate(self.members)], axis=0)
        if kind not in novelty.REJECTIONS:
            raise ValueError(f"rejection {kind!r} is not one of {', '.join(novelty.REJECTIONS)}")
        if kind == "ensemble_mi":
            if len(self.members) < 2:
                raise ValueError("ensemble_mi needs an ensemble: train with finetune.n_seeds of 2 or more")
            return novelty.mutual_information(self.member_probabilities(X))
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
        """Encoder embedding [cells, out_dim]; an ensemble's: ``novelty.joint_embedding`` of its members'."""
        self._check_genes(X)
        embeddings = predict_batches(Stacked([member.encoder for member in self.members]), X, self._batch_size())
        return embeddings[:, 0] if len(self.members) == 1 else novelty.joint_embedding(embeddings)

    def save_arrays(self, folder: Path) -> dict:
        """weights.pt (every member's weights, weights only), reference.npz (reference embeddings and their class
        codes), labels.txt and model.json (architecture, preprocessing, training record); the number of members,
        their temperatures and what was chosen on validation cells (``config.selection``) go into the manifest."""
        meta = {"encoder_kind": self.encoder_kind, "encoder_hparams": self.encoder.hparams,
                "head_hparams": self.head.hparams, "preprocessing": self.preprocessing, "config": self.config,
                "training": self.training, "inference_batch_size": self._batch_size()}
        torch.save({"members": [{"encoder": member.encoder.state_dict(), "head": member.head.state_dict()}
                                for member in self.members]}, folder / "weights.pt")
        (folder / "labels.txt").write_text("\n".join(self.labels) + "\n")
        (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        np.savez(folder / REFERENCE_FILE, embeddings=self.reference, codes=self.reference_codes)
        return {"n_seeds": len(self.members), "temperatures": [member.temperature for member in self.members],
                "selection": self.config.get("selection")}

    def load_arrays(self, folder: Path, meta: dict) -> None:
        """The members' weights, temperatures and the reference written by ``save_arrays`` (the architecture is
        rebuilt by ``from_saved``; a model saved before calibration loads with temperature 1 and no reference, one
        saved before ensembles as its single network)."""
        weights = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        states = weights.get("members", [weights])
        temperatures = meta.get("temperatures", [meta.get("temperature", 1.0)] * len(states))
        self.n_seeds = len(states)
        self._set_members([self._new_member() for _ in states])
        for member, state, temperature in zip(self.members, states, temperatures):
            member.encoder.load_state_dict(state["encoder"])
            member.head.load_state_dict(state["head"])
            member.temperature = float(temperature)
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
