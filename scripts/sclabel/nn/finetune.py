"""Supervised fine-tuning of an encoder plus an scBalance-style classifier head, with resumable checkpoints.

Optional on-the-fly augmentation (``FinetuneSettings.augment``, after scTab): each training cell of a mini-batch is,
with that probability, mixed with a random other cell of the same type in the same mini-batch and given Gaussian
noise on its detected genes (log1p scale). Partners come from the mini-batch so that the streamed and in-memory data
paths, which yield the same batches, stay identical and no extra rows are read from disk.
"""

from __future__ import annotations

import copy
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from torch.utils.data import WeightedRandomSampler
from tqdm.auto import tqdm

from sclabel.errors import InputError, one_line
from sclabel.io import atomic_path
from sclabel.nn.encoders import (PRECISIONS, Matrix, autocast, dense_tensor, iterate_minibatches, penalty,
                                 pick_device, predict_batches, seed_everything, time_left)
from sclabel.store import DEFAULT_BUFFER_CELLS, row_blocks

log = logging.getLogger(__name__)
IMBALANCE_MODES = ("sampler", "weighted_loss", "none")
CHECKPOINT_NAME = "last.pt"
AUGMENT_STREAM = 1  # the augmentation's random stream is SeedSequence((seed, AUGMENT_STREAM)), apart from the sampler's
MAX_MIX_WEIGHT = 0.5  # a mixed cell keeps at least half of its own profile
EpochCallback = Callable[[int, dict], None]


@dataclass
class FinetuneSettings:
    """Hyper-parameters of one fine-tuning run."""

    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    encoder_lr: float | None = None
    weight_decay: float = 1e-4
    patience: int = 8
    imbalance: str = "sampler"
    freeze_encoder: bool = False
    grad_accum_steps: int = 1
    precision: str = "fp32"
    augment: float = 0.0
    augment_noise: float = 0.1

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.patience, self.grad_accum_steps) < 1:
            raise ValueError("epochs, batch_size, patience and grad_accum_steps must all be at least 1")
        if not 0.0 <= self.augment <= 1.0 or self.augment_noise < 0.0:
            raise ValueError("augment must be a probability in [0, 1] and augment_noise at least 0")
        if self.imbalance not in IMBALANCE_MODES:
            raise ValueError(f"imbalance {self.imbalance!r} is not one of {', '.join(IMBALANCE_MODES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")


class ClassifierHead(nn.Module):
    """Per hidden layer Linear → BatchNorm1d → ELU → Dropout, then a Linear to class logits (scBalance)."""

    def __init__(self, in_dim: int, n_classes: int, hidden_dims: list[int] | None = None,
                 dropout: float = 0.5) -> None:
        super().__init__()
        hidden_dims = [256, 128] if hidden_dims is None else list(hidden_dims)
        self.hparams = {"hidden_dims": hidden_dims, "dropout": dropout}
        self.n_classes = n_classes
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ELU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits for a [cells, in_dim] embedding."""
        return self.net(z)


def class_counts(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Number of cells of each class code 0..n_classes-1."""
    return np.bincount(y, minlength=n_classes).astype(np.float64)


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Balanced cross-entropy weights n / (n_present_classes * count); 0 for classes absent from ``y``."""
    counts = class_counts(y, n_classes)
    weights = np.divide(len(y) / np.count_nonzero(counts), counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


def epoch_order(y: np.ndarray, n_classes: int, imbalance: str, generator: torch.Generator) -> np.ndarray:
    """Training row order for one epoch: class-balanced draws with replacement, or a shuffle."""
    if imbalance == "sampler":
        per_cell = 1.0 / class_counts(y, n_classes)[y]
        sampler = WeightedRandomSampler(per_cell.tolist(), num_samples=len(y), replacement=True, generator=generator)
        return np.fromiter(sampler, dtype=np.int64, count=len(y))
    return torch.randperm(len(y), generator=generator).numpy()


def augment_generator(seed: int) -> torch.Generator:
    """The augmentation's own seeded CPU generator (its draws never shift the sampler's)."""
    state = np.random.SeedSequence((seed, AUGMENT_STREAM)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def same_type_partners(codes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each cell, the position of a uniformly drawn other cell of its class in the batch (itself if alone)."""
    n = len(codes)
    draws = torch.rand((n, n), generator=generator).to(codes.device)
    eligible = (codes[:, None] == codes[None, :]) & ~torch.eye(n, dtype=torch.bool, device=codes.device)
    draws = torch.where(eligible, draws, torch.full_like(draws, -1.0))
    best = draws.argmax(dim=1)
    return torch.where(eligible.any(dim=1), best, torch.arange(n, device=codes.device))


