"""The prediction contract every method writes, on test and validation cells.

Columns: cell_id, true, predicted (most probable class), confidence (its probability), rejection_score (the
method's measure of how unlike every known type a cell is; higher = more likely novel), abstained (1 where the
method's own rule leaves the cell unassigned), then proba:<class>.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd

from sclabel import io, metrics
from sclabel.metrics import ABSTAINED, REJECTION


def predictions_table(cell_ids: pd.Index, y_true: np.ndarray, probabilities: np.ndarray, classes: np.ndarray,
                      rejection: np.ndarray, abstained: np.ndarray) -> pd.DataFrame:
    """The prediction contract of one block of cells (see the module docstring)."""
    best = probabilities.argmax(axis=1)
    table = pd.DataFrame({"cell_id": np.asarray(cell_ids), "true": np.asarray(y_true, dtype=str),
                          "predicted": np.asarray(classes)[best].astype(str),
                          "confidence": probabilities[np.arange(len(best)), best],
                          REJECTION: np.asarray(rejection, dtype=float),
                          ABSTAINED: np.asarray(abstained, dtype=bool).astype(int)})
    columns = pd.DataFrame(probabilities, columns=[f"{metrics.PROBA_PREFIX}{c}" for c in classes], index=table.index)
    return pd.concat([table, columns], axis=1)


def write_predictions(parts: Iterable[tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                      classes: np.ndarray, output: str) -> None:
    """Write the ``predictions_table`` of (cell ids, true labels, probabilities, rejection scores, abstained) parts
    one part at a time, atomically: the file ``io.write_tsv`` writes for all parts concatenated."""
    nothing = np.empty(0)
    with io.atomic_path(output) as tmp, open(tmp, "w", newline="") as handle:
        predictions_table(pd.Index([]), nothing, np.empty((0, len(classes))), classes, nothing,
                          nothing).to_csv(handle, sep="\t", index=False)
        for part in parts:
            predictions_table(*part[:3], classes, *part[3:]).to_csv(handle, sep="\t", index=False, header=False)


def annotator_parts(annotator, cells, labels: pd.Series, ids: pd.Index,
                    chunk_cells: int) -> Iterator[tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(cell ids, truth, probabilities, rejection scores, abstained) of a fitted annotator on the store cells
    ``ids``, ``chunk_cells`` at a time (the parts ``write_predictions`` takes)."""
    for rows, block in cells.chunks(cells.rows_of(ids), chunk_cells):
        rejection, probabilities = annotator.rejection_score(block), annotator.predict_proba(block)
        yield (cells.obs_names[rows], labels.iloc[rows].to_numpy(), probabilities, rejection,
               annotator.abstains(rejection, probabilities))


def write_annotator_predictions(annotator, cells, labels: pd.Series, ids: pd.Index, output: str,
                                chunk_cells: int) -> float:
    """Write a fitted annotator's predictions of the store cells ``ids``; returns their accuracy (abstentions wrong)."""
    hits: list[np.ndarray] = []

    def scored():
        for part in annotator_parts(annotator, cells, labels, ids, chunk_cells):
            hits.append((annotator.classes[part[2].argmax(axis=1)] == part[1]) & ~part[4])
            yield part

    write_predictions(scored(), annotator.classes, output)
    return float(np.mean(np.concatenate(hits))) if hits else float("nan")
