"""Cell Ontology maps: each dataset's labels → CL ids, labels harmonised through them, and the finer-type relation
of the ontology-aware metrics (``metrics.ontology_scores``).

A map is a TSV with columns ``label`` and ``ontology_id`` (and optionally ``note``), one row per label of the dataset
as its standard file holds it (after ``label_map``). The ontology is read offline from cellxgene-ontology-guide.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sclabel import io
from sclabel.errors import InputError
from sclabel.store import CellStore

log = logging.getLogger("sclabel")

# the CELLxGENE schema whose ontology releases are read; cellxgene-ontology-guide 1.11.1 ships CL v2026-03-26 for it
CXG_SCHEMA_VERSION = "7.1.0"
MAP_COLUMNS = ("label", "ontology_id")
TABLE_COLUMNS = ["dataset", "author_label", "cell_type", "ontology_id", "ontology_label", "note", "cl_version"]
FIND_IDS = "look the term up at https://www.ebi.ac.uk/ols4/ontologies/cl"


@functools.cache
def cell_ontology() -> Any:
    """The ontology parser of ``CXG_SCHEMA_VERSION`` (loaded once; no network)."""
    from cellxgene_ontology_guide.ontology_parser import OntologyParser

    return OntologyParser(CXG_SCHEMA_VERSION)


def cl_version(parser: Any) -> str:
    """The Cell Ontology release the parser reads, e.g. ``v2026-03-26``."""
    return str(parser.cxg_schema.supported_ontologies["CL"]["version"])


def read_map(path: str | Path) -> pd.DataFrame:
    """A label → CL id map as text (columns label, ontology_id, note); refuse a missing, blank or repeated entry."""
    if not Path(path).is_file():
        raise InputError(path, "file", "ontology map not found", "fix the path in datasets.<name>.ontology_map")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [column for column in MAP_COLUMNS if column not in table]
    if missing:
        raise InputError(path, "columns", f"no {', '.join(missing)} column",
                         "give a tab-separated table with columns label, ontology_id and optionally note")
    table = table.reindex(columns=[*MAP_COLUMNS, "note"], fill_value="").apply(lambda column: column.str.strip())
    blank = table.index[(table["label"] == "") | (table["ontology_id"] == "")]
    if len(blank):
        raise InputError(path, f"line {blank[0] + 2}", "blank label or ontology_id", "fill both or remove the line")
    repeated = table["label"][table["label"].duplicated()]
    if len(repeated):
        raise InputError(path, f"label '{repeated.iloc[0]}'", "listed twice", "keep one line per label")
    return table


def check_terms(table: pd.DataFrame, path: str | Path, parser: Any) -> None:
    """Refuse ids that are not current Cell Ontology terms (naming the replacement of an obsolete one)."""
    for label, term in zip(table["label"], table["ontology_id"]):
        if not parser.is_valid_term_id(term, "CL"):
            raise InputError(path, f"label '{label}'", f"'{term}' is not a Cell Ontology term (CL {cl_version(parser)})",
                             f"use a CL id such as CL:0000236; {FIND_IDS}")
        if parser.is_term_deprecated(term):
            replacement = parser.get_term_replacement(term)
            raise InputError(path, f"label '{label}'", f"'{term}' is obsolete in CL {cl_version(parser)}",
                             f"use {replacement}" if replacement else f"choose a current term; {FIND_IDS}")


def dataset_rows(name: str, labels: Sequence[str], path: str, mode: str, parser: Any) -> pd.DataFrame:
    """One row per label of a dataset (``TABLE_COLUMNS``); refuse a label its map gives no id."""
    table = read_map(path)
    check_terms(table, path, parser)
    mapped = table.set_index("label")
    absent = [label for label in labels if label not in mapped.index]
    if absent:
        raise InputError(path, f"label '{absent[0]}'", f"dataset {name}'s label has no ontology_id "
                         f"({len(absent)} labels lack one)",
                         f"add a line '{absent[0]}<TAB>CL:...' to the map; {FIND_IDS}")
    rows = mapped.loc[list(labels)].reset_index()
    term_labels = [parser.get_term_label(term) for term in rows["ontology_id"]]
    return pd.DataFrame({"dataset": name, "author_label": rows["label"],
                         "cell_type": term_labels if mode == "ontology" else rows["label"],
                         "ontology_id": rows["ontology_id"], "ontology_label": term_labels, "note": rows["note"],
                         "cl_version": cl_version(parser)}, columns=TABLE_COLUMNS)


def check_one_id_per_label(table: pd.DataFrame, maps: Mapping[str, str]) -> None:
    """Refuse a combined label that two datasets' maps give different ids."""
    ids = table.groupby("cell_type")["ontology_id"].nunique()
    if (ids > 1).any():
        label = ids.index[ids > 1][0]
        rows = table[table["cell_type"] == label]
        raise InputError(maps[rows["dataset"].iloc[-1]], f"label '{label}'",
                         f"mapped to {rows['ontology_id'].iloc[-1]} here but to {rows['ontology_id'].iloc[0]} by "
                         f"dataset {rows['dataset'].iloc[0]}'s map",
                         "make the maps agree, or set harmonise.labels: ontology")


