"""Train any registered method on one split, save its model, and write its test predictions.

The one stage every non-neural method runs through (baselines, controls, peers, and methods added later): it reads
only the split's cells from the cell store, fits the method's ``Annotator`` on the training cells (the validation
cells are given as such: for early stopping, never as training cells), sets its abstention threshold on the
validation cells, saves it under ``results/models/{method}/{split}`` and predicts the validation and test cells
``chunk_cells`` at a time. A method that cannot run on the split leaves the reason in every output instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from sclabel import io, registry, splits
from sclabel.annotator import Annotator, LabelledCells, MethodNotRunnable, RunContext, save_not_run
from sclabel.errors import one_line
from sclabel.metrics import NOT_RUN
from sclabel.predictions import write_annotator_predictions
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


def labelled_cells(cells: CellStore, labels: pd.Series, ids: pd.Index) -> LabelledCells | None:
    """The store cells ``ids`` (a view, unread) with their labels; None when there are none."""
    return LabelledCells(cells.view(cells.rows_of(ids)), labels[ids].to_numpy()) if len(ids) else None


def write_not_run(reason: str, outputs: Sequence[str]) -> None:
    """The ``not_run`` record in each prediction output."""
    for output in outputs:
        io.write_tsv(not_run_record(reason), output)


def method_stage(method: str, settings: Mapping[str, Any] | None, seed: int, input_h5ad: str, splits_file: str,
                 split: str, output_model: str, output_predictions: str | None = None,
                 context: RunContext | None = None, output_validation: str | None = None,
                 known_abstention: float = 0.05) -> None:
    """Fit ``method`` on the training cells of ``split``, calibrate its abstention on the validation cells, save it
    to ``output_model``; write its validation predictions and (CV / LODO) its test predictions."""
    context = context or RunContext()
    roles = read_split(splits_file, split)
    outputs = [output for output in (output_validation, output_predictions) if output]
    with CellStore(input_h5ad) as cells:
        labels = cells.obs["cell_type"].astype(str)
        annotator = new_annotator(method, settings, seed, list(cells.var_names), context)
        train_ids, val_ids = (roles.index[roles == role] for role in (splits.TRAIN, splits.VAL))
        try:
            annotator.fit(labelled_cells(cells, labels, train_ids), labelled_cells(cells, labels, val_ids))
            known_val = val_ids[labels[val_ids].isin(annotator.classes)]
            annotator.calibrate_abstention(labelled_cells(cells, labels, known_val), known_abstention)
        except MethodNotRunnable as reason:
            log.warning("%s not run on %s: %s", method, split, reason)
            save_not_run(output_model, method, one_line(reason))
            write_not_run(str(reason), outputs)
            return
        annotator.save(output_model)
        role_of_output = {output_validation: splits.VAL, output_predictions: splits.TEST}
        for output in outputs:
            ids = roles.index[roles == role_of_output[output]]
            try:
                accuracy = write_annotator_predictions(annotator, cells, labels, ids, output, context.chunk_cells)
            except MethodNotRunnable as reason:  # cells the method refuses (e.g. another expression scale)
                log.warning("%s cannot predict the %s cells of %s: %s", method, role_of_output[output], split, reason)
                write_not_run(str(reason), [output])
                continue
            log.info("%s on %s: %d training cells, %d %s cells, accuracy %.3f (abstentions wrong)", method, split,
                     len(train_ids), len(ids), role_of_output[output], accuracy)
