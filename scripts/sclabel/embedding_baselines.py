"""The embedding baselines' annotator: a classical baseline on the cells' embedding by a pretrained encoder (torch).

``knn_embedding``, ``rf_embedding`` and ``svm_embedding`` (scPretrain's evaluation of an encoder) embed every cell
they fit on or predict with the split's pretrained encoder, streaming a store's rows (``predict_batches``). The
workflow's stage passes the encoder file and the forward-pass batch size as the settings ``encoder_file`` and
``batch_size``; the saved folder holds a copy of the encoder (``encoder.pt``, weights only) beside the estimator, so
the model predicts new cells on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sclabel.annotator import LabelledCells
from sclabel.baselines import BaselineAnnotator
from sclabel.nn.encoders import predict_batches
from sclabel.training import encoder_from_payload, read_encoder_file

ENCODER_FILE = "encoder.pt"
STAGE_SETTINGS = ("encoder_file", "batch_size")  # settings the stage adds; the estimator never sees them
DEFAULT_BATCH_SIZE = 1024


class EmbeddingBaselineAnnotator(BaselineAnnotator):
    """A baseline fitted on and predicting from the embedding of a pretrained encoder it carries."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder_payload: dict[str, Any] | None = None
        self.encoder: torch.nn.Module | None = None

    def estimator_settings(self) -> dict[str, Any]:
        return {key: value for key, value in self.settings.items() if key not in STAGE_SETTINGS}

    def use_encoder(self, payload: dict[str, Any]) -> None:
        """Embed with the encoder an encoder file's contents describe."""
        self.encoder_payload = payload
        self.encoder = encoder_from_payload(payload, len(self.genes))

    def embed(self, X: Any) -> np.ndarray:
        """The cells' embedding, ``batch_size`` cells per forward pass (a store's rows read a buffer at a time)."""
        return predict_batches(self.encoder, X, self.settings.get("batch_size", DEFAULT_BATCH_SIZE),
                               self.context.buffer_cells)

    def features(self, X: Any) -> np.ndarray:
        return self.embed(X)

    def fit(self, train: LabelledCells, validation: LabelledCells | None = None) -> EmbeddingBaselineAnnotator:
        self.use_encoder(read_encoder_file(self.settings["encoder_file"], self.genes))
        return super().fit(train, validation)

    def save_arrays(self, folder: Path) -> dict[str, Any]:
        torch.save(self.encoder_payload, folder / ENCODER_FILE)
        return {**super().save_arrays(folder), "encoder": ENCODER_FILE}

    def load_arrays(self, folder: Path, meta: Mapping[str, Any]) -> None:
        super().load_arrays(folder, meta)
        self.use_encoder(read_encoder_file(str(folder / meta["encoder"]), self.genes))
