"""The workflow survives a killed job, parallel splits and reruns: real Snakemake runs on the bundled data."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from workflow_helpers import SNAKEFILE, load_config, snakemake, write_config

pytestmark = pytest.mark.workflow
TARGET = "results/benchmark/metrics.tsv"
SPLITS = ["cv1", "cv2"]


def training_config() -> dict:
    """The default data with one neural method trained long enough (no early stop) to be killed mid-training."""
    config = load_config()
    config["methods"] = ["mlp"]
    config["split"]["n_folds"] = len(SPLITS)
    config["finetune"] = {"epochs": 30, "patience": 30}
    config["interpret"] = {"enabled": False}
    return config


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory) -> Path:
    """One uninterrupted run, one job at a time."""
    workdir = tmp_path_factory.mktemp("sequential")
    snakemake(workdir, write_config(workdir, training_config()), "--cores", "1", TARGET)
    return workdir


def finetune_process(snakemake_process: subprocess.Popen) -> psutil.Process | None:
    """The running fine-tuning script among the Snakemake process's descendants."""
    for child in psutil.Process(snakemake_process.pid).children(recursive=True):
        try:
            if any(part.endswith("finetune.py") for part in child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def kill_first_finetune_after_a_checkpoint(workdir: Path, configfile: Path) -> int:
    """Start the workflow, SIGKILL the fine-tuning job once it has saved an epoch; the workflow's exit code."""
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
               "--configfile", str(configfile), "--cores", "1", TARGET]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if list(workdir.glob("results/checkpoints/mlp/*/*/last.pt")):
                job = finetune_process(process)
                if job is not None:
                    job.send_signal(signal.SIGKILL)
                    return process.wait(timeout=120)
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
    raise AssertionError("the fine-tuning job finished or never started before it could be killed")


def test_killed_training_job_resumes_from_its_checkpoint_and_ends_identically(sequential_run, tmp_path):
    configfile = write_config(tmp_path, training_config())
    assert kill_first_finetune_after_a_checkpoint(tmp_path, configfile) != 0
    checkpoints = list(tmp_path.glob("results/checkpoints/mlp/*/*/last.pt"))
    assert len(checkpoints) == 1 and checkpoints[0].parts[-3] in SPLITS  # per-split folder, kept after the failure
    killed_split = checkpoints[0].parts[-3]
    assert not (tmp_path / f"results/predictions/mlp/{killed_split}.tsv").exists()

    snakemake(tmp_path, configfile, "--cores", "1", TARGET)
    log = (tmp_path / f"results/logs/finetune/mlp/{killed_split}.log").read_text()
    start_epoch = int(re.findall(r"training from epoch (\d+)", log)[-1])
    assert start_epoch > 1  # resumed, not restarted
    assert not (tmp_path / "results/checkpoints/mlp" / killed_split).exists()  # cleaned up after success
    assert (tmp_path / TARGET).read_bytes() == (sequential_run / TARGET).read_bytes()


def test_same_config_twice_with_splits_in_parallel_gives_identical_metrics(sequential_run, tmp_path):
    result = snakemake(tmp_path, write_config(tmp_path, training_config()), "--cores", "2", TARGET)
    started = re.findall(r"rule finetune:.*?wildcards: method=mlp, split=(cv\d)", result.stdout + result.stderr,
                         re.DOTALL)
    assert sorted(started) == SPLITS
    for split in SPLITS:
        parallel = (tmp_path / f"results/predictions/mlp/{split}.tsv").read_bytes()
        assert parallel == (sequential_run / f"results/predictions/mlp/{split}.tsv").read_bytes()
    assert (tmp_path / TARGET).read_bytes() == (sequential_run / TARGET).read_bytes()


def planned_job_blocks(workdir: Path, configfile: Path) -> list[dict[str, str]]:
    """Every job of a dry run as {field: value} (rule, input, output, log, benchmark, wildcards)."""
    result = snakemake(workdir, configfile, "--dry-run", "--forceall")
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout)
    jobs = []
    for block in blocks:
        header = re.match(r"(?:local)?rule (\w+):", block)
        if header:
            fields = dict(re.findall(r"^\s{4}(\w+): (.*)$", block, re.MULTILINE))
            jobs.append({"rule": header.group(1), **fields})
    return jobs


def test_jobs_of_different_splits_never_share_or_read_each_others_files(tmp_path):
    config = load_config()
    config["methods"] = ["logreg", "mlp", "kmeans+mlp"]
    jobs = planned_job_blocks(tmp_path, write_config(tmp_path, config))
    written: dict[str, str] = {}
    for job in jobs:
        split = re.search(r"split=(\w+)", job.get("wildcards", ""))
        paths = [p for key in ("output", "log", "benchmark") for p in job.get(key, "").split(", ") if p]
        for path in paths:
            assert path not in written, f"{path} written by two jobs"
            written[path] = job["rule"]
        if split is None:
            continue
        others = [f"/cv{i}" for i in range(1, 6) if f"cv{i}" != split.group(1)]
        for path in paths + [p for p in job.get("input", "").split(", ") if p]:
            assert split.group(1) in path or "splits" in path or "combined" in path, (job["rule"], path)
            assert not any(other in path for other in others), (job["rule"], path)
    split_jobs = [job for job in jobs if "split=" in job.get("wildcards", "")]
    assert {job["rule"] for job in split_jobs} >= {"baseline", "finetune", "pretrain"}


def log_span(path: Path) -> tuple[datetime, datetime]:
    """Times of a job log's first and last records."""
    stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", path.read_text(), re.MULTILINE)
    return datetime.strptime(stamps[0], "%Y-%m-%d %H:%M:%S,%f"), datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f")


def test_gpu_jobs_run_one_at_a_time_and_fall_back_to_cpu_with_a_warning(tmp_path):
    config = training_config()
    config["finetune"]["gpu"] = True  # resources gpu=1; the default profile allows one such job at a time
    snakemake(tmp_path, write_config(tmp_path, config), "--cores", "2", TARGET)
    logs = [tmp_path / f"results/logs/finetune/mlp/{split}.log" for split in SPLITS]
    for log in logs:
        assert "CUDA is not available; using cpu" in log.read_text()
    (_, first_end), (second_start, _) = sorted(log_span(log) for log in logs)
    assert second_start >= first_end
