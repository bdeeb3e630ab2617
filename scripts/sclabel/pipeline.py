"""The workflow's stages as plain functions over paths and settings (the Snakemake scripts only call these)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from sclabel import datasets, io, metrics, qc, splits, store

log = logging.getLogger("sclabel")


def download_stage(name: str, spec: Mapping[str, Any], settings: Mapping[str, Any], output: str,
                   download_dir: str, chunk_cells: int = store.DEFAULT_CHUNK_CELLS) -> None:
    """Fetch or read one dataset and write it in the standard form as a cell store (h5ad sources by row chunks)."""
    n_obs, n_vars, source = datasets.write_standard(name, spec, Path(download_dir), settings["retries"],
                                                    settings["timeout_s"], "config", output, chunk_cells)
    log.info("%s: %d cells x %d genes from %s", name, n_obs, n_vars, source)


def qc_stage(input_h5ad: str, settings: Mapping[str, Any], output_h5ad: str, output_table: str,
             chunk_cells: int = store.DEFAULT_CHUNK_CELLS) -> None:
    """Filter cells and genes, normalise, and write the data with a table of what was removed (chunk by chunk)."""
    removed = qc.qc_store(input_h5ad, settings, output_h5ad, chunk_cells)
    remaining = removed.set_index("step")["remaining"]
    log.info("QC kept %d cells x %d genes\n%s", remaining["max_pct_mito"], remaining["min_cells"],
             removed.to_string(index=False))
    io.write_tsv(removed, output_table)


def harmonise_stage(inputs: Sequence[str], names: Sequence[str], settings: Mapping[str, Any], target_sum: float,
                    output_h5ad: str, output_table: str, chunk_cells: int = store.DEFAULT_CHUNK_CELLS) -> None:
    """Combine the QC'd datasets on harmonised gene names (renormalised per cell over them when asked), by chunks."""
    report = qc.harmonise_stores(inputs, names, settings["gene_join"], settings["case"], output_h5ad,
                                 target_sum if settings["renormalise"] else None, chunk_cells)
    n_genes = report["genes_in_combined"].iloc[0] + report["genes_zero_filled"].iloc[0]
    log.info("combined %d cells x %d genes (%s join)\n%s", report["cells"].sum(), n_genes, settings["gene_join"],
             report.to_string(index=False))
    io.write_tsv(report, output_table)


def labelled_cells(adata: ad.AnnData | store.CellStore) -> pd.Series:
    """Labels of the cells that have one (unlabelled datasets have none)."""
    if "cell_type" not in adata.obs:
        return pd.Series([], dtype=str)
    labels = adata.obs["cell_type"]
    return labels[labels.notna()].astype(str)


def split_stage(input_h5ad: str, settings: Mapping[str, Any], output_splits: str, output_classes: str) -> None:
    """Write each split's role (train / val / test) for every labelled cell, and the class counts per split.

    Reads the cells' obs table only, never the matrix.
    """
    with store.CellStore(input_h5ad) as cells:
        obs, labels = cells.obs, labelled_cells(cells)
    if settings["scheme"] == "cv":
        table = splits.stratified_cv(labels.index, labels, settings["n_folds"], settings["val_fraction"],
                                     settings["seed"], source=input_h5ad)
    else:
        groups = obs.loc[labels.index, settings["lodo_key"]].astype(str)
        holdout = settings["holdout"] or sorted(groups.unique())
        table = splits.leave_one_group_out(labels.index, labels, groups, holdout, settings["val_fraction"],
                                           settings["seed"], source=input_h5ad)
    report = splits.class_report(labels, table, settings["n_folds"])
    table[splits.FINAL] = splits.final_split(labels.index, labels, settings["val_fraction"], settings["seed"])
    small = sorted(report.loc[report["fewer_cells_than_folds"], "cell_type"].unique())
    if small:
        log.warning("classes with fewer cells than folds (kept; some test folds lack them): %s", ", ".join(small))
    io.write_tsv(report, output_classes)
    io.write_tsv(table, output_splits, index=True)


def read_split(splits_file: str, split: str) -> pd.Series:
    """Role of each cell in ``split`` (cells absent from it are dropped)."""
    roles = pd.read_csv(splits_file, sep="\t", index_col="cell_id", usecols=["cell_id", split])[split]
    roles.index = roles.index.astype(str)
    return roles.dropna()


# (training matrix, training labels) -> (predict: a matrix's rows -> their class probabilities, classes)
Fit = Callable[[Any, np.ndarray], tuple[Callable[[Any], np.ndarray], np.ndarray]]


