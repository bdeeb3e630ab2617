"""Train / validation / test assignments: stratified k-fold cross-validation with a validation slice per fold, and
the label-fraction splits of a ``split.label_fractions`` sweep (``label_fraction_splits``)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from sclabel import io
from sclabel.errors import InputError
from sclabel.split_names import ALL_LABELS, fraction_split_name, sweep_split_names
from sclabel.store import CellStore

log = logging.getLogger("sclabel")

TRAIN, VAL, TEST = "train", "val", "test"
# a label-fraction split's training cell whose label it hides (its base split's pretraining reads the cell)
UNLABELLED = "unlabelled"
FINAL = "final"


def cv_split_names(n_folds: int) -> list[str]:
    """Names of the cross-validation splits: cv1 .. cvK."""
    return [f"cv{i}" for i in range(1, n_folds + 1)]


def check_labels(labels: pd.Series, source: str, n_folds: int) -> None:
    """Refuse label vectors that cannot be cross-validated."""
    if labels.nunique() < 2:
        raise InputError(source, "obs['cell_type']", f"only one class ({labels.iloc[0] if len(labels) else 'none'})",
                         "a classifier needs at least two cell types: add datasets or pick another label_key")
    if len(labels) < n_folds:
        raise InputError(source, "split.n_folds", f"{len(labels)} labelled cells for {n_folds} folds",
                         "lower split.n_folds or add cells")
    largest = int(labels.value_counts().max())
    if largest < n_folds:
        raise InputError(source, "split.n_folds", f"every class has fewer cells than the {n_folds} folds "
                         f"(largest: {largest})", f"set split.n_folds to at most {largest} or add cells")


def carve_validation(train_idx: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator,
                     at_least: int = 0) -> np.ndarray:
    """Pick a stratified validation slice of ``train_idx``: round(fraction·n) cells per class (at least ``at_least``),
    keeping ≥1 for training."""
    chosen = []
    for label in np.unique(labels[train_idx]):
        members = train_idx[labels[train_idx] == label]
        n_val = min(max(at_least, int(round(fraction * len(members)))), len(members) - 1)
        if n_val > 0:
            chosen.append(rng.choice(members, size=n_val, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)


def stratified_cv(cell_ids: pd.Index, labels: pd.Series, n_folds: int, val_fraction: float, seed: int,
                  source: str = "labels") -> pd.DataFrame:
    """One column per fold (cv1..cvK) with the role of every cell: train, val or test."""
    check_labels(labels, source, n_folds)
    y = labels.to_numpy().astype(str)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(index=pd.Index(cell_ids, name="cell_id"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")  # reported by class_report instead
        fold_indices = list(folds.split(np.zeros(len(y)), y))
    for name, (train_idx, test_idx) in zip(cv_split_names(n_folds), fold_indices):
        roles = np.full(len(y), TRAIN, dtype=object)
        roles[test_idx] = TEST
        roles[carve_validation(train_idx, y, val_fraction, rng)] = VAL
        table[name] = roles
    return table


def lodo_split_name(group: str) -> str:
    """Name of the split that holds out ``group``."""
    return f"lodo_{group}"


def leave_one_group_out(cell_ids: pd.Index, labels: pd.Series, groups: pd.Series, holdout: list[str],
                        val_fraction: float, seed: int, source: str = "labels") -> pd.DataFrame:
    """One column per held-out group (lodo_<group>): its cells are test, the others train plus a validation slice."""
    check_labels(labels, source, 1)
    y = labels.to_numpy().astype(str)
    group_of = groups.to_numpy().astype(str)
    missing = sorted(set(holdout) - set(group_of))
    if missing:
        raise InputError(source, "split.holdout", f"no labelled cells in group(s) {', '.join(missing)}",
                         f"hold out some of: {', '.join(sorted(set(group_of)))}")
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(index=pd.Index(cell_ids, name="cell_id"))
    for group in holdout:
        roles = np.full(len(y), TRAIN, dtype=object)
        held_out = group_of == group
        roles[held_out] = TEST
        if len(np.unique(y[~held_out])) < 2:
            raise InputError(source, "split.holdout", f"holding out {group} leaves fewer than two training classes",
                             "add datasets or hold out other groups")
        roles[carve_validation(np.flatnonzero(~held_out), y, val_fraction, rng)] = VAL
        table[lodo_split_name(group)] = roles
    return table


def final_split(cell_ids: pd.Index, labels: pd.Series, val_fraction: float, seed: int) -> pd.Series:
    """Roles for the model trained on all labelled cells (for annotating new data): train and a validation slice."""
    y = labels.to_numpy().astype(str)
    roles = np.full(len(y), TRAIN, dtype=object)
    roles[carve_validation(np.arange(len(y)), y, val_fraction, np.random.default_rng(seed))] = VAL
    return pd.Series(roles, index=pd.Index(cell_ids, name="cell_id"), name=FINAL)


def nested_draw(pool: np.ndarray, labels: np.ndarray, fractions: Sequence[float],
                rng: np.random.Generator) -> dict[float, np.ndarray]:
    """Per fraction, the cells of ``pool`` it labels: of each class's n cells, max(1, round(fraction·n)) (at most n),
    the first of one random order of the class, so a smaller fraction's cells are a subset of a larger one's."""
    chosen: dict[float, list[np.ndarray]] = {fraction: [] for fraction in fractions}
    for label in np.unique(labels[pool]):
        members = rng.permutation(pool[labels[pool] == label])
        for fraction in fractions:
            chosen[fraction].append(members[:min(len(members), max(1, round(fraction * len(members))))])
    return {fraction: np.sort(np.concatenate(parts)) for fraction, parts in chosen.items()}


def label_fraction_splits(table: pd.DataFrame, labels: pd.Series, fractions: Sequence[float], draws: int,
                          val_fraction: float, seed: int) -> pd.DataFrame:
    """One column per base split of ``table``, fraction below 1 and draw (``split_names.fraction_split_name``).

    The base split's test cells stay test; of its training and validation cells, ``nested_draw`` picks the labelled
    ones (seeded by ``seed``, the base split's position and the draw), whose validation slice is carved from them
    alone (``carve_validation``, at least one cell per class that has two when ``val_fraction`` > 0); the others are
    ``unlabelled``: no method reads their labels.
    """
    y = labels.to_numpy().astype(str)
    below_one = sorted(fraction for fraction in set(fractions) if fraction < ALL_LABELS)
    columns = {}
    for position, base in enumerate(table.columns):
        roles = table[base].to_numpy()
        pool = np.flatnonzero((roles == TRAIN) | (roles == VAL))
        for draw in range(1, draws + 1):
            rng = np.random.default_rng([seed, position, draw])
            for fraction, labelled in nested_draw(pool, y, below_one, rng).items():
                fraction_roles = np.where(roles == TEST, TEST, UNLABELLED).astype(object)
                fraction_roles[labelled] = TRAIN
                fraction_roles[carve_validation(labelled, y, val_fraction, rng, int(val_fraction > 0))] = VAL
                columns[fraction_split_name(base, fraction, draw)] = fraction_roles
    order = [name for name in sweep_split_names(list(table.columns), fractions, draws) if name in columns]
    return pd.DataFrame(columns, index=table.index)[order]


def class_report(labels: pd.Series, assignments: pd.DataFrame, n_folds: int) -> pd.DataFrame:
    """Cells per class and role in every split, flagging classes with fewer cells than folds."""
    rows = []
    for split in assignments.columns:
        counts = pd.crosstab(labels.to_numpy(), assignments[split].to_numpy())
        for label, row in counts.iterrows():
            total = int(row.sum())
            rows.append({"split": split, "cell_type": label, "total": total,
                         **{role: int(row.get(role, 0)) for role in (TRAIN, VAL, TEST)},
                         "fewer_cells_than_folds": total < n_folds})
    return pd.DataFrame(rows)


def labelled_cells(adata: Any) -> pd.Series:
    """Labels of the cells (an AnnData or CellStore) that have one (unlabelled datasets have none)."""
    if "cell_type" not in adata.obs:
        return pd.Series([], dtype=str)
    labels = adata.obs["cell_type"]
    return labels[labels.notna()].astype(str)


def split_stage(input_h5ad: str, settings: Mapping[str, Any], output_splits: str, output_classes: str) -> None:
    """Write each split's role (train / val / test, ``unlabelled`` in a label-fraction split) for every labelled cell,
    and the class counts per split.

    Reads the cells' obs table only, never the matrix.
    """
    with CellStore(input_h5ad) as cells:
        obs, labels = cells.obs, labelled_cells(cells)
    if settings["scheme"] == "cv":
        table = stratified_cv(labels.index, labels, settings["n_folds"], settings["val_fraction"],
                                     settings["seed"], source=input_h5ad)
    else:
        groups = obs.loc[labels.index, settings["lodo_key"]].astype(str)
        holdout = settings["holdout"] or sorted(groups.unique())
        table = leave_one_group_out(labels.index, labels, groups, holdout, settings["val_fraction"],
                                           settings["seed"], source=input_h5ad)
    if settings.get("label_fractions"):
        table = table.join(label_fraction_splits(table, labels, settings["label_fractions"],
                                                 settings.get("label_draws", 1), settings["val_fraction"],
                                                 settings["seed"]))
    report = class_report(labels, table, settings["n_folds"])
    table[FINAL] = final_split(labels.index, labels, settings["val_fraction"], settings["seed"])
    small = sorted(report.loc[report["fewer_cells_than_folds"], "cell_type"].unique())
    if small:
        log.warning("classes with fewer cells than folds (kept; some test folds lack them): %s", ", ".join(small))
    io.write_tsv(report, output_classes)
    io.write_tsv(table, output_splits, index=True)


def read_split(splits_file: str, split: str) -> pd.Series:
    """Role of each cell in ``split`` (cells absent from it are dropped)."""
    roles = io.read_tsv(splits_file, ["cell_id"], usecols=["cell_id", split]).set_index("cell_id")[split]
    return roles.dropna()
