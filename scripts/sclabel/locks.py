"""A lock file held by one training job: a second job for the same folder refuses while the first one runs.

After ``kill -9`` of Snakemake its jobs keep running; the rerun the README prescribes would then train the same split
twice at once, both writing one checkpoint. The lock (``<folder>/lock``, created with ``O_EXCL``) records the holder's
pid, host and start mark (boot id and start tick from ``/proc``, so a recycled pid is not taken for the holder). A
lock whose holder is gone from this host is stale and taken over with a warning; one held on another host cannot be
checked from here and is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from sclabel.errors import InputError

log = logging.getLogger(__name__)
LOCK_NAME = "lock"
ATTEMPTS = 3  # creations tried: a stale lock is removed before the next


def start_mark(pid: int) -> str:
    """Boot id and start tick of process ``pid`` ('' where /proc cannot tell: another OS, or the process is gone)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{boot}/{stat.rsplit(')', 1)[1].split()[19]}"  # field 22 (starttime), counted after the command name


def holder(lock: Path) -> dict | None:
    """The lock file's holder (pid, host, start mark); None when it is absent, empty or unreadable."""
    try:
        record = json.loads(Path(lock).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def running(record: dict) -> bool:
    """Whether a holder on this host is still the process that wrote the lock (not this one: it holds no lock yet)."""
    pid = record["pid"]
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return not record.get("started") or start_mark(pid) == record["started"]


def _refuse_unless_stale(lock: Path, record: dict | None) -> None:
    """Raise the one-line error when ``record``'s holder runs or cannot be checked from this host."""
    if record is None:
        return
    pid, host = record["pid"], record.get("host", "?")
    if host != socket.gethostname():
        raise InputError(lock, "lock", f"another training job (pid {pid} on host {host}) holds this checkpoint "
                         "folder", f"wait for it to finish, or kill {pid} on {host}; if it is gone, delete {lock}")
    if running(record):
        raise InputError(lock, "lock", f"another training job (pid {pid}) is training this checkpoint folder",
                         f"wait for it to finish or stop it (kill {pid}), then rerun")


def _create(lock: Path, record: dict) -> bool:
    """Create ``lock`` holding ``record`` unless it exists (``O_EXCL``); whether it was created."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(record))
    return True


@contextlib.contextmanager
def job_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``<folder>/lock`` for the block: refuse (one line) while another live job holds it, take over a stale
    one with a warning, release on exit (if the block removed the folder, nothing is left to release)."""
    lock = Path(folder) / LOCK_NAME
    lock.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": start_mark(os.getpid())}
    for _ in range(ATTEMPTS):
        if _create(lock, record):
            break
        stale = holder(lock)
        _refuse_unless_stale(lock, stale)
        log.warning("%s: taking over a stale lock (%s); its job is gone", lock,
                    f"pid {stale['pid']}" if stale else "empty or unreadable")
        lock.unlink(missing_ok=True)
    else:
        raise InputError(lock, "lock", f"could not be created in {ATTEMPTS} attempts: jobs keep racing for it",
                         "run one training job per checkpoint folder")
    try:
        yield lock
    finally:
        if holder(lock) == record:
            lock.unlink()
