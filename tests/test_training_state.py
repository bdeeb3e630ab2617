"""Resumable training state: keyed by the content it was computed from, and held by one job at a time."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest
import torch

from sclabel import locks, splits, training
from sclabel.errors import InputError
from sclabel.model import CellTypeAnnotator
from sclabel.nn.encoders import build_encoder
from sclabel.store import write_store

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SETTINGS = {"epochs": 3, "patience": 3, "batch_size": 64, "seed": 0, "device": "cpu", "head_hidden_dims": [32],
            "dropout": 0.1, "rejection": "max_softmax"}
TRAIN = CellTypeAnnotator.train


class Interrupted(Exception):
    """Raised from the epoch callback to stop a run the way a crash would."""


@pytest.fixture(scope="module")
def inputs(shared_data, tmp_path_factory) -> dict[str, Path]:
    """600 Symphony PBMCs as a cell store, their splits, a pretrained-encoder file, and a changed copy of each."""
    folder = tmp_path_factory.mktemp("state")
    adata = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")[::2].copy()
    paths = {name: folder / name for name in ("combined.h5ad", "changed.h5ad", "splits.tsv", "encoder.pt",
                                              "other_encoder.pt")}
    write_store(adata, paths["combined.h5ad"])
    changed = adata.copy()
    changed.X.data[0] += 1.0  # one value of one cell: a harmonise or QC setting that changed the matrix
    write_store(changed, paths["changed.h5ad"])
    splits.split_stage(str(paths["combined.h5ad"]), {"scheme": "cv", "n_folds": 2, "val_fraction": 0.2, "seed": 0},
                       str(paths["splits.tsv"]), str(folder / "class_counts.tsv"))
    for name, seed in (("encoder.pt", 0), ("other_encoder.pt", 1)):
        torch.manual_seed(seed)
        training.save_encoder(build_encoder("mlp", adata.n_vars, {}), "mlp", list(adata.var_names), paths[name])
    return paths


def run_stage(work: Path, inputs: dict[str, Path], tag: str, monkeypatch, stop_after: int | None = None) -> list[int]:
    """Fine-tune kmeans+mlp on cv1 from ``work``'s combined.h5ad and encoder.pt; the epochs it ran (each one seen
    by the callback). ``stop_after``: raise ``Interrupted`` after that epoch, as a killed job."""
    seen: list[int] = []

    def on_epoch_end(epoch: int, history: dict) -> None:
        seen.append(epoch)
        assert locks.holder(work / "checkpoints" / locks.LOCK_NAME)["pid"] > 0  # the job holds its lock
        if epoch == stop_after:
            raise Interrupted(seen)

    monkeypatch.setattr(CellTypeAnnotator, "train",
                        lambda self, *args, **kwargs: TRAIN(self, *args, on_epoch_end=on_epoch_end, **kwargs))
    training.finetune_stage("kmeans+mlp", {}, SETTINGS, {"normalisation": "log1p_cp10k"},
                            str(work / "combined.h5ad"), str(inputs["splits.tsv"]), "cv1", str(work / "encoder.pt"),
                            str(work / "checkpoints"), str(work / f"model_{tag}"), str(work / f"{tag}.tsv"),
                            {"chunk_cells": 200, "buffer_cells": 300}, str(work / f"val_{tag}.tsv"))
    return seen


def test_rerun_after_data_or_encoder_content_changed_starts_at_epoch_1_and_unchanged_one_resumes_identically(
        inputs, tmp_path, monkeypatch):
    def use(data: str, encoder: str) -> None:
        """Put these files at the paths the job reads, as an upstream rule rewriting them would."""
        shutil.copyfile(inputs[data], tmp_path / "combined.h5ad")
        shutil.copyfile(inputs[encoder], tmp_path / "encoder.pt")

    use("combined.h5ad", "encoder.pt")
    assert run_stage(tmp_path, inputs, "uninterrupted", monkeypatch) == [1, 2, 3]
    with pytest.raises(Interrupted) as stopped:
        run_stage(tmp_path, inputs, "killed", monkeypatch, stop_after=2)
    assert stopped.value.args[0] == [1, 2]
    for data, encoder in (("combined.h5ad", "other_encoder.pt"), ("changed.h5ad", "encoder.pt")):
        use(data, encoder)  # same paths, other content: the killed job's checkpoint must not be resumed
        with pytest.raises(Interrupted) as stopped:
            run_stage(tmp_path, inputs, "changed", monkeypatch, stop_after=1)
        assert stopped.value.args[0] == [1], f"{data} + {encoder}: resumed a checkpoint of other inputs"
    assert not (tmp_path / "checkpoints" / locks.LOCK_NAME).exists()  # released by the failed jobs
    use("combined.h5ad", "encoder.pt")
    assert run_stage(tmp_path, inputs, "resumed", monkeypatch) == [3]  # the unchanged rerun resumes after epoch 2
    for kind in ("", "val_"):
        assert (tmp_path / f"{kind}resumed.tsv").read_bytes() == (tmp_path / f"{kind}uninterrupted.tsv").read_bytes()
    assert not (tmp_path / "checkpoints").exists()  # removed (lock included) after success


HOLD = ("import sys; from sclabel import locks\n"
        "with locks.job_lock(sys.argv[1]):\n"
        "    print('held', flush=True); sys.stdin.read()\n")


def test_second_training_job_refuses_while_the_first_lives_and_takes_over_a_dead_ones_lock(tmp_path, caplog):
    folder = tmp_path / "checkpoints" / "mlp" / "cv1"
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SCRIPTS)})
    try:
        assert first.stdout.readline() == "held\n"
        with pytest.raises(InputError) as err:
            with locks.job_lock(folder):
                pass
        message = str(err.value)
        assert message.startswith(f"{folder / 'lock'}: lock:") and f"pid {first.pid}" in message
        assert f"kill {first.pid}" in message and "\n" not in message
        first.kill()  # SIGKILL: no finally runs, the lock file stays behind
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    assert locks.holder(folder / "lock")["pid"] == first.pid
    with locks.job_lock(folder):
        assert locks.holder(folder / "lock")["pid"] != first.pid
    assert f"{folder / 'lock'}" in caplog.text and f"pid {first.pid}" in caplog.text and "stale" in caplog.text
    assert not (folder / "lock").exists()  # released on exit


def test_lock_of_another_host_is_refused_and_one_of_a_recycled_pid_is_taken_over(tmp_path, caplog):
    lock = tmp_path / locks.LOCK_NAME
    lock.write_text(json.dumps({"pid": 12345, "host": "node-that-is-not-this-one", "started": ""}))
    with pytest.raises(InputError, match=r"pid 12345 on host node-that-is-not-this-one.*delete .*lock$"):
        with locks.job_lock(tmp_path):
            pass
    # a live process (the test runner's parent) that started after the lock was written: its pid was recycled
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "other-boot/1"}))
    with locks.job_lock(tmp_path):
        assert locks.holder(lock)["pid"] == os.getpid()
    assert f"pid {os.getppid()}" in caplog.text and not lock.exists()
