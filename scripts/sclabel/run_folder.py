"""A named run's own working folder (``run`` in the config): the config's input paths made absolute first, so a run
can work in ``runs/<run>/`` while its data paths still mean what they meant where Snakemake was started.

Imports only the standard library: the Snakefile calls it before any rule env exists.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

RUNS_FOLDER = "runs"
REMOTE_PREFIXES = ("builtin:", "http://", "https://", "ftp://", "file://")
# per dataset / query entry: the keys that hold a local path
ENTRY_PATH_KEYS = ("source", "labels", "ontology_map")


def absolute(path: str | None, base: str) -> str | None:
    """``path`` made absolute against ``base``; URLs, builtin names, absolute paths and None unchanged."""
    if path is None or path.startswith(REMOTE_PREFIXES) or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base, path))


def absolute_entries(entries: Mapping[str, Mapping[str, Any]], base: str) -> dict[str, dict[str, Any]]:
    """Dataset or query entries with their local paths made absolute."""
    return {name: {key: absolute(value, base) if key in ENTRY_PATH_KEYS else value for key, value in entry.items()}
            for name, entry in entries.items()}


def with_absolute_inputs(config: Mapping[str, Any], base: str) -> dict[str, Any]:
    """A copy of the config whose input paths, those it has, are absolute against ``base``."""
    fixed = copy.deepcopy(dict(config))
    fixed["datasets"] = absolute_entries(fixed["datasets"], base)
    annotate = fixed.get("annotate") or {}
    if annotate.get("queries"):
        annotate["queries"] = absolute_entries(annotate["queries"], base)
    interpret = fixed.get("interpret") or {}
    if interpret.get("libraries"):
        interpret["libraries"] = {name: absolute(path, base) for name, path in interpret["libraries"].items()}
    if "marker_table" in interpret:
        interpret["marker_table"] = absolute(interpret["marker_table"], base)
    transformer = (fixed.get("encoder") or {}).get("transformer") or {}
    if "gene_embedding_init" in transformer:
        transformer["gene_embedding_init"] = absolute(transformer["gene_embedding_init"], base)
    return fixed


def run_folder(run: str) -> str:
    """The working folder of the named run, relative to where Snakemake was started."""
    return os.path.join(RUNS_FOLDER, run)
