"""Workflow stages that use torch: self-supervised pretraining and fine-tuning."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sclabel import io, locks, registry, splits
from sclabel.annotator import LabelledCells, best_on_validation, validation_macro_f1
from sclabel.errors import InputError
from sclabel.fetch import sha256sum
from sclabel.model import CellTypeAnnotator
from sclabel.nn.encoders import build_encoder, pick_device, seed_everything
from sclabel.nn.finetune import FinetuneSettings
from sclabel.predictions import write_annotator_predictions
from sclabel.splits import read_split
from sclabel.store import DEFAULT_BUFFER_CELLS, DEFAULT_CHUNK_CELLS, CellStore

log = logging.getLogger("sclabel")
PROGRESS = sys.stderr.isatty()  # progress bars on a terminal, not in cluster log files


def parse_method(method: str) -> tuple[str | None, str]:
    """(pretraining or None, encoder) of a registered neural method such as ``kmeans+mlp`` or ``mlp``."""
    spec = registry.METHODS.get(method)
    if spec is None or spec.family != "neural":
        raise InputError("config", "methods", f"unknown neural method '{method}'",
                         f"use one of {', '.join(registry.names('neural'))}")
    return spec.pretrain, spec.encoder


def split_encoder_settings(hparams: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Encoder constructor settings and the optional gene-vector file used only to initialise weights."""
    settings = dict(hparams)
    return settings, settings.pop("gene_embedding_init", None)


def new_encoder(kind: str, hparams: Mapping[str, Any], genes: Sequence[str]) -> torch.nn.Module:
    """A freshly initialised encoder over ``genes`` (gene vectors loaded when the config names a file)."""
    settings, init_file = split_encoder_settings(hparams)
    if kind == "transformer" and init_file:
        from sclabel.nn.transformer import GeneTransformerEncoder

        return GeneTransformerEncoder(n_genes=len(genes), gene_embedding_init=init_file, genes=list(genes),
                                      **settings)
    return build_encoder(kind, len(genes), settings)


def initial_encoder_state(kind: str, hparams: Mapping[str, Any], genes: Sequence[str],
                          seed: int) -> dict[str, torch.Tensor] | None:
    """Seeded starting weights when gene vectors initialise the encoder; None lets the model initialise itself."""
    if not split_encoder_settings(hparams)[1]:
        return None
    seed_everything(seed)
    return new_encoder(kind, hparams, genes).state_dict()


