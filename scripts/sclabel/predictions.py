"""The prediction contract every method writes: cell_id, true, predicted, confidence, proba:<class>."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from sclabel import io, metrics


def predictions_table(cell_ids: pd.Index, y_true: np.ndarray, probabilities: np.ndarray,
                      classes: np.ndarray) -> pd.DataFrame:
    """The prediction contract: cell_id, true, predicted, confidence (max class probability), then proba:<class>."""
    best = probabilities.argmax(axis=1)
    table = pd.DataFrame({"cell_id": np.asarray(cell_ids), "true": np.asarray(y_true, dtype=str),
                          "predicted": np.asarray(classes)[best].astype(str),
                          "confidence": probabilities[np.arange(len(best)), best]})
    columns = pd.DataFrame(probabilities, columns=[f"{metrics.PROBA_PREFIX}{c}" for c in classes], index=table.index)
    return pd.concat([table, columns], axis=1)


def write_predictions(parts: Iterable[tuple[pd.Index, np.ndarray, np.ndarray]], classes: np.ndarray,
                      output: str) -> None:
    """Write the ``predictions_table`` of (cell ids, true labels, probabilities) parts one part at a time, atomically.

    The file is the one ``io.write_tsv`` writes for all parts concatenated, while only one part is in memory.
    """
    no_cells = np.empty((0, len(classes)))
    with io.atomic_path(output) as tmp, open(tmp, "w", newline="") as handle:
        predictions_table(pd.Index([]), np.array([]), no_cells, classes).to_csv(handle, sep="\t", index=False)
        for cell_ids, y_true, probabilities in parts:
            predictions_table(cell_ids, y_true, probabilities, classes).to_csv(handle, sep="\t", index=False,
                                                                             header=False)
