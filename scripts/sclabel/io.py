"""Atomic file writing and small table helpers shared by every step."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sclabel.errors import InputError

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

PROC_STATUS = Path("/proc/self/status")


def umask() -> int:
    """The process's umask: the ``Umask:`` line of Linux's /proc/self/status, else set and restored with os.umask.

    The fallback changes a process-global setting for an instant: a thread creating a file at that moment gets it
    private (0o077), never more open; sclabel's step scripts write their outputs from one thread.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give a finished temporary file 0o666 (folder 0o777) less the umask, as open() or mkdir() would have."""
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask())


def temp_sibling(dest: Path, folder: bool = False) -> Path:
    """A new hidden file (or folder) beside ``dest`` named ``.<stem>.<random>.tmp<suffix>`` (mkstemp/mkdtemp: 0600/0700
    until ``apply_umask``); every temporary output is made here, so ``remove_stale_temps`` finds leftovers."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    names = {"prefix": f".{dest.stem}.", "suffix": f".tmp{dest.suffix}", "dir": dest.parent}
    if folder:
        return Path(tempfile.mkdtemp(**names))
    fd, name = tempfile.mkstemp(**names)
    os.close(fd)
    return Path(name)


def stale_temps(dest: str | os.PathLike[str]) -> list[Path]:
    """The ``temp_sibling`` files and folders of ``dest`` present now: leftovers of a write that was killed."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(dest.stem)}\.[a-z0-9_]+\.tmp{re.escape(dest.suffix)}")
    return sorted(path for path in dest.parent.iterdir() if pattern.fullmatch(path.name))


def remove_stale_temps(outputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Delete the temporary siblings that killed writes of these outputs left behind; returns what was removed.

    Call it only where no other process writes the same outputs: at the start of the job that owns them.
    """
    removed = [path for dest in outputs for path in stale_temps(dest)]
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed

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
    """Yield a temporary sibling of ``dest``; rename it onto ``dest`` (mode as the umask says) only if the block
    succeeds."""
    dest = Path(dest)
    tmp = temp_sibling(dest)
    try:
        yield tmp
        apply_umask(tmp)
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
    """Yield an empty temporary sibling folder; on success it replaces ``dest`` (old contents removed), its mode as
    the umask says."""
    dest = Path(dest)
    tmp = temp_sibling(dest, folder=True)
    try:
        yield tmp
        apply_umask(tmp)
        if dest.exists():
            old = temp_sibling(dest, folder=True)
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