def predict_split(method: str, fit: Fit, features: Any, cell_ids: pd.Index, labels: pd.Series, roles: pd.Series,
                  output: str, chunk_cells: int = store.DEFAULT_CHUNK_CELLS) -> None:
    """Fit on the split's train + val cells of ``features`` (rows = ``cell_ids``); write its test predictions.

    ``features`` is a matrix in memory or a store's ``RowView``: only the split's rows are read, and the test cells
    are predicted and written ``chunk_cells`` at a time.
    """
    row = pd.Series(np.arange(len(cell_ids)), index=cell_ids)
    fit_ids = roles.index[roles.isin([splits.TRAIN, splits.VAL])]
    test_ids = roles.index[roles == splits.TEST]
    predict, classes = fit(store.take_rows(features, row[fit_ids].to_numpy()), labels[fit_ids].to_numpy())
    test = store.take_rows(features, row[test_ids].to_numpy())
    truth = labels[test_ids].to_numpy().astype(str)
    hits: list[np.ndarray] = []

    def parts() -> Iterator[tuple[pd.Index, np.ndarray, np.ndarray]]:
        for start, chunk in zip(range(0, len(test_ids), chunk_cells), store.row_chunks(test, chunk_cells)):
            probabilities = predict(chunk)
            stop = start + len(probabilities)
            hits.append(np.asarray(classes).astype(str)[probabilities.argmax(axis=1)] == truth[start:stop])
            yield test_ids[start:stop], truth[start:stop], probabilities

    write_predictions(parts(), classes, output)
    log.info("%s: %d training cells, %d test cells, accuracy %.3f", method, len(fit_ids), len(test_ids),
             float(np.mean(np.concatenate(hits))) if hits else float("nan"))


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


def parse_prediction_path(path: str) -> tuple[str, str]:
    """(method, split) from ``.../predictions/{method}/{split}.tsv``."""
    file = Path(path)
    return file.parent.name, file.stem


def training_labels(class_counts: pd.DataFrame, split: str) -> list[str]:
    """The labels of a split's training cells (train + validation), rebuilt from the class-count table."""
    rows = class_counts[class_counts["split"] == split]
    return list(np.repeat(rows["cell_type"].astype(str).to_numpy(), (rows["train"] + rows["val"]).to_numpy()))


def split_scheme(split: str) -> str:
    """``cv`` or ``lodo`` from a split name."""
    return "lodo" if split.startswith("lodo_") else "cv"


def evaluate_stage(prediction_files: Sequence[str], class_counts_file: str, settings: Mapping[str, Any],
                   output_metrics: str, output_summary: str, output_per_class: str, output_confusion: str) -> None:
    """Score every method × split; write long metrics, mean ± sd summary, per-class scores and confusion counts.

    A prediction file holding the ``not_run`` record of a method that could not run is not scored; the summary
    shows that method as ``not run: <reason>`` (``metrics.add_not_run``).
    """
    class_counts = pd.read_csv(class_counts_file, sep="\t", dtype={"cell_type": str})
    metric_rows, class_rows, confusion_rows, not_run = [], [], [], []
    for path in prediction_files:
        method, split = parse_prediction_path(path)
        table = pd.read_csv(path, sep="\t", dtype={"cell_id": str, "true": str, "predicted": str})
        if metrics.NOT_RUN in table.columns:
            reason = str(table[metrics.NOT_RUN].iloc[0])
            log.warning("%s on %s: not run: %s", method, split, reason)
            not_run.append({"method": method, "split": split, "scheme": split_scheme(split), "reason": reason})
            continue
        scores = metrics.benchmark_scores(table, training_labels(class_counts, split),
                                          settings["unassigned_threshold"], settings["rare_fraction"])
        metric_rows += [{"method": method, "split": split, "metric": metric, "value": value}
                        for metric, value in scores.items() if np.isfinite(value)]
        predicted = metrics.apply_threshold(table["predicted"], table["confidence"], settings["unassigned_threshold"])
        labels = metrics.label_order(table["true"], predicted)
        matrix = metrics.confusion(table["true"], predicted, labels)
        class_rows.append(metrics.per_class_scores(matrix, labels).assign(method=method, split=split))
        confusion_rows.append(metrics.confusion_long(matrix, labels).assign(method=method, split=split))
    long = pd.DataFrame(metric_rows, columns=["method", "split", "metric", "value"])
    io.write_tsv(long, output_metrics)
    summary = metrics.summarise(long.assign(scheme=long["split"].map(split_scheme)))
    not_run_table = pd.DataFrame(not_run, columns=["method", "split", "scheme", "reason"])
    io.write_tsv(metrics.add_not_run(summary, not_run_table), output_summary)
    io.write_tsv(pd.concat(class_rows, ignore_index=True) if class_rows else pd.DataFrame(
        columns=["cell_type", "precision", "recall", "f1", "support", "method", "split"]), output_per_class)
    io.write_tsv(pd.concat(confusion_rows, ignore_index=True) if confusion_rows else pd.DataFrame(
        columns=["true", "predicted", "count", "method", "split"]), output_confusion)
