"""Read a configured dataset in any supported format and convert it to sclabel's standard AnnData.

Standard form: ``X`` float32 CSR (raw counts or log1p CP10k, as ``uns['sclabel']['values']`` says),
unique gene symbols as ``var_names``, unique cell ids as ``obs_names``, ``obs['cell_type']`` (absent for
unlabelled datasets), ``obs['dataset']``, ``obs['batch']`` and, when configured, ``obs['donor']``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem, sparse_dataset

from sclabel import fetch
from sclabel.errors import InputError
from sclabel.metrics import UNASSIGNED
from sclabel.store import DEFAULT_CHUNK_CELLS, RowWriter, write_store

log = logging.getLogger("sclabel")

BUILTIN_DATASETS = ("pbmc68k_reduced",)
CSV_CHUNK_ROWS = 2000


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


def is_archive(path: Path) -> bool:
    """True for tar and zip archives, judged by file name."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def is_remote(source: str) -> bool:
    """True for sources that must be downloaded (http, https)."""
    return source.startswith(("http://", "https://"))


def local_source_path(source: str) -> Path:
    """Path of a local or ``file://`` source."""
    return Path(source[len("file://"):]) if source.startswith("file://") else Path(source)


def load_builtin(name: str, config_file: str) -> ad.AnnData:
    """Load a dataset bundled with an installed package (no network)."""
    if name != "pbmc68k_reduced":
        raise InputError(config_file, "datasets.*.source", f"unknown builtin dataset 'builtin:{name}'",
                         f"use one of: {', '.join('builtin:' + n for n in BUILTIN_DATASETS)}")
    import scanpy as sc

    full = sc.datasets.pbmc68k_reduced()
    adata = full.raw.to_adata()  # log-normalised values of all 765 genes; X itself is scaled
    adata.obs = full.obs.copy()
    return adata


def read_h5ad(path: Path) -> ad.AnnData:
    """Read an h5ad file, turning any reader failure into a one-line error."""
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a corrupt file
        raise InputError(path, "file", f"not a readable h5ad file ({type(exc).__name__}: {exc})",
                         "re-download the file or check that it is an AnnData .h5ad") from exc


def read_10x(path: Path, fmt: str) -> ad.AnnData:
    """Read 10x Genomics output: an ``.h5`` matrix or an ``mtx`` folder."""
    import scanpy as sc

    try:
        adata = sc.read_10x_h5(path) if fmt == "10x_h5" else sc.read_10x_mtx(path, var_names="gene_symbols")
    except Exception as exc:
        raise InputError(path, "file", f"not readable as {fmt} ({type(exc).__name__}: {exc})",
                         "point source at the filtered_feature_bc_matrix .h5 file or folder") from exc
    adata.var_names_make_unique()
    return adata


def read_csv_matrix(path: Path, orientation: str) -> ad.AnnData:
    """Read a dense CSV expression table in chunks into a sparse AnnData (first column holds ids, read as written)."""
    blocks, row_ids = [], []
    try:
        reader = pd.read_csv(path, converters={0: str}, chunksize=CSV_CHUNK_ROWS)
        for chunk in reader:
            blocks.append(sp.csr_matrix(chunk.iloc[:, 1:].to_numpy(dtype=np.float32)))
            row_ids.extend(chunk.iloc[:, 0])
            columns = chunk.columns[1:].astype(str)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(path, "file", f"not a numeric CSV table ({exc})",
                         "give a table with ids in the first column and numbers elsewhere") from exc
    if not blocks:
        raise InputError(path, "file", "the CSV table has no rows", "check the file")
    matrix = sp.vstack(blocks).tocsr()
    if orientation == "genes_by_cells":
        return ad.AnnData(X=matrix.T.tocsr(), obs=pd.DataFrame(index=list(columns)),
                          var=pd.DataFrame(index=row_ids))
    return ad.AnnData(X=matrix, obs=pd.DataFrame(index=row_ids), var=pd.DataFrame(index=list(columns)))


