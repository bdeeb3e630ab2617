"""Downloads with resume, retries, checksums and bounds (time, size), and archive extraction that refuses unsafe
members and archives that expand beyond the configured size or member count."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import posixpath
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

from tqdm import tqdm

from sclabel.errors import InputError
from sclabel.io import atomic_folder, remove_stale_temps

log = logging.getLogger("sclabel.fetch")

CHUNK = 1 << 20
RETRY_STATUS = frozenset({408, 429})
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SOURCE_FIX = "check the URL in config datasets.<name>.source"
UNSAFE_FIX = "do not use this archive: it could write outside the target folder; get or repack a clean copy"
GIB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """The config's ``download`` block: retries and bounds of one download and of its archive's extraction."""

    retries: int = 3
    timeout_s: float = 60.0  # per connection attempt and per socket read
    deadline_s: float = 3600.0  # the whole download, retries and waits included
    max_bytes: int = 50 * GIB  # largest body accepted, refused as soon as it is passed
    max_extracted_bytes: int = 200 * GIB  # sum of an archive's member sizes
    max_members: int = 100_000  # members of an archive (files, folders, links)

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> Limits:
        """Limits from the config's ``download`` block; keys it lacks keep their defaults."""
        return cls(**settings)


class _Transient(Exception):
    """A failure worth retrying: connection error, timeout, truncated body, or HTTP 5xx/408/429."""