def ontology_table(labels_of: Mapping[str, Sequence[str]], maps: Mapping[str, str], mode: str,
                   parser: Any) -> pd.DataFrame:
    """Every labelled dataset's labels with their CL id and term label, and the label the combined data gives them.

    ``labels_of``: labelled dataset → its labels; ``maps``: dataset → map file; ``mode``: ``author`` keeps the
    labels (a dataset without a map has no rows), ``ontology`` replaces them by their CL term labels and needs a map
    for every labelled dataset.
    """
    if mode == "ontology":
        unmapped = [name for name in labels_of if name not in maps]
        if unmapped:
            raise InputError("config", f"datasets.{unmapped[0]}.ontology_map", "harmonise.labels: ontology needs a "
                             "map for every labelled dataset", "give a label → CL id TSV (see config/ontology/)")
    parts = [dataset_rows(name, labels, maps[name], mode, parser) for name, labels in labels_of.items() if name in maps]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TABLE_COLUMNS)
    check_one_id_per_label(table, maps)
    return table


def relabelling(table: pd.DataFrame) -> dict[str, dict[str, str]]:
    """dataset → {its label: the combined data's label} from an ``ontology_table``."""
    return {name: dict(zip(rows["author_label"], rows["cell_type"])) for name, rows in table.groupby("dataset")}


def store_labels(inputs: Sequence[str], names: Sequence[str]) -> dict[str, list[str]]:
    """Labelled dataset → its sorted labels, from the stores' obs (no matrix read)."""
    labels = {}
    for path, name in zip(inputs, names):
        with CellStore(path) as store:
            if "cell_type" in store.obs:
                labels[name] = sorted(store.obs["cell_type"].astype(str).unique())
    return labels


def label_stage(inputs: Sequence[str], names: Sequence[str], maps: Mapping[str, str], mode: str,
                output: str) -> dict[str, dict[str, str]] | None:
    """Write the ``ontology_table`` of the QC'd datasets (header only without maps); return the ``relabelling``
    harmonise applies under ``mode: ontology`` (None otherwise)."""
    if not maps and mode == "author":
        io.write_tsv(pd.DataFrame(columns=TABLE_COLUMNS), output)
        return None
    parser = cell_ontology()
    table = ontology_table(store_labels(inputs, names), maps, mode, parser)
    log.info("Cell Ontology %s (cellxgene schema %s), labels %s:\n%s", cl_version(parser), CXG_SCHEMA_VERSION,
             mode, table.drop(columns=["note", "cl_version"]).to_string(index=False))
    io.write_tsv(table, output)
    return relabelling(table) if mode == "ontology" else None


def finer_labels(table: pd.DataFrame, parser: Any) -> dict[str, set[str]]:
    """Label → the other labels a prediction may carry and count as right (scTab's rule): those whose CL id is the
    label's own or one of its descendants (a finer subtype)."""
    ids = dict(zip(table["cell_type"], table["ontology_id"]))
    finer = {}
    for label, term in ids.items():
        below = set(parser.get_term_descendants(term, include_self=True))
        finer[label] = {other for other, other_term in ids.items() if other != label and other_term in below}
    return finer


def finer_from_file(path: str) -> dict[str, set[str]] | None:
    """``finer_labels`` of a written ``ontology_table``; None when it is empty (no dataset has a map)."""
    table = io.read_tsv(path, ["cell_type", "ontology_id", "cl_version"])
    if table.empty:
        return None
    log.info("ontology-aware metrics on Cell Ontology %s", table["cl_version"].iloc[0])
    return finer_labels(table, cell_ontology())