def attach_labels(adata: ad.AnnData, labels_file: Path, label_key: str) -> None:
    """Join a labels table (cell id in the first column) onto ``adata.obs``, every value read as written (text)."""
    existing(labels_file, "labels")
    table = pd.read_csv(labels_file, sep=None, engine="python", index_col=0, dtype=str, keep_default_na=False)
    check_ids(table.index, labels_file, "cell ids")
    missing = adata.obs_names.difference(table.index)
    if len(missing):
        raise InputError(labels_file, "cell ids", f"{len(missing)} cells of the matrix have no row, e.g. "
                         f"'{missing[0]}'", "give one row per cell id of the expression table")
    for column in table.columns:
        adata.obs[column] = table.loc[adata.obs_names, column].to_numpy()


def existing(path: Path, field: str = "source") -> Path:
    """``path``, refused with a one-line error naming the config ``field`` when it does not exist."""
    if not path.exists():
        raise InputError(path, field, "file not found", f"fix the path in config datasets.<name>.{field}")
    return path


def read_any(path: Path, spec: Mapping[str, Any]) -> ad.AnnData:
    """Read ``path`` in the format the dataset spec names."""
    fmt = spec.get("format", "h5ad")
    existing(path)
    if fmt == "h5ad":
        return read_h5ad(path)
    if fmt in ("10x_h5", "10x_mtx"):
        adata = read_10x(path, fmt)
    else:
        adata = read_csv_matrix(path, spec.get("orientation", "cells_by_genes"))
    if spec.get("labels"):
        attach_labels(adata, local_source_path(spec["labels"]), spec.get("label_key"))
    return adata


def check_shape(n_obs: int, n_vars: int, source: str) -> None:
    """Refuse a dataset without cells or genes."""
    if n_obs == 0 or n_vars == 0:
        raise InputError(source, "X", f"the dataset is empty ({n_obs} cells x {n_vars} genes)",
                         "point the source at a file with cells and genes")


class ValueSummary(NamedTuple):
    """What ``check_values`` needs of a matrix's stored values (chunks combine with ``merged``)."""

    non_finite: int
    minimum: float
    maximum: float
    integer: bool  # every stored value is a whole number
    expm1_sums: np.ndarray  # per cell: the sum of expm1 of its values (log1p data: the library size recovered)


# the largest value a matrix may hold, per declared scale: larger ones overflow library sizes (float32) or are corrupt
MAX_VALUE = {"counts": 1e9, "log1p": float(np.log1p(1e9))}
# non-integer values no larger than this under ``values: counts`` are log-normalised data (log1p of CPM at most ~13.8)
LOG_SCALE_MAX = 15.0
CP10K = 1e4


def value_summary(X: Any) -> ValueSummary:
    """Summary of a matrix (or chunk of rows): non-finite count, range, integrality and per-cell expm1 sums."""
    X = sp.csr_matrix(X)
    data = X.data.astype(np.float64)
    finite = np.isfinite(data)
    linear = sp.csr_matrix((np.expm1(np.minimum(np.where(finite, data, 0.0), 700.0)), X.indices, X.indptr),
                           shape=X.shape)
    return ValueSummary(int(np.sum(~finite)), float(data.min()) if data.size else 0.0,
                        float(data[finite].max()) if finite.any() else 0.0,
                        bool(np.all(data[finite] == np.round(data[finite]))),
                        np.asarray(linear.sum(axis=1)).ravel())


def merged(parts: Sequence[ValueSummary]) -> ValueSummary:
    """One summary of the matrix whose row chunks ``parts`` summarise."""
    return ValueSummary(sum(p.non_finite for p in parts), min((p.minimum for p in parts), default=0.0),
                        max((p.maximum for p in parts), default=0.0), all(p.integer for p in parts),
                        np.concatenate([p.expm1_sums for p in parts]) if parts else np.zeros(0))