def sha256sum(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(source: str, dest: Path, sha256: str | None = None, limits: Limits = Limits(),
             backoff_s: float = 1.0) -> Path:
    """Fetch an http(s) URL, file:// URL or local path to `dest` atomically, verifying size and checksum."""
    dest = Path(dest)
    want = _checked_digest(source, sha256)
    if dest.is_file() and want:
        if sha256sum(dest) == want:
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        if urllib.parse.urlsplit(source).scheme.lower() in ("http", "https"):
            _fetch_http(source, part, limits, backoff_s)
        else:
            shutil.copyfile(_local_path(source), part)
        if want and (got := sha256sum(part)) != want:
            raise InputError(source, "sha256", f"checksum mismatch: expected {want}, got {got}",
                             "update datasets.<name>.sha256 if the file changed upstream, otherwise download again")
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def _checked_digest(source: str, sha256: str | None) -> str | None:
    """The expected checksum in lower case; refuses one that is not 64 hex digits."""
    if sha256 is None:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise InputError(source, "sha256", f"'{sha256}' is not a sha256 (64 hex digits)",
                         "set datasets.<name>.sha256 to the output of `sha256sum FILE`")
    return sha256.lower()


def _local_path(source: str) -> Path:
    """The existing file named by a file:// URL or a plain path."""
    parts = urllib.parse.urlsplit(source)
    path = Path(urllib.request.url2pathname(parts.path)) if parts.scheme.lower() == "file" else Path(source)
    if not path.is_file():
        raise InputError(source, "source", "file not found", "check the path in config datasets.<name>.source")
    return path


def _fetch_http(url: str, part: Path, limits: Limits, backoff_s: float) -> None:
    """Download `url` into `part` before `limits.deadline_s` ends, retrying transient failures with exponential
    backoff."""
    deadline = time.monotonic() + limits.deadline_s
    retries = limits.retries
    for attempt in range(retries + 1):
        try:
            _attempt(url, part, limits, deadline)
            return
        except _Transient as err:
            if attempt == retries:
                raise InputError(url, "download", f"{err}; gave up after {retries + 1} attempts",
                                 "check the network, or raise download.retries / download.timeout_s in the config"
                                 ) from err
            delay = backoff_s * 2 ** attempt
            _check_deadline(url, part.stat().st_size if part.exists() else 0, limits, deadline, wait=delay)
            log.warning("%s: %s; retry %d of %d in %.1f s", url, err, attempt + 1, retries, delay)
            time.sleep(delay)


def _attempt(url: str, part: Path, limits: Limits, deadline: float) -> None:
    """One GET into `part`, resuming from its current size when it has bytes; raises _Transient to retry.

    Size and deadline are checked as the body arrives; a read waits at most `limits.timeout_s`, so a trickling
    server ends the download by `deadline` plus one read timeout."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    response = _open(request, part, have, min(limits.timeout_s, max(deadline - time.monotonic(), 0.001)))
    with response:
        resume = response.status == 206
        if resume and _range_start(response.headers.get("Content-Range")) != have:
            part.unlink()
            raise _Transient("server answered a different byte range; restarting from byte 0")
        start = have if resume else 0
        length = response.headers.get("Content-Length", "")
        total = start + int(length) if length.isdigit() else None
        _check_size(url, total or 0, None, limits)
        size = start
        with open(part, "ab" if resume else "wb") as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5],
                disable=None, leave=False) as bar:
            while chunk := _read(response):
                size += len(chunk)
                _check_size(url, size, total, limits)
                out.write(chunk)
                bar.update(len(chunk))
                _check_deadline(url, size, limits, deadline)
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Transient(f"truncated transfer: {size} of {total} bytes")


def _open(request: urllib.request.Request, part: Path, have: int, timeout: float) -> http.client.HTTPResponse:
    """Send the request; 4xx other than 408/429 is an InputError, retryable failures are _Transient."""
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        problem = f"HTTP {err.code} {err.reason}"
        if err.code == 416 and have:
            part.unlink()
            raise _Transient(f"{problem} for the partial file; restarting from byte 0") from err
        if err.code in RETRY_STATUS or err.code >= 500:
            raise _Transient(problem) from err
        raise InputError(request.full_url, "source", problem, SOURCE_FIX) from err
    except (OSError, http.client.HTTPException) as err:
        raise _Transient(f"connection failed: {err}") from err


def _check_size(url: str, size: int, declared: int | None, limits: Limits) -> None:
    """Refuse a body (declared or received so far) above `limits.max_bytes`, or one running past its
    Content-Length."""
    if size > limits.max_bytes:
        raise InputError(url, "download.max_bytes", f"a body of at least {size} bytes is over the limit of "
                         f"{limits.max_bytes}", "raise download.max_bytes in the config if the file really is this "
                         "large, else check datasets.<name>.source")
    if declared is not None and size > declared:
        raise InputError(url, "Content-Length", f"the server sent more than the {declared} bytes it declared",
                         f"the server or a proxy on the way is broken: try again later or {SOURCE_FIX}")


def _check_deadline(url: str, received: int, limits: Limits, deadline: float, wait: float = 0.0) -> None:
    """Give up once `deadline` has passed, or would have after waiting `wait` seconds for a retry."""
    if time.monotonic() + wait >= deadline:
        raise InputError(url, "download.deadline_s", f"the download did not finish within {limits.deadline_s:g} s "
                         f"({received} bytes received)", "raise download.deadline_s in the config for a slow "
                         "server, or point datasets.<name>.source at a faster mirror")


def _read(response: http.client.HTTPResponse) -> bytes:
    """Next chunk of the body as it arrives (so a stall keeps what came); errors become _Transient."""
    try:
        return response.read1(CHUNK)
    except (OSError, http.client.HTTPException) as err:
        raise _Transient(f"transfer interrupted: {err!r}") from err


def _range_start(content_range: str | None) -> int | None:
    """First byte offset of a `Content-Range: bytes N-M/T` header."""
    match = re.match(r"bytes (\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def extract_archive(archive: Path, target_dir: Path, limits: Limits = Limits()) -> list[Path]:
    """Extract a tar(.gz/.bz2/.xz) or zip into `target_dir` after checking every member and the archive's expanded
    size and member count; returns the files. A failed extraction leaves nothing beside `target_dir`."""
    archive, target_dir = Path(archive), Path(target_dir)
    name = archive.name.lower()
    if not name.endswith((".zip", *TAR_SUFFIXES)):
        raise InputError(archive, "archive", "unknown archive type",
                         f"use one of .zip {' '.join(TAR_SUFFIXES)}, or give the file itself")
    remove_stale_temps([target_dir])
    try:
        with atomic_folder(target_dir) as staging:
            files = (_extract_zip if name.endswith(".zip") else _extract_tar)(archive, staging, limits)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise InputError(archive, "archive", f"cannot extract: {err}", "delete the file and download it again") from err
    return [target_dir / member for member in dict.fromkeys(files)]


def check_expansion(archive: Path, sizes: Iterable[int], limits: Limits) -> None:
    """Refuse an archive whose members (their sizes, read lazily) exceed the member count or expanded size allowed.

    The stdlib readers write no more than a member's recorded size, so the sum of sizes bounds what lands on disk.
    """
    count = total = 0
    for size in sizes:
        count, total = count + 1, total + size
        if count > limits.max_members:
            raise InputError(archive, "download.max_members", f"the archive has more than {limits.max_members} "
                             "members", "raise download.max_members in the config if the archive is genuine")
        if total > limits.max_extracted_bytes:
            raise InputError(archive, "download.max_extracted_bytes", f"the archive expands to more than "
                             f"{limits.max_extracted_bytes} bytes", "raise download.max_extracted_bytes in the "
                             "config if the archive is genuine (and the disk has room)")


def _extract_tar(archive: Path, staging: Path, limits: Limits) -> list[str]:
    """Check the expansion and all tar members, then extract them (with the stdlib 'data' filter as a second
    guard)."""
    with tarfile.open(archive, "r:*") as tar:
        check_expansion(archive, (member.size for member in tar), limits)
        members = tar.getmembers()
        for member in members:
            _check_tar_member(archive, member)
        try:
            tar.extractall(staging, filter="data")
        except tarfile.FilterError as err:
            raise InputError(archive, "archive member", str(err), UNSAFE_FIX) from err
    return [posixpath.normpath(m.name) for m in members if not m.isdir()]


def _extract_zip(archive: Path, staging: Path, limits: Limits) -> list[str]:
    """Check the expansion and all zip member names, then extract them."""
    with zipfile.ZipFile(archive) as zf:
        check_expansion(archive, (info.file_size for info in zf.infolist()), limits)
        names = zf.namelist()
        for member in names:
            _check_name(archive, member)
        zf.extractall(staging)
    return [posixpath.normpath(n) for n in names if not n.endswith("/")]


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse a tar member that is a device or fifo, escapes the target, or links outside it."""
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise InputError(archive, "archive member", f"'{member.name}' is a device, fifo or other special file",
                         UNSAFE_FIX)
    _check_name(archive, member.name)
    if member.issym() or member.islnk():
        base = posixpath.dirname(member.name) if member.issym() else ""
        if _is_absolute(member.linkname) or _escapes(posixpath.join(base, member.linkname)):
            raise InputError(archive, "archive member",
                             f"link '{member.name}' points outside the target folder ({member.linkname})", UNSAFE_FIX)


def _check_name(archive: Path, name: str) -> None:
    """Refuse a member path that is absolute or climbs above the archive root."""
    if _is_absolute(name):
        raise InputError(archive, "archive member", f"'{name}' is an absolute path", UNSAFE_FIX)
    if _escapes(name):
        raise InputError(archive, "archive member", f"'{name}' escapes the target folder with '..'", UNSAFE_FIX)


def outside_root(name: str) -> bool:
    """True when a path inside an archive is absolute or climbs above the archive root."""
    return _is_absolute(name) or _escapes(name)


def _is_absolute(name: str) -> bool:
    """True for POSIX or Windows absolute paths and drive-qualified paths."""
    return name.startswith(("/", "\\")) or bool(PureWindowsPath(name).drive)


def _escapes(name: str) -> bool:
    """True when a relative path's '..' components climb above its root."""
    depth = 0
    for part in name.replace("\\", "/").split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False

