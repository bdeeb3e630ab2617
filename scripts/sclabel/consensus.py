"""The consensus annotator: the benchmarked methods' probabilities combined with per-class weights.

Each member's vote for a class is weighted by its F1 on that class over the split's validation cells, raised to the
power ``alpha`` (CAWPE, as CoRAL combines annotators): members that are good at a class dominate it, weak ones fade.
The validation cells are cells no member was fitted on (every method fits the training cells only), so the weights
never see test cells. The consensus probability of a class is the weighted sum of the members' probabilities,
normalised per cell. Its rejection score is popV's: one minus the share of members whose own call (argmax, not
abstained) is the consensus type, so a cell the members disagree on, or abstain on, is the first left unassigned.

Members run in their own envs, so the consensus combines their prediction tables (the contract of
``sclabel.predictions``): their validation and test predictions in the benchmark, their probabilities on a query
when annotating. ``predict_proba`` on a matrix loads the members' saved models instead, in an env that has them all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sclabel import io
from sclabel.annotator import Annotator, LabelledCells, load_annotator, save_not_run
from sclabel.errors import InputError
from sclabel.evaluation import parse_prediction_path
from sclabel.metrics import (ABSTAINED, NOT_RUN, PROBA_PREFIX, REJECTION, confusion, label_order, per_class_scores,
                             probability_columns)
from sclabel.predictions import write_predictions

log = logging.getLogger("sclabel")

WEIGHTS_FILE = "weights.npz"
# added to every weight, so that a class no member got right on the (small) validation set still gets the members'
# plain average rather than never being predicted
WEIGHT_FLOOR = 1e-3


def table_classes(table: pd.DataFrame) -> dict[str, str]:
    """``{class: its proba:<class> column}`` of a prediction table: the classes the member was trained on."""
    return {column[len(PROBA_PREFIX):]: column for column in probability_columns(table)}


def member_probabilities(table: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """A member's probabilities over ``classes`` (0 for classes it does not know), rows in table order."""
    known = table_classes(table)
    return np.column_stack([table[known[c]].to_numpy(dtype=float) if c in known else np.zeros(len(table))
                            for c in classes])


