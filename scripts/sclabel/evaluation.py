"""The evaluation stage: score every method's predictions on every split, summarise over splits."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sclabel import io, metrics, registry
from sclabel.annotator import MANIFEST
from sclabel.split_names import group_columns, label_fraction

log = logging.getLogger("sclabel")
SELECTION_COLUMNS = ["method", "split", "setting", "chosen", "validation_macro_f1", "converged"]


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


Pairing = Callable[[list[str]], list[tuple[str, str]]]


def registered_ran(long: pd.DataFrame) -> list[str]:
    """The registered methods that have scores in ``long``, in registry order."""
    return [name for name in registry.METHODS if name in set(long["method"])]


def ablation_effect(long: pd.DataFrame, pairing: Pairing) -> pd.DataFrame:
    """Each (method, counterpart) pair that ``pairing`` forms of the registered methods in ``long``, where both ran:
    per scheme, the paired per-split differences in ``known_kappa`` and ``known_macro_f1`` (``metrics.paired_effects``).
    ``registry.pretraining_pairs``: each pretrained neural method against the same encoder without pretraining;
    ``registry.variant_pairs``: each ``<method>@<variant>`` against its base."""
    return metrics.paired_effects(long, pairing(registered_ran(long)))


def evaluate_stage(prediction_files: Sequence[str], class_counts_file: str, settings: Mapping[str, Any],
                   output_metrics: str, output_summary: str, output_per_class: str, output_confusion: str,
                   output_paired: str, output_pretraining: str | None = None, output_variants: str | None = None,
                   finer: Mapping[str, Collection[str]] | None = None,
                   output_label_efficiency: str | None = None) -> None:
    """Score every method × split; write long metrics, mean ± sd summary, per-class scores, confusion counts, the
    paired comparison with the best peer (``metrics.paired_against_best_peer`` on ``known_kappa``) and the paired
    effects of pretraining and of each variant (``ablation_effect``).

    Per-class scores and confusion counts cover all test cells on the headline's truth (``metrics.scored_labels``).
    A prediction file holding the ``not_run`` record of a method that could not run is not scored; the summary
    shows that method as ``not run: <reason>`` (``metrics.add_not_run``). With ``finer`` (``ontology.finer_labels``)
    the metrics add the ontology-aware ``ontology_accuracy`` and ``ontology_macro_f1``.

    With ``output_label_efficiency`` (a ``split.label_fractions`` sweep), every table but the metrics, per-class and
    confusion tables is also grouped by ``label_fraction`` (``split_names.label_fraction`` of the split: a column
    after ``scheme``), and ``metrics.label_efficiency`` of the pretraining pairs is written there.
    """
    class_counts = io.read_tsv(class_counts_file, ["split", "cell_type"])
    metric_rows, class_rows, confusion_rows, not_run = [], [], [], []
    for path in prediction_files:
        method, split = parse_prediction_path(path)
        table = io.read_tsv(path, ["cell_id", "true", "predicted"])
        if metrics.NOT_RUN in table.columns:
            reason = str(table[metrics.NOT_RUN].iloc[0])
            log.warning("%s on %s: not run: %s", method, split, reason)
            not_run.append({"method": method, "split": split, "scheme": split_scheme(split),
                            "label_fraction": label_fraction(split), "reason": reason})
            continue
        trained_on = training_labels(class_counts, split)
        scores = metrics.benchmark_scores(table, trained_on, settings["unassigned_threshold"],
                                          settings["rare_fraction"], finer)
        metric_rows += [{"method": method, "split": split, "metric": metric, "value": value}
                        for metric, value in scores.items() if np.isfinite(value)]
        true, predicted = metrics.scored_labels(table, trained_on, settings["unassigned_threshold"])
        labels = metrics.label_order(true, predicted)
        matrix = metrics.confusion(true, predicted, labels)
        class_rows.append(metrics.per_class_scores(matrix, labels).assign(method=method, split=split))
        confusion_rows.append(metrics.confusion_long(matrix, labels).assign(method=method, split=split))
    long = pd.DataFrame(metric_rows, columns=["method", "split", "metric", "value"])
    io.write_tsv(long, output_metrics)
    long = long.assign(scheme=long["split"].map(split_scheme))
    if output_label_efficiency:
        long = long.assign(label_fraction=long["split"].map(label_fraction))
        io.write_tsv(metrics.label_efficiency(long, registry.pretraining_pairs(registered_ran(long))),
                     output_label_efficiency)
    io.write_tsv(metrics.paired_against_best_peer(long, registry.names("peer")), output_paired)
    ablations = ((output_pretraining, registry.pretraining_pairs), (output_variants, registry.variant_pairs))
    for output, pairing in ablations:
        if output:
            io.write_tsv(ablation_effect(long, pairing), output)
    summary = metrics.summarise(long)
    not_run_table = pd.DataFrame(not_run, columns=["method", "split", *group_columns(long), "reason"])
    io.write_tsv(metrics.add_not_run(summary, not_run_table), output_summary)
    io.write_tsv(pd.concat(class_rows, ignore_index=True) if class_rows else pd.DataFrame(
        columns=["cell_type", "precision", "recall", "f1", "support", "method", "split"]), output_per_class)
    io.write_tsv(pd.concat(confusion_rows, ignore_index=True) if confusion_rows else pd.DataFrame(
        columns=["true", "predicted", "count", "method", "split"]), output_confusion)


def selection_row(folder: Path) -> dict[str, Any] | None:
    """What a saved model chose on its validation cells (``meta.selection``) and whether its solver converged; None
    for a model that records neither. Several
    chosen settings (a neural model's ``imbalance`` and ``augment`` lists) are joined by '/', in the same order in
    ``setting`` and ``chosen``."""
    manifest = json.loads((folder / MANIFEST).read_text())
    meta = manifest.get("meta", {})
    selection = meta.get("selection")
    if selection is None and "converged" not in meta:
        return None
    settings = [key for key in selection if key != "scores"] if selection else []
    chosen = [selection[key] for key in settings]
    return {"method": manifest["method"], "split": folder.name, "setting": "/".join(settings),
            "chosen": chosen[0] if len(chosen) == 1 else "/".join(map(str, chosen)),
            "validation_macro_f1": json.dumps(selection["scores"], sort_keys=True) if selection else "",
            "converged": meta.get("converged", "")}


def selections_table(model_folders: Sequence[str]) -> pd.DataFrame:
    """One ``selection_row`` per saved model (method, split) that has one; models that did not run are left out."""
    rows = [selection_row(Path(folder)) for folder in model_folders
            if "not_run" not in json.loads((Path(folder) / MANIFEST).read_text())]
    return pd.DataFrame([row for row in rows if row], columns=SELECTION_COLUMNS)