def check_values(summary: ValueSummary, source: str, values: str) -> None:
    """Refuse non-finite, negative or implausibly large values and a matrix that contradicts the declared ``values``
    (log-normalised data declared counts, integer counts declared log1p); warn on a plausible but unusual scale."""
    setting = "datasets.<name>.values"
    if summary.non_finite:
        raise InputError(source, "X", f"{summary.non_finite} non-finite values (NaN/inf)",
                         "replace missing values with 0 or remove the affected cells")
    if summary.minimum < 0:
        kind = "negative counts" if values == "counts" else "negative values (scaled data?)"
        raise InputError(source, "X", kind,
                         f"give raw counts or log1p-normalised values; values: is '{values}'")
    if values == "log1p" and summary.integer and summary.maximum > 0:
        raise InputError(source, "X", "every value is an integer (raw counts?) under values: log1p",
                         f"set {setting}: counts, or give log1p-normalised values")
    if summary.maximum > MAX_VALUE[values]:
        raise InputError(source, "X", f"values up to {summary.maximum:.3g}, above the largest plausible {values} "
                         f"value ({MAX_VALUE[values]:.3g}); library sizes would overflow",
                         "check the matrix for overflowed or corrupt entries (or a wrong values: setting)")
    if values == "counts" and not summary.integer:
        if summary.maximum <= LOG_SCALE_MAX:
            raise InputError(source, "X", f"non-integer values no larger than {summary.maximum:.3g} under "
                             "values: counts look log-normalised (they would be normalised twice)",
                             f"set {setting}: log1p, or give the raw counts")
        log.warning("%s: X: non-integer values under values: counts (ambient-corrected or estimated counts?); "
                    "normalised as counts", source)
    sums = summary.expm1_sums[summary.expm1_sums > 0]
    if values == "log1p" and len(sums) and np.median(sums) > 1.5 * CP10K:
        log.warning("%s: X: per-cell sums of expm1 (median %.3g) exceed 10^4: not log1p CP10k (log1p CPM or "
                    "another transform?); harmonise.renormalise: true puts cells on one scale", source,
                    np.median(sums))


def check_matrix(adata: ad.AnnData, source: str, values: str) -> None:
    """Refuse empty, non-finite, negative or mis-declared matrices with a one-line error."""
    check_shape(adata.n_obs, adata.n_vars, source)
    check_values(value_summary(adata.X), source, values)


def check_ids(ids: pd.Index, source: str, field: str = "obs_names",
              fix: str = "make cell ids unique (e.g. adata.obs_names_make_unique())") -> None:
    """Refuse duplicate cell ids."""
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise InputError(source, field, f"{len(duplicated)} duplicate cell ids, e.g. '{duplicated[0]}'", fix)


def tidy_labels(labels: pd.Series) -> pd.Series:
    """Labels with surrounding whitespace stripped and inner runs of whitespace made one space (``T  cell`` ->
    ``T cell``), so that labels differing only in whitespace form one class."""
    return labels.str.replace(r"\s+", " ", regex=True).str.strip()


def label_column(obs: pd.DataFrame, label_key: str, source: str) -> pd.Series:
    """The label column as strings with whitespace normalised (``tidy_labels``, with a warning); refuse a missing
    column or missing labels.

    A label is missing when it is NaN in the source or blank; any text, ``NA`` or ``None`` included, is a label.
    """
    if label_key not in obs:
        raise InputError(source, f"obs['{label_key}']", "label column not found",
                         f"set datasets.<name>.label_key to one of: {', '.join(map(str, obs.columns)) or 'none'}"
                         " or remove it for an unlabelled dataset")
    written = obs[label_key].astype(str)
    labels = tidy_labels(written)
    missing = obs[label_key].isna().to_numpy() | (labels == "").to_numpy()
    if missing.any():
        raise InputError(source, f"obs['{label_key}']", f"{int(missing.sum())} cells have no label (missing or "
                         f"blank), e.g. cell '{obs.index[missing][0]}'", "drop unlabelled cells or fill the labels")
    changed = written[written != labels]
    if len(changed):
        log.warning("%s: obs['%s']: %d labels with surrounding or repeated whitespace normalised, e.g. %r -> %r",
                    source, label_key, len(changed), changed.iloc[0], labels[changed.index[0]])
    return labels


