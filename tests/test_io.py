"""Atomic outputs: permissions as the umask says, and temporaries of killed writes removed at the job's next start."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from sclabel import fetch, io, runner

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def umask():
    """Set the process umask for one test (pytest runs tests in one thread), restoring it afterwards."""
    before = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(before)


def mode(path: Path) -> int:
    """Permission bits of a path."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                                  (0o002, 0o664, 0o775)], ids=["022", "077", "002"])
def test_atomic_outputs_get_the_modes_the_umask_gives(tmp_path, umask, mask, file_mode, folder_mode):
    umask(mask)
    io.write_tsv(pd.DataFrame({"cell_id": ["a"], "predicted": ["T"]}), tmp_path / "predictions" / "split.tsv")
    with io.atomic_folder(tmp_path / "model") as folder:
        (folder / "weights.txt").write_text("1")
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/x.txt", "x")
    fetch.extract_archive(archive, tmp_path / "a.zip.d")
    assert mode(tmp_path / "predictions" / "split.tsv") == file_mode
    assert mode(tmp_path / "model") == folder_mode
    assert mode(tmp_path / "model" / "weights.txt") == file_mode
    assert mode(tmp_path / "a.zip.d") == folder_mode
    assert mode(tmp_path / "a.zip.d" / "data" / "x.txt") == file_mode


@pytest.mark.parametrize("from_proc", [True, False])
def test_umask_is_read_without_changing_it(tmp_path, umask, monkeypatch, from_proc):
    umask(0o027)
    if not from_proc:  # no /proc (macOS): set-and-restore fallback
        monkeypatch.setattr(io, "PROC_STATUS", tmp_path / "absent")
    assert io.umask() == 0o027
    assert os.umask(0o027) == 0o027


def killed_write(dest: Path) -> None:
    """Run an atomic write of ``dest`` in a child process that SIGKILLs itself before the rename."""
    code = ("import os, signal, sys; from sclabel.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half a table')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    child = subprocess.run([sys.executable, "-c", code, str(dest)], env={**os.environ, "PYTHONPATH": str(SCRIPTS)},
                           check=False)
    assert child.returncode == -signal.SIGKILL


def test_temp_file_of_a_killed_write_is_removed_when_the_job_starts_again(tmp_path, monkeypatch):
    dest = tmp_path / "predictions" / "logreg" / "cv1.tsv"
    killed_write(dest)
    stale = io.stale_temps(dest)
    assert len(stale) == 1 and stale[0].name.startswith(".cv1.") and not dest.exists()
    others = [dest.with_name("cv2.tsv"), dest.with_name(".cv1.notes"), dest.with_name(".cv1.x.tmp.png")]
    for path in others:
        path.touch()
    others.append(io.temp_sibling(dest.with_name("cv2.tsv")))  # another job's write in progress
    seen = []
    monkeypatch.setattr(runner, "configure_logging", lambda log_file: None)
    runner.run_step(SimpleNamespace(output=[str(dest), str(tmp_path / "model")], log=[], rule="baseline"),
                    lambda sm: seen.append(sorted(p.name for p in dest.parent.iterdir())))
    assert seen == [sorted(path.name for path in others)]  # the step started after the cleaning


def test_stale_temp_folder_is_removed_and_nothing_else(tmp_path):
    dest = tmp_path / "model"
    stale = io.temp_sibling(dest, folder=True)
    (stale / "half.pt").write_bytes(b"x")
    keep = tmp_path / "model.tmp"
    keep.touch()
    assert io.remove_stale_temps([dest, tmp_path / "absent" / "x.tsv"]) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tmp"]
