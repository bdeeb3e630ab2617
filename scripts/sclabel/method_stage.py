"""Train any registered method on one split, save its model, and write its test predictions.

The one stage every non-neural method runs through (baselines, controls, peers, and methods added later): it reads
only the split's cells from the cell store, fits the method's ``Annotator`` on the training cells (validation cells
given as such), saves it under ``results/models/{method}/{split}`` and predicts the test cells ``chunk_cells`` at
a time. A method that cannot run on the split leaves the reason in both outputs instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from sclabel import io, registry, splits
from sclabel.annotator import Annotator, LabelledCells, MethodNotRunnable, RunContext, save_not_run
from sclabel.errors import one_line
from sclabel.metrics import NOT_RUN
from sclabel.predictions import write_predictions
from sclabel.splits import read_split
from sclabel.store import CellStore

log = logging.getLogger("sclabel")


def not_run_record(reason: str) -> pd.DataFrame:
    """What a method that cannot run writes instead of predictions: one ``not_run`` column holding the reason."""
    return pd.DataFrame({NOT_RUN: [one_line(reason)]})


def new_annotator(method: str, settings: Mapping[str, Any] | None, seed: int, genes: list[str],
                  context: RunContext) -> Annotator:
    """An unfitted annotator of a registered method."""
    return registry.annotator_class(method)(method, settings, seed, genes, context)


def fit_split(annotator: Annotator, cells: CellStore, labels: pd.Series, roles: pd.Series) -> Annotator:
    """Fit on the split's training cells, with its validation cells as validation."""
    def labelled(role: str) -> LabelledCells:
        ids = roles.index[roles == role]
        return LabelledCells(cells.view(cells.rows_of(ids)), labels[ids].to_numpy())

    validation = labelled(splits.VAL)
    return annotator.fit(labelled(splits.TRAIN), validation if len(validation.labels) else None)


def predict_test(annotator: Annotator, cells: CellStore, labels: pd.Series, test_ids: pd.Index, output: str,
                 chunk_cells: int) -> float:
    """Write the test cells' predictions chunk by chunk; returns the accuracy."""
    hits: list[np.ndarray] = []

    def parts():
        for rows, block in cells.chunks(cells.rows_of(test_ids), chunk_cells):
            probabilities = annotator.predict_proba(block)
            truth = labels.iloc[rows].to_numpy()
            hits.append(annotator.classes[probabilities.argmax(axis=1)] == truth)
            yield cells.obs_names[rows], truth, probabilities

    write_predictions(parts(), annotator.classes, output)
    return float(np.mean(np.concatenate(hits))) if hits else float("nan")


def method_stage(method: str, settings: Mapping[str, Any] | None, seed: int, input_h5ad: str, splits_file: str,
                 split: str, output_model: str, output_predictions: str | None = None,
                 context: RunContext | None = None) -> None:
    """Fit ``method`` on ``split`` of the cell store, save it to ``output_model``; predict the test cells."""
    context = context or RunContext()
    roles = read_split(splits_file, split)
    with CellStore(input_h5ad) as cells:
        labels = cells.obs["cell_type"].astype(str)
        annotator = new_annotator(method, settings, seed, list(cells.var_names), context)
        try:
            fit_split(annotator, cells, labels, roles)
        except MethodNotRunnable as reason:
            log.warning("%s not run on %s: %s", method, split, reason)
            save_not_run(output_model, method, one_line(reason))
            if output_predictions:
                io.write_tsv(not_run_record(str(reason)), output_predictions)
            return
        annotator.save(output_model)
        if output_predictions:
            test_ids = roles.index[roles == splits.TEST]
            try:
                accuracy = predict_test(annotator, cells, labels, test_ids, output_predictions, context.chunk_cells)
            except MethodNotRunnable as reason:  # test cells the method refuses (e.g. another expression scale)
                log.warning("%s cannot predict the test cells of %s: %s", method, split, reason)
                io.write_tsv(not_run_record(str(reason)), output_predictions)
                return
            log.info("%s on %s: %d training cells, %d test cells, accuracy %.3f", method, split,
                     int(roles.isin([splits.TRAIN, splits.VAL]).sum()), len(test_ids), accuracy)