def label_mapping(spec: Mapping[str, Any], name: str) -> dict[str, str]:
    """``label_map`` with keys and values as text, whitespace normalised as ``tidy_labels``; refuse entries YAML did
    not read as text."""
    mapping = dict(spec.get("label_map") or {})
    odd = [entry for pair in mapping.items() for entry in pair
           if isinstance(entry, bool) or not isinstance(entry, (str, int))]
    if odd:
        raise InputError("config", f"datasets.{name}.label_map", f"{odd[0]!r} is not text (YAML reads null, "
                         "yes/no, true/false and decimals as values)", "quote the label, e.g. 'null': T cell")
    tidy = tidy_labels(pd.Series([str(entry) for pair in mapping.items() for entry in pair], dtype=str)).tolist()
    return dict(zip(tidy[::2], tidy[1::2]))


def cell_types(obs: pd.DataFrame, spec: Mapping[str, Any], name: str, source: str) -> pd.Categorical:
    """The standard cell_type column: labels stripped and mapped by ``label_map``; refuse the reserved label.

    Errors name the labels file when the labels come from one, else ``source``.
    """
    label_key, labels_file = spec["label_key"], spec.get("labels") or source
    labels = label_column(obs, label_key, labels_file).replace(label_mapping(spec, name))
    reserved = labels[labels.str.casefold() == UNASSIGNED.casefold()]
    if len(reserved):
        raise InputError(labels_file, f"obs['{label_key}']", f"{len(reserved)} cells are labelled '{reserved.iloc[0]}',"
                         f" the reserved label of cells a method leaves unassigned",
                         f"rename it in datasets.{name}.label_map, e.g. {{{reserved.iloc[0]}: unclassified}}")
    return pd.Categorical(labels)


