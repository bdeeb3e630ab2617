"""Read a configured dataset in any supported format and convert it to sclabel's standard AnnData.

Standard form: ``X`` float32 CSR (raw counts or log1p CP10k, as ``uns['sclabel']['values']`` says),
unique gene symbols as ``var_names``, unique cell ids as ``obs_names``, ``obs['cell_type']`` (absent for
unlabelled datasets), ``obs['dataset']``, ``obs['batch']`` and, when configured, ``obs['donor']``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.errors import InputError

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
    """Read a dense CSV expression table in chunks into a sparse AnnData (first column holds ids)."""
    blocks, row_ids = [], []
    try:
        reader = pd.read_csv(path, index_col=0, chunksize=CSV_CHUNK_ROWS)
        for chunk in reader:
            blocks.append(sp.csr_matrix(chunk.to_numpy(dtype=np.float32)))
            row_ids.extend(chunk.index.astype(str))
            columns = chunk.columns.astype(str)
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
    """Join a labels table (cell id in the first column) onto ``adata.obs``."""
    table = pd.read_csv(labels_file, sep=None, engine="python", index_col=0)
    table.index = table.index.astype(str)
    missing = adata.obs_names.difference(table.index)
    if len(missing):
        raise InputError(labels_file, "cell ids", f"{len(missing)} cells of the matrix have no row, e.g. "
                         f"'{missing[0]}'", "give one row per cell id of the expression table")
    for column in table.columns:
        adata.obs[column] = table.loc[adata.obs_names, column].to_numpy()


def read_any(path: Path, spec: Mapping[str, Any]) -> ad.AnnData:
    """Read ``path`` in the format the dataset spec names."""
    fmt = spec.get("format", "h5ad")
    if not path.exists():
        raise InputError(path, "source", "file not found", "fix the path in config datasets.<name>.source")
    if fmt == "h5ad":
        return read_h5ad(path)
    if fmt in ("10x_h5", "10x_mtx"):
        adata = read_10x(path, fmt)
    else:
        adata = read_csv_matrix(path, spec.get("orientation", "cells_by_genes"))
    if spec.get("labels"):
        attach_labels(adata, local_source_path(spec["labels"]), spec.get("label_key"))
    return adata


def check_matrix(adata: ad.AnnData, source: str, values: str) -> None:
    """Refuse empty, non-finite or negative matrices with a one-line error."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(source, "X", f"the dataset is empty ({adata.n_obs} cells x {adata.n_vars} genes)",
                         "point the source at a file with cells and genes")
    data = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if not np.all(np.isfinite(data)):
        raise InputError(source, "X", f"{int(np.sum(~np.isfinite(data)))} non-finite values (NaN/inf)",
                         "replace missing values with 0 or remove the affected cells")
    if data.size and data.min() < 0:
        kind = "negative counts" if values == "counts" else "negative values (scaled data?)"
        raise InputError(source, "X", kind,
                         f"give raw counts or log1p-normalised values; values: is '{values}'")


def check_ids(adata: ad.AnnData, source: str) -> None:
    """Refuse duplicate cell ids."""
    duplicated = adata.obs_names[adata.obs_names.duplicated()]
    if len(duplicated):
        raise InputError(source, "obs_names", f"{len(duplicated)} duplicate cell ids, e.g. '{duplicated[0]}'",
                         "make cell ids unique (e.g. adata.obs_names_make_unique())")


def label_column(adata: ad.AnnData, label_key: str, source: str) -> pd.Series:
    """The label column as strings; refuse a missing column or missing labels."""
    if label_key not in adata.obs:
        raise InputError(source, f"obs['{label_key}']", "label column not found",
                         f"set datasets.<name>.label_key to one of: {', '.join(map(str, adata.obs.columns)) or 'none'}"
                         " or remove it for an unlabelled dataset")
    labels = adata.obs[label_key]
    if labels.isna().any():
        raise InputError(source, f"obs['{label_key}']", f"{int(labels.isna().sum())} cells have no label",
                         "drop unlabelled cells or fill the labels")
    return labels.astype(str)


