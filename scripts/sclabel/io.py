"""Atomic file writing and small table helpers shared by every step."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sclabel.errors import InputError

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def raise_if_disk_full(exc: BaseException | None, dest: Path) -> None:
    """Turn a full disk or exhausted quota while writing ``dest`` (the error or one it was raised from, as writers
    wrap it) into a one-line InputError; the caller has removed the partial output."""
    cause = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in FULL_DISK:
            raise InputError(dest, "disk", f"no space left on the device ({os.strerror(cause.errno)}); nothing was "
                             "written", f"free space (or quota) on {dest.parent} and rerun") from exc
        cause = cause.__cause__ or cause.__context__


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``dest``; rename it onto ``dest`` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=f".tmp{dest.suffix}", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, dest)
        raise


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success it replaces ``dest`` (old contents removed)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
            os.replace(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    except Exception as exc:
        raise_if_disk_full(exc, dest)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_h5ad(adata: ad.AnnData, dest: str | os.PathLike[str]) -> None:
    """Write ``adata`` to ``dest`` atomically (gzip): user-facing outputs; the data path writes ``sclabel.store``."""
    with atomic_path(dest) as tmp:
        adata.write_h5ad(tmp, compression="gzip")


def write_tsv(table: pd.DataFrame, dest: str | os.PathLike[str], index: bool = False) -> None:
    """Write ``table`` as tab-separated text atomically."""
    with atomic_path(dest) as tmp:
        table.to_csv(tmp, sep="\t", index=index)


def read_tsv(path: str | os.PathLike[str], strings: Sequence[str], **options: object) -> pd.DataFrame:
    """A tab-separated table whose ``strings`` columns (cell ids, labels) hold exactly what is written.

    pandas would read a cell type or id written ``NA``, ``None``, ``nan``, ``null`` or empty as missing; these
    columns skip its NA rules, the others keep its parsing (numbers, NaN for blanks).
    """
    import pandas as pd

    return pd.read_csv(path, sep="\t", converters={column: str for column in strings}, **options)


def write_text(text: str, dest: str | os.PathLike[str]) -> None:
    """Write ``text`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