def pretraining_cells(adata: ad.AnnData | CellStore, roles: pd.Series,
                      settings: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Row indices per dataset that pretraining may use: never the split's test cells unless allowed."""
    allowed = np.ones(adata.n_obs, dtype=bool)
    if not settings["use_test_cells"]:
        test = roles.index[roles == splits.TEST]
        allowed &= ~adata.obs_names.isin(test)
    chosen = settings.get("datasets") or list(adata.obs["dataset"].cat.categories)
    dataset = adata.obs["dataset"].astype(str).to_numpy()
    return {name: np.flatnonzero(allowed & (dataset == name)) for name in chosen
            if np.any(allowed & (dataset == name))}


def save_encoder(encoder: torch.nn.Module, kind: str, genes: Sequence[str], output: str) -> None:
    """Write an encoder's weights with its kind, settings and gene list (loadable with weights_only=True)."""
    payload = {"kind": kind, "hparams": json.dumps(encoder.hparams), "genes": list(genes),
               "state": {k: v.cpu() for k, v in encoder.state_dict().items()}}
    with io.atomic_path(output) as tmp:
        torch.save(payload, tmp)


def read_encoder_file(path: str, genes: Sequence[str]) -> dict[str, Any]:
    """A pretrained encoder file's contents, refusing one made over other genes."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload["genes"] != list(genes):
        raise InputError(path, "genes", "pretrained encoder was made over other genes than the training data",
                         "rerun the pretrain rule (delete the file) after changing datasets or QC")
    return payload


def encoder_from_payload(payload: Mapping[str, Any], n_genes: int) -> torch.nn.Module:
    """The encoder an encoder file's contents describe, in eval mode."""
    encoder = build_encoder(payload["kind"], n_genes, json.loads(payload["hparams"]))
    encoder.load_state_dict(payload["state"])
    return encoder.eval()


def pretrain_stage(pretrain: str, encoder_kind: str, encoder_hparams: Mapping[str, Any],
                   settings: Mapping[str, Any], store_settings: Mapping[str, Any], input_h5ad: str,
                   splits_file: str, split: str, output_encoder: str, output_history: str) -> None:
    """Self-supervised pretraining of an encoder on the cells the split allows; labels are never read.

    The matrix is read from disk by rows (``sclabel.store``): each dataset's allowed cells are a ``RowView``.
    """
    with CellStore(input_h5ad) as store:
        cells = pretraining_cells(store, read_split(splits_file, split), settings)
        if not cells:
            raise InputError(input_h5ad, "pretrain.datasets", f"no cells left for pretraining on split {split}",
                             "list datasets with cells outside the test split or set pretrain.use_test_cells: true")
        log.info("pretraining %s+%s on %s", pretrain, encoder_kind, {k: len(v) for k, v in cells.items()})
        genes = list(store.var_names)
        seed_everything(settings["seed"])
        encoder = new_encoder(encoder_kind, encoder_hparams, genes)
        device = pick_device(settings["device"])
        method = settings[pretrain]
        if pretrain == "kmeans":
            from sclabel.nn.kmeans_pretrain import ScaleSettings, pretrain_kmeans

            scale = ScaleSettings(pca_cells=method["pca_cells"], minibatch_above=method["minibatch_above"],
                                  chunk_cells=store_settings["chunk_cells"],
                                  buffer_cells=store_settings["buffer_cells"])
            history = pretrain_kmeans({name: store.view(rows) for name, rows in cells.items()}, encoder,
                                      cluster_sizes=method["cluster_sizes"], rounds=method["rounds"],
                                      epochs=method["epochs"], batch_size=method["batch_size"], lr=method["lr"],
                                      seed=settings["seed"], device=device, progress=PROGRESS, scale=scale)
        else:
            from sclabel.nn.transformer import pretrain_masked_bins

            rows = np.sort(np.concatenate(list(cells.values())))
            if method["max_cells"] and len(rows) > method["max_cells"]:
                rows = np.sort(np.random.default_rng(settings["seed"]).choice(rows, method["max_cells"],
                                                                              replace=False))
            history = pretrain_masked_bins(encoder, store.view(rows), epochs=method["epochs"],
                                           batch_size=method["batch_size"], lr=method["lr"],
                                           mask_prob=method["mask_prob"], seed=settings["seed"], device=device,
                                           grad_accum_steps=method["grad_accum_steps"], progress=PROGRESS,
                                           buffer_cells=store_settings["buffer_cells"],
                                           precision=method["precision"])
        history["cells"] = {name: store.obs_names[rows].tolist() for name, rows in cells.items()}
    log.info("pretraining loss per epoch: %s", [round(v, 4) for v in history["loss"]])
    io.write_text(json.dumps(history, indent=1, default=str), output_history)
    save_encoder(encoder, encoder_kind, genes, output_encoder)


def checkpoint_folder(root: str, params: Mapping[str, Any]) -> Path:
    """A checkpoint folder keyed by the run's settings and input digests, so a changed config or input never resumes
    a stale run."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(root) / key


def content_digests(files: Mapping[str, str | None]) -> dict[str, str | None]:
    """sha256 of each named file's bytes (None where there is no file), streamed; the time it took is logged."""
    started = time.perf_counter()
    digests = {name: sha256sum(Path(path)) if path else None for name, path in files.items()}
    size = sum(Path(path).stat().st_size for path in files.values() if path)
    log.info("checkpoint key: sha256 of %s (%.1f MB) in %.1f s", ", ".join(k for k, v in files.items() if v),
             size / 1e6, time.perf_counter() - started)
    return digests


def finetune_settings(settings: Mapping[str, Any]) -> FinetuneSettings:
    """The fine-tuning loop's settings from the config's finetune block."""
    fields = FinetuneSettings.__dataclass_fields__
    return FinetuneSettings(**{key: value for key, value in settings.items() if key in fields})


SELECTABLE = ("imbalance", "augment")  # finetune keys that may list candidates, chosen on validation cells


def candidate_settings(settings: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The keys of ``SELECTABLE`` that list several values (``imbalance`` when none does) and every combination of
    their values to train, in the listed order (the first varying fastest last: itertools.product)."""
    options = {key: value if isinstance(value, list | tuple) else [value]
               for key in SELECTABLE for value in [settings.get(key, getattr(FinetuneSettings, key))]}
    varied = [key for key, values in options.items() if len(values) > 1] or ["imbalance"]
    return varied, [dict(zip(options, values)) for values in itertools.product(*options.values())]


def candidate_label(candidate: Mapping[str, Any], varied: Sequence[str]) -> str:
    """A candidate's name in the selection scores: its values of the varied keys, joined by '/'."""
    return "/".join(str(candidate[key]) for key in varied)


def finetune_stage(method: str, encoder_hparams: Mapping[str, Any], settings: Mapping[str, Any],
                   preprocessing: Mapping[str, Any], input_h5ad: str, splits_file: str, split: str,
                   pretrained: str | None, checkpoint_root: str, output_model: str,
                   output_predictions: str | None, store_settings: Mapping[str, Any] | None = None,
                   output_validation: str | None = None, known_abstention: float = 0.05) -> None:
    """Fine-tune a classifier on the split's training cells, stop early and set its abstention threshold on its
    validation cells; predict its validation and test cells.

    When ``finetune.imbalance`` and/or ``finetune.augment`` is a list, one model is trained per combination
    (``candidate_settings``) and the one with the best ``annotator.validation_macro_f1`` on the validation cells is
    kept (a tie: the one listed first); the choice and the scores are logged and saved in the model
    (``config.selection``, and ``selection`` in its manifest's meta, which ``selections.tsv`` reads).

    Only the split's cells are read from disk: training streams them ``buffer_cells`` rows at a time, the validation
    and test cells are predicted and written ``chunk_cells`` at a time (``store_settings``: the config's store block).

    The job holds ``checkpoint_root``'s lock (``locks.job_lock``): a second job for the same method and split refuses
    while this one runs. Each candidate's checkpoints are keyed by its settings and the sha256 of every file it is
    computed from (matrix, splits, pretrained encoder, gene vectors): a rerun resumes only from the same inputs.
    """
    _, encoder_kind = parse_method(method)
    store_settings = {"chunk_cells": DEFAULT_CHUNK_CELLS, "buffer_cells": DEFAULT_BUFFER_CELLS,
                      **(store_settings or {})}
    roles = read_split(splits_file, split)
    with locks.job_lock(checkpoint_root), CellStore(input_h5ad) as store:
        labels = store.obs["cell_type"].astype(str)
        train, val, test = (roles.index[roles == role] for role in (splits.TRAIN, splits.VAL, splits.TEST))
        if len(val) == 0:
            raise InputError(splits_file, f"{split} validation cells", "no validation cells for early stopping",
                             "set split.val_fraction above 0 (e.g. 0.1), or raise the smallest split.label_fractions "
                             "(a class needs two labelled cells to lend one to validation)")
        known = set(labels[train])
        all_val, val = val, val[labels[val].isin(known)]
        genes = list(store.var_names)
        encoder_settings, vectors = split_encoder_settings(encoder_hparams)
        inputs = {"method": method, "split": split, "encoder": encoder_settings, "preprocessing": dict(preprocessing),
                  **content_digests({"data": input_h5ad, "splits": splits_file, "pretrained": pretrained,
                                     "gene_vectors": vectors})}
        state = (read_encoder_file(pretrained, genes)["state"] if pretrained
                 else initial_encoder_state(encoder_kind, encoder_hparams, genes, settings["seed"]))
        validation = LabelledCells(store.view(store.rows_of(val)), labels[val].to_numpy())
        models, scores = {}, {}
        varied, candidates = candidate_settings(settings)
        for candidate in candidates:
            mode, mode_settings = candidate_label(candidate, varied), {**settings, **candidate}
            model = CellTypeAnnotator(genes, sorted(known), encoder_kind, encoder_settings,
                                      {"hidden_dims": settings["head_hidden_dims"], "dropout": settings["dropout"]},
                                      preprocessing=dict(preprocessing),
                                      config={"method": method, "split": split, "finetune": mode_settings,
                                              "cells": {"train": train.tolist(), "val": val.tolist()}})
            checkpoints = checkpoint_folder(checkpoint_root, {**inputs, "settings": mode_settings})
            history = model.train(store.view(store.rows_of(train)), labels[train], validation.X, labels[val],
                                  finetune_settings(mode_settings), seed=settings["seed"], device=settings["device"],
                                  checkpoint_dir=checkpoints, pretrained_encoder_state=state, progress=PROGRESS,
                                  buffer_cells=store_settings["buffer_cells"])
            models[mode], scores[mode] = model, validation_macro_f1(model, validation)
            log.info("%s on %s (%s %s): best epoch %s, validation macro F1 %.3f (training from epoch %s)",
                     method, split, "/".join(varied), mode, history["best_epoch"], scores[mode],
                     history["start_epoch"])
        chosen = best_on_validation(scores)
        model = models[chosen]
        model.config["selection"] = {**{key: model.config["finetune"][key] for key in varied}, "scores": scores}
        if len(scores) > 1:
            log.info("%s on %s: chose %s %s on %d validation cells (macro F1 by candidate: %s)", method, split,
                     "/".join(varied), chosen, len(val), scores)
        model.calibrate_abstention(validation, known_abstention)
        model.save(output_model)
        for ids, output in ((all_val, output_validation), (test, output_predictions)):
            if output:
                write_annotator_predictions(model, store, labels, ids, output, store_settings["chunk_cells"])
        shutil.rmtree(checkpoint_root, ignore_errors=True)  # the lock inside goes with it