def filter_cells(adata: ad.AnnData, obs_filter: Mapping[str, Sequence[str]], source: str) -> ad.AnnData:
    """Keep the cells whose obs columns hold one of the allowed values (e.g. ``{species: [human]}``)."""
    keep = np.ones(adata.n_obs, dtype=bool)
    for column, allowed in obs_filter.items():
        if column not in adata.obs:
            raise InputError(source, f"obs['{column}']", "obs_filter column not found",
                             f"use one of: {', '.join(map(str, adata.obs.columns))}")
        keep &= adata.obs[column].astype(str).isin([str(value) for value in allowed]).to_numpy()
    return adata[keep].copy()


def standardise(adata: ad.AnnData, spec: Mapping[str, Any], name: str, source: str) -> ad.AnnData:
    """Convert a freshly read dataset into the standard form described in this module."""
    values = spec.get("values", "counts")
    if spec.get("obs_filter"):
        adata = filter_cells(adata, spec["obs_filter"], source)
    adata.var_names = adata.var_names.astype(str).str.strip()
    adata.var_names_make_unique()
    adata.obs_names = adata.obs_names.astype(str)
    check_ids(adata, source)
    for key in ("batch_key", "donor_key"):
        if spec.get(key) and spec[key] not in adata.obs:
            raise InputError(source, f"obs['{spec[key]}']", f"{key} column not found",
                             f"set datasets.<name>.{key} to an existing obs column or remove it")
    matrix = sp.csr_matrix(adata.X, dtype=np.float32)
    standard = ad.AnnData(X=matrix, obs=adata.obs.copy(), var=pd.DataFrame(index=adata.var_names))
    check_matrix(standard, source, values)
    if spec.get("label_key"):
        labels = label_column(adata, spec["label_key"], source)
        standard.obs["cell_type"] = pd.Categorical(labels.replace(dict(spec.get("label_map") or {})))
    standard.obs["dataset"] = pd.Categorical([name] * adata.n_obs)
    batch = adata.obs[spec["batch_key"]].astype(str).to_numpy() if spec.get("batch_key") else [name] * adata.n_obs
    standard.obs["batch"] = pd.Categorical(batch)
    if spec.get("donor_key"):
        standard.obs["donor"] = pd.Categorical(adata.obs[spec["donor_key"]].astype(str))
    standard.uns["sclabel"] = {"values": values, "species": spec.get("species", "unknown"), "source": source}
    return standard


def acquire(name: str, spec: Mapping[str, Any], download_dir: Path, retries: int, timeout_s: float,
            config_file: str) -> tuple[ad.AnnData, str]:
    """Fetch (when remote) and read one configured dataset; returns it with a description of its source."""
    source = spec["source"]
    if source.startswith("builtin:"):
        return load_builtin(source[len("builtin:"):], config_file), source
    from sclabel import fetch

    if is_remote(source):
        if not spec.get("sha256"):
            raise InputError(config_file, f"datasets.{name}.sha256", "a URL source needs a checksum",
                             "add the file's sha256 (sha256sum FILE) to the dataset entry")
        local = fetch.download(source, download_dir / Path(source.split("?")[0]).name, spec["sha256"],
                               retries=retries, timeout=timeout_s)
    else:
        local = local_source_path(source)
        if spec.get("sha256") and local.exists() and fetch.sha256sum(local) != spec["sha256"].lower():
            raise InputError(local, "sha256", "checksum does not match the config",
                             f"update datasets.{name}.sha256 or restore the original file")
    if is_archive(local):
        extracted = fetch.extract_archive(local, download_dir / f"{local.name}.d")
        member = spec.get("path_in_archive")
        if not member:
            raise InputError(config_file, f"datasets.{name}.path_in_archive", "the source is an archive",
                             "name the file or folder inside it to read, relative to the archive root")
        local = download_dir / f"{local.name}.d" / member
        if not extracted or not local.exists():
            raise InputError(source, "path_in_archive", f"'{member}' is not in the archive",
                             "fix datasets.<name>.path_in_archive")
    return read_any(local, spec), source