def class_f1(truth: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """F1 of each of ``classes`` (0 where it has no true and no predicted cells), as scikit-learn's zero_division=0."""
    labels = label_order([*truth, *classes], predicted)
    scores = per_class_scores(confusion(truth, predicted, labels), labels).set_index("cell_type")["f1"]
    return scores.loc[list(classes)].to_numpy()


def cawpe_weights(validation: Mapping[str, pd.DataFrame], classes: Sequence[str], alpha: float) -> np.ndarray:
    """[members, classes] weights: each member's validation F1 per class to the power ``alpha`` (+ WEIGHT_FLOOR;
    0 for a class the member was not trained on)."""
    rows = []
    for table in validation.values():
        truth = table["true"].to_numpy(dtype=str)
        known = np.isin(classes, list(table_classes(table)))
        f1 = class_f1(truth, table["predicted"].to_numpy(dtype=str), classes)
        rows.append(np.where(known, f1 ** alpha + WEIGHT_FLOOR, 0.0))
    return np.vstack(rows)


def aligned(tables: Mapping[str, pd.DataFrame], source: str) -> list[pd.DataFrame]:
    """The members' tables with rows in the first table's cell order; one-line error when their cells differ."""
    frames = [table.set_index("cell_id", drop=False) for table in tables.values()]
    order = frames[0].index
    for member, frame in zip(tables, frames):
        if len(frame) != len(order) or not frame.index.isin(order).all():
            raise InputError(source, f"{member} cells", "the members' prediction tables cover different cells",
                             "rerun the members on the same split or query")
    return [frame.loc[order] for frame in frames]


class ConsensusAnnotator(Annotator):
    """CAWPE-weighted consensus of other annotators, with popV's agreement as rejection score."""

    def __init__(self, method: str = "consensus", settings: Mapping[str, Any] | None = None, seed: int = 0,
                 genes: Sequence[str] = (), context: Any = None) -> None:
        super().__init__(method, {"alpha": 4.0, **dict(settings or {})}, seed, genes, context)
        self.members: list[str] = []
        self.member_models: list[str] = []  # the members' saved model folders (for ``predict_proba`` on a matrix)
        self.weights = np.empty((0, 0))
        self._loaded: list[Annotator] | None = None

    def fit(self, train: LabelledCells, validation: LabelledCells | None = None) -> ConsensusAnnotator:
        raise NotImplementedError("the consensus is fitted on its members' validation predictions: "
                                  "use fit_tables")

    def fit_tables(self, validation: Mapping[str, pd.DataFrame], member_models: Sequence[str] = ()) -> None:
        """Weights from each member's predictions on validation cells (``{member: prediction table}``)."""
        classes = set()
        for table in validation.values():
            classes |= set(table_classes(table))
        self.members, self.member_models = list(validation), [str(folder) for folder in member_models]
        self.classes = np.asarray(sorted(classes), dtype=str)
        self.weights = cawpe_weights(validation, self.classes, self.settings["alpha"])

    def combine(self, tables: Mapping[str, pd.DataFrame], source: str = "predictions") -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
        """Consensus probabilities [cells, classes] and rejection scores of the members' tables on the same cells
        (rows in the first present member's order; members without a table are left out)."""
        present = [i for i, member in enumerate(self.members) if member in tables]
        if not present:
            raise InputError(source, "members", f"none of {', '.join(self.members)} has predictions here",
                             "run the consensus members first")
        frames = aligned({self.members[i]: tables[self.members[i]] for i in present}, source)
        stacked = np.stack([member_probabilities(frame, self.classes) for frame in frames])  # members, cells, classes
        weighted = np.einsum("mnc,mc->nc", stacked, self.weights[present])
        totals = weighted.sum(axis=1, keepdims=True)
        uniform = np.full_like(weighted, 1.0 / len(self.classes))
        probabilities = np.divide(weighted, totals, out=uniform, where=totals > 0)
        call = self.classes[probabilities.argmax(axis=1)]
        votes = [(frame["predicted"].to_numpy(dtype=str) == call) & ~frame[ABSTAINED].to_numpy(dtype=bool)
                 if ABSTAINED in frame else frame["predicted"].to_numpy(dtype=str) == call for frame in frames]
        return probabilities, 1.0 - np.mean(votes, axis=0)

    def member_tables(self, X: Any) -> dict[str, pd.DataFrame]:
        """The members' prediction tables on gene-aligned cells, from their saved models (all loadable here)."""
        if self._loaded is None:
            self._loaded = [load_annotator(folder) for folder in self.member_models]
        tables = {}
        for member, model in zip(self.members, self._loaded):
            probabilities, rejection = model.predict_proba(X), model.rejection_score(X)
            tables[member] = pd.DataFrame({
                "cell_id": np.arange(len(probabilities)).astype(str),
                "predicted": model.classes[probabilities.argmax(axis=1)], ABSTAINED: model.abstains(rejection, probabilities),
                REJECTION: rejection,
                **{f"{PROBA_PREFIX}{c}": probabilities[:, i] for i, c in enumerate(model.classes)}})
        return tables

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.combine(self.member_tables(X))[0]

    def rejection_score(self, X: Any) -> np.ndarray:
        return self.combine(self.member_tables(X))[1]

    def calibrate_on_tables(self, validation: Mapping[str, pd.DataFrame], known_abstention: float) -> None:
        """The rejection threshold leaving ``known_abstention`` of the validation cells of known types unassigned."""
        _, rejection = self.combine(validation, "validation predictions")
        truth = validation[next(member for member in self.members if member in validation)]["true"].astype(str)
        self.set_rejection_threshold(rejection[truth.isin(self.classes).to_numpy()], known_abstention)

    def save_arrays(self, folder: Path) -> dict[str, Any]:
        np.savez(folder / WEIGHTS_FILE, weights=self.weights)
        return {"members": self.members, "member_models": self.member_models}

    def load_arrays(self, folder: Path, meta: Mapping[str, Any]) -> None:
        self.members, self.member_models = list(meta["members"]), list(meta["member_models"])
        with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as arrays:
            self.weights = arrays["weights"]


def read_prediction_tables(paths: Sequence[str]) -> dict[str, pd.DataFrame]:
    """``{method: prediction table}`` of ``.../{method}/{split}.tsv`` files, leaving out methods that did not run."""
    tables = {}
    for path in paths:
        method, split = parse_prediction_path(path)
        table = io.read_tsv(path, ["cell_id", "true", "predicted"])
        if NOT_RUN in table.columns:
            log.warning("consensus on %s leaves out %s, which did not run: %s", split, method, table[NOT_RUN].iloc[0])
            continue
        tables[method] = table
    return tables


def consensus_stage(validation_files: Sequence[str], member_models: Sequence[str], settings: Mapping[str, Any],
                    known_abstention: float, output_model: str, prediction_files: Sequence[str] = (),
                    output_predictions: str | None = None) -> None:
    """Weight the members on their validation predictions, set the rejection threshold there, save the consensus;
    combine the members' test predictions (CV / LODO splits)."""
    validation = read_prediction_tables(validation_files)
    if not validation:
        save_not_run(output_model, "consensus", "none of its members ran on this split")
        if output_predictions:
            io.write_tsv(pd.DataFrame({NOT_RUN: ["none of its members ran on this split"]}), output_predictions)
        return
    models = [folder for folder in member_models if Path(folder).parent.name in validation]
    consensus = ConsensusAnnotator("consensus", settings)
    consensus.fit_tables(validation, models)
    consensus.calibrate_on_tables(validation, known_abstention)
    log.info("consensus of %s; weights (validation F1^%s) per class:\n%s", ", ".join(consensus.members),
             settings["alpha"], pd.DataFrame(consensus.weights, index=consensus.members,
                                             columns=consensus.classes).round(3).to_string())
    consensus.save(output_model)
    if output_predictions:
        tables = read_prediction_tables(prediction_files)
        probabilities, rejection = consensus.combine(tables, output_predictions)
        first = tables[next(member for member in consensus.members if member in tables)]
        write_predictions([(pd.Index(first["cell_id"]), first["true"].to_numpy(), probabilities, rejection,
                            consensus.abstains(rejection, probabilities))], consensus.classes, output_predictions)