def subset_obs(obs: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """The rows ``keep`` of ``obs`` as ``adata[keep].copy()`` gives them: unused categories dropped."""
    obs = obs[keep].copy()
    for column in obs.columns:
        if isinstance(obs[column].dtype, pd.CategoricalDtype):
            obs[column] = obs[column].cat.remove_unused_categories()
    return obs


def filter_cells(obs: pd.DataFrame, obs_filter: Mapping[str, Sequence[str]] | None,
                 source: str) -> tuple[pd.DataFrame, np.ndarray]:
    """(obs of the kept cells, keep mask): cells whose obs columns hold an allowed value (``{species: [human]}``).

    Without a filter every cell is kept and ``obs`` is returned as it is.
    """
    keep = np.ones(len(obs), dtype=bool)
    if not obs_filter:
        return obs, keep
    for column, allowed in obs_filter.items():
        if column not in obs:
            raise InputError(source, f"obs['{column}']", "obs_filter column not found",
                             f"use one of: {', '.join(map(str, obs.columns))}")
        keep &= obs[column].astype(str).isin([str(value) for value in allowed]).to_numpy()
    return subset_obs(obs, keep), keep


def standard_var(var_names: pd.Index) -> pd.DataFrame:
    """The standard var table: gene names stripped and made unique as ``var_names_make_unique`` does."""
    return pd.DataFrame(index=ad.utils.make_index_unique(pd.Index(var_names.astype(str).str.strip())))


def standard_obs(obs: pd.DataFrame, spec: Mapping[str, Any], name: str, source: str) -> pd.DataFrame:
    """The standard obs of a dataset's (filtered) cells: its columns plus cell_type, dataset, batch and donor."""
    obs = obs.set_axis(obs.index.astype(str))
    check_ids(obs.index, source)
    for key in ("batch_key", "donor_key"):
        if spec.get(key) and spec[key] not in obs:
            raise InputError(source, f"obs['{spec[key]}']", f"{key} column not found",
                             f"set datasets.<name>.{key} to an existing obs column or remove it")
    standard = obs.copy()
    if spec.get("label_key"):
        standard["cell_type"] = cell_types(obs, spec, name, source)
    standard["dataset"] = pd.Categorical([name] * len(obs))
    standard["batch"] = pd.Categorical(obs[spec["batch_key"]].astype(str).to_numpy() if spec.get("batch_key")
                                       else [name] * len(obs))
    if spec.get("donor_key"):
        standard["donor"] = pd.Categorical(obs[spec["donor_key"]].astype(str))
    return standard


def standard_uns(spec: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``uns['sclabel']`` of the standard form: what X holds, the species and the source."""
    return {"sclabel": {"values": spec.get("values", "counts"), "species": spec.get("species", "unknown"),
                        "source": source}}


def expression(adata: ad.AnnData, values: str, source: str) -> Any:
    """The expression matrix: ``X``, or ``layers['counts']`` for a file without ``X`` declared ``values: counts``."""
    if adata.X is not None:
        return adata.X
    if values == "counts" and "counts" in adata.layers:
        log.info("%s: no X; reading the declared counts from layers['counts']", source)
        return adata.layers["counts"]
    raise InputError(source, "X", f"the file has no X matrix (layers: {', '.join(adata.layers) or 'none'})",
                     "store the expression in X, or raw counts in layers['counts'] with values: counts")


def standardise(adata: ad.AnnData, spec: Mapping[str, Any], name: str, source: str) -> ad.AnnData:
    """Convert a dataset read into memory into the standard form described in this module."""
    obs, keep = filter_cells(adata.obs, spec.get("obs_filter"), source)
    obs = standard_obs(obs, spec, name, source)
    X = expression(adata, spec.get("values", "counts"), source)
    X = X if keep.all() else X[np.flatnonzero(keep)]
    standard = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32), obs=obs, var=standard_var(adata.var_names),
                          uns=standard_uns(spec, source))
    check_matrix(standard, source, spec.get("values", "counts"))
    return standard


def open_h5ad_rows(path: Path) -> tuple[h5py.File, pd.DataFrame, pd.DataFrame, Any] | None:
    """(open file, obs, var, X readable by row slices) of an h5ad with a CSR or dense ``X``; None otherwise."""
    try:
        handle = h5py.File(path, "r")
    except OSError:
        return None
    try:
        obs, var = read_elem(handle["obs"]), read_elem(handle["var"])
        element = handle["X"]
        if isinstance(element, h5py.Dataset) and element.ndim == 2:
            return handle, obs, var, element
        X = sparse_dataset(element)
        if X.format == "csr":
            return handle, obs, var, X
    except Exception:  # legacy layouts and corrupt files go to the in-memory reader, which reports them
        pass
    handle.close()
    return None


def stream_h5ad(path: Path, spec: Mapping[str, Any], name: str, source: str, output: str | Path,
                chunk_cells: int) -> tuple[int, int] | None:
    """Standardise an h5ad into the store at ``output`` reading ``X`` by row chunks; None if ``X`` is not CSR/dense.

    Only obs and var are held in memory; the value checks run over every chunk before the file is kept.
    """
    opened = open_h5ad_rows(path)
    if opened is None:
        return None
    handle, raw_obs, raw_var, X = opened
    values = spec.get("values", "counts")
    with handle:
        obs, keep = filter_cells(raw_obs, spec.get("obs_filter"), source)
        obs = standard_obs(obs, spec, name, source)
        var = standard_var(raw_var.index)
        check_shape(len(obs), len(var), source)
        summaries = []
        with RowWriter(output, obs, var, standard_uns(spec, source)) as writer:
            for start in range(0, len(keep), chunk_cells):
                stop = min(start + chunk_cells, len(keep))
                chunk = sp.csr_matrix(X[start:stop], dtype=np.float32)[np.flatnonzero(keep[start:stop])]
                summaries.append(value_summary(chunk))
                writer.append(chunk)
            check_values(merged(summaries), source, values)
    return len(obs), len(var)


def local_file(name: str, spec: Mapping[str, Any], download_dir: Path, limits: fetch.Limits,
               config_file: str) -> Path:
    """Local path of a file or URL source: downloaded, checksum-checked and unpacked as needed."""
    source = spec["source"]
    member = spec.get("path_in_archive")
    if member and fetch.outside_root(member):
        raise InputError(config_file, f"datasets.{name}.path_in_archive", f"'{member}' points outside the archive "
                         "(absolute or climbing with '..')", "give a path relative to the archive root")
    if is_remote(source):
        if not spec.get("sha256"):
            raise InputError(config_file, f"datasets.{name}.sha256", "a URL source needs a checksum",
                             "add the file's sha256 (sha256sum FILE) to the dataset entry")
        local = fetch.download(source, download_dir / Path(source.split("?")[0]).name, spec["sha256"], limits)
    else:
        local = local_source_path(source)
        if spec.get("sha256") and local.exists() and fetch.sha256sum(local) != spec["sha256"].lower():
            raise InputError(local, "sha256", "checksum does not match the config",
                             f"update datasets.{name}.sha256 or restore the original file")
    if is_archive(local):
        extracted = fetch.extract_archive(local, download_dir / f"{local.name}.d", limits)
        if not member:
            raise InputError(config_file, f"datasets.{name}.path_in_archive", "the source is an archive",
                             "name the file or folder inside it to read, relative to the archive root")
        local = download_dir / f"{local.name}.d" / member
        if not extracted or not local.exists():
            raise InputError(source, "path_in_archive", f"'{member}' is not in the archive",
                             "fix datasets.<name>.path_in_archive")
    return local


def acquire(name: str, spec: Mapping[str, Any], download_dir: Path, limits: fetch.Limits,
            config_file: str) -> tuple[ad.AnnData, str]:
    """Fetch (when remote) and read one configured dataset into memory; returns it with its source."""
    source = spec["source"]
    if source.startswith("builtin:"):
        return load_builtin(source[len("builtin:"):], config_file), source
    return read_any(local_file(name, spec, download_dir, limits, config_file), spec), source


def write_standard(name: str, spec: Mapping[str, Any], download_dir: Path, limits: fetch.Limits,
                   config_file: str, output: str | Path, chunk_cells: int) -> tuple[int, int, str]:
    """Fetch or read one dataset and write it in standard form as a cell store; returns (cells, genes, source).

    h5ad sources with a CSR or dense ``X`` stream by row chunks (memory independent of the cell count); 10x, CSV,
    builtin and other h5ad layouts are read into memory first.
    """
    source = spec["source"]
    if not source.startswith("builtin:") and spec.get("format", "h5ad") == "h5ad":
        local = existing(local_file(name, spec, download_dir, limits, config_file))
        shape = stream_h5ad(local, spec, name, source, output, chunk_cells)
        if shape is not None:
            return (*shape, source)
        adata = read_h5ad(local)
    else:
        adata, source = acquire(name, spec, download_dir, limits, config_file)
    standard = standardise(adata, spec, name, source)
    write_store(standard, output, chunk_cells)
    return standard.n_obs, standard.n_vars, source


def download_stage(name: str, spec: Mapping[str, Any], settings: Mapping[str, Any], output: str,
                   download_dir: str, chunk_cells: int = DEFAULT_CHUNK_CELLS) -> None:
    """Fetch or read one dataset and write it in the standard form as a cell store (h5ad sources by row chunks)."""
    n_obs, n_vars, source = write_standard(name, spec, Path(download_dir), fetch.Limits.of(settings), "config",
                                           output, chunk_cells)
    log.info("%s: %d cells x %d genes from %s", name, n_obs, n_vars, source)