def augment_batch(x: torch.Tensor, codes: torch.Tensor, probability: float, noise: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Each cell, with ``probability``: (1 - w) * itself + w * a same-type batch mate (w ~ U(0, MAX_MIX_WEIGHT)),
    plus N(0, ``noise``^2) on its detected genes, clipped at 0; the other cells are returned unchanged."""
    n = len(codes)
    chosen = (torch.rand(n, generator=generator) < probability).to(x.device)
    partners = same_type_partners(codes, generator)
    weight = (torch.rand(n, generator=generator) * MAX_MIX_WEIGHT).to(x.device, x.dtype)[:, None]
    mixed = (1.0 - weight) * x + weight * x[partners]
    jitter = noise * torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    noisy = (mixed + jitter * (mixed > 0)).clamp_min(0.0)
    return torch.where(chosen[:, None], noisy, x)


def _optimizer(encoder: nn.Module, head: nn.Module, settings: FinetuneSettings) -> torch.optim.AdamW:
    """AdamW over the head and, unless frozen, the encoder (with its own learning rate when set)."""
    groups = [{"params": list(head.parameters()), "lr": settings.lr}]
    if not settings.freeze_encoder:
        groups.append({"params": list(encoder.parameters()), "lr": settings.encoder_lr or settings.lr})
    return torch.optim.AdamW(groups, weight_decay=settings.weight_decay)


def _state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copy of a module's state dict."""
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def _new_progress() -> dict:
    """Training progress before the first epoch."""
    return {"epoch": 0, "finished": False, "stale": 0, "best": {"epoch": 0, "f1": -1.0, "loss": float("inf")},
            "history": {"epoch": [], "train_loss": [], "val_loss": [], "val_macro_f1": [], "val_accuracy": []}}


def _train_epoch(encoder: nn.Module, head: nn.Module, X: Matrix, y: np.ndarray, order: np.ndarray,
                 optimizer: torch.optim.Optimizer, loss_fn: nn.Module, settings: FinetuneSettings,
                 device: torch.device, buffer_cells: int = DEFAULT_BUFFER_CELLS,
                 augment_rng: torch.Generator | None = None) -> float:
    """One pass over ``order`` with gradient accumulation (and augmentation when ``settings.augment`` > 0); mean
    batch loss (with the encoder's ``penalty``). Rows are read ``buffer_cells`` at a time."""
    encoder.train(not settings.freeze_encoder)
    head.train()
    batches = list(iterate_minibatches(order, settings.batch_size))
    optimizer.zero_grad()
    total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per batch
    for i, (rows, block) in enumerate(row_blocks(X, batches, buffer_cells), start=1):
        x, codes = dense_tensor(block, device), torch.from_numpy(y[rows]).to(device)
        if settings.augment > 0:
            x = augment_batch(x, codes, settings.augment, settings.augment_noise, augment_rng)
        with autocast(device, settings.precision):
            logits = head(encoder(x))
        loss = loss_fn(logits.float(), codes) + penalty(encoder)
        (loss / settings.grad_accum_steps).backward()
        if i % settings.grad_accum_steps == 0 or i == len(batches):
            optimizer.step()
            optimizer.zero_grad()
        total += loss.detach()
    return total.item() / len(batches)


def evaluate(model: nn.Module, X: Matrix, y: np.ndarray, batch_size: int,
             buffer_cells: int = DEFAULT_BUFFER_CELLS) -> dict[str, float]:
    """Cross-entropy, macro F1 and accuracy of ``model`` (encoder + head) on labelled cells."""
    logits = torch.from_numpy(predict_batches(model, X, batch_size, buffer_cells))
    pred = logits.argmax(dim=1).numpy()
    return {"val_loss": nn.functional.cross_entropy(logits, torch.from_numpy(y)).item(),
            "val_macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
            "val_accuracy": float(accuracy_score(y, pred))}


def _improves(scores: dict[str, float], best: dict) -> bool:
    """Higher validation macro F1, or the same F1 (to 6 decimals) with lower validation loss.

    The loss breaks ties because a small validation set often reaches its top F1 in the first epochs, when batch-norm
    statistics and confidences have not settled yet.
    """
    f1, best_f1 = round(scores["val_macro_f1"], 6), round(best["f1"], 6)
    return f1 > best_f1 or (f1 == best_f1 and scores["val_loss"] < best["loss"])


def _record_epoch(progress: dict, epoch: int, train_loss: float, scores: dict[str, float],
                  encoder: nn.Module, head: nn.Module, settings: FinetuneSettings) -> None:
    """Append the epoch's scores, keep the best state and decide whether training is finished."""
    history = progress["history"]
    history["epoch"].append(epoch)
    history["train_loss"].append(train_loss)
    for key, value in scores.items():
        history[key].append(value)
    if _improves(scores, progress["best"]):
        progress["best"] = {"epoch": epoch, "f1": scores["val_macro_f1"], "loss": scores["val_loss"],
                            "encoder": _state_copy(encoder), "head": _state_copy(head)}
        progress["stale"] = 0
    else:
        progress["stale"] += 1
    progress["epoch"] = epoch
    progress["finished"] = progress["stale"] >= settings.patience or epoch >= settings.epochs


def _save_checkpoint(path: Path, progress: dict, encoder: nn.Module, head: nn.Module,
                     optimizer: torch.optim.Optimizer, generator: torch.Generator, augment_rng: torch.Generator,
                     run_key: dict) -> None:
    """Atomically write everything needed to continue training bit-for-bit."""
    checkpoint = {**progress, "run": run_key, "encoder": _state_copy(encoder), "head": _state_copy(head),
                  "optimizer": optimizer.state_dict(), "sampler_rng": generator.get_state(),
                  "augment_rng": augment_rng.get_state(),
                  "torch_rng": torch.get_rng_state(),
                  "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def _read_checkpoint(path: Path) -> dict | None:
    """A checkpoint's contents; None, with a warning naming the file, when it is truncated or unreadable (training
    then restarts from epoch 1 and overwrites it)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        problem = one_line(err)[:200]
    else:
        if isinstance(checkpoint, dict) and {"run", *_new_progress()} <= checkpoint.keys():
            return checkpoint
        problem = "not a fine-tuning checkpoint"
    log.warning("%s: unreadable checkpoint discarded (%s); training restarts from epoch 1", path, problem)
    return None


def _load_checkpoint(path: Path, checkpoint: dict, encoder: nn.Module, head: nn.Module,
                     optimizer: torch.optim.Optimizer, generator: torch.Generator, augment_rng: torch.Generator,
                     run_key: dict) -> dict:
    """Restore model, optimizer and RNG states from ``path``'s ``checkpoint``; returns the saved progress."""
    if checkpoint["run"] != run_key:
        raise InputError(path, "settings", "checkpoint was written by a run with other settings, seed or data",
                         f"delete {path} or rerun with the settings that wrote it")
    encoder.load_state_dict(checkpoint["encoder"])
    head.load_state_dict(checkpoint["head"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    generator.set_state(checkpoint["sampler_rng"])
    augment_rng.set_state(checkpoint["augment_rng"])
    torch.set_rng_state(checkpoint["torch_rng"])
    if checkpoint["cuda_rng"]:
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    return {key: checkpoint[key] for key in _new_progress()}


def fit_classifier(encoder: nn.Module, head: nn.Module, X_train: Matrix, y_train: np.ndarray, X_val: Matrix,
                   y_val: np.ndarray, settings: FinetuneSettings, seed: int = 0, device: str = "auto",
                   checkpoint_dir: Path | None = None, progress: bool = True,
                   on_epoch_end: EpochCallback | None = None, buffer_cells: int = DEFAULT_BUFFER_CELLS) -> dict:
    """Train ``encoder`` + ``head`` on integer labels with early stopping on validation macro F1.

    ``X_train`` and ``X_val`` may be in memory or ``store.RowView``s read ``buffer_cells`` rows at a time; the
    result is the same. Leaves the best-epoch weights in the modules. With ``checkpoint_dir`` every epoch is saved to
    ``last.pt`` and a run finding one continues from it, ending exactly as an uninterrupted run (an unreadable one is
    discarded with a warning).
    ``on_epoch_end(epoch, history)`` is called after each epoch's checkpoint. The history lists
    per-epoch scores plus ``best_epoch``, ``best_val_macro_f1``, ``start_epoch`` and ``stopped_early``.
    """
    seed_everything(seed)
    device = pick_device(str(device))
    encoder.to(device)
    head.to(device)
    encoder.requires_grad_(not settings.freeze_encoder)
    y_train, y_val = np.asarray(y_train, dtype=np.int64), np.asarray(y_val, dtype=np.int64)
    n_classes = head.n_classes
    optimizer = _optimizer(encoder, head, settings)
    generator = torch.Generator().manual_seed(seed)
    augment_rng = augment_generator(seed)
    weights = class_weights(y_train, n_classes).to(device) if settings.imbalance == "weighted_loss" else None
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    model = nn.Sequential(encoder, head)
    run_key = {"settings": asdict(settings), "seed": seed, "n_train": len(y_train), "n_val": len(y_val)}
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    saved = _read_checkpoint(checkpoint) if checkpoint is not None and checkpoint.is_file() else None
    progress_state = (_load_checkpoint(checkpoint, saved, encoder, head, optimizer, generator, augment_rng, run_key)
                      if saved is not None else _new_progress())
    start_epoch = progress_state["epoch"] + 1
    epochs = range(start_epoch, settings.epochs + 1) if not progress_state["finished"] else range(0)
    epoch_seconds: list[float] = []
    for epoch in tqdm(epochs, desc="fine-tune", disable=not progress):
        order = epoch_order(y_train, n_classes, settings.imbalance, generator)
        started = time.perf_counter()
        train_loss = _train_epoch(encoder, head, X_train, y_train, order, optimizer, loss_fn, settings, device,
                                  buffer_cells, augment_rng)
        cells_per_s = len(order) / max(time.perf_counter() - started, 1e-9)
        scores = evaluate(model, X_val, y_val, settings.batch_size, buffer_cells)
        epoch_seconds.append(time.perf_counter() - started)
        log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val macro F1 %.4f, at most %s left, %.0f training "
                 "cells/s", epoch, settings.epochs, train_loss, scores["val_loss"], scores["val_macro_f1"],
                 time_left(epoch_seconds, settings.epochs - epoch), cells_per_s)
        _record_epoch(progress_state, epoch, train_loss, scores, encoder, head, settings)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, progress_state, encoder, head, optimizer, generator, augment_rng,
                             run_key)
        if on_epoch_end is not None:
            on_epoch_end(epoch, copy.deepcopy(progress_state["history"]))
        if progress_state["finished"]:
            break
    best = progress_state["best"]
    encoder.load_state_dict(best["encoder"])
    head.load_state_dict(best["head"])
    model.eval()
    return {**progress_state["history"], "best_epoch": best["epoch"], "best_val_macro_f1": best["f1"],
            "start_epoch": start_epoch, "stopped_early": progress_state["stale"] >= settings.patience}
