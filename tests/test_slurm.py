"""The SLURM profile (workflow/profiles/slurm): its sbatch submit/status helpers, and the default workflow run
through a real SLURM cluster with the cluster-generic executor.

The helper tests always run. The end-to-end test needs a SLURM controller (``bash .ci/start_slurm.sh`` starts a
one-node cluster on this machine); without one it is skipped, unless SCLABEL_REQUIRE_SLURM=1 (set by CI), which
turns a missing or broken cluster into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from workflow_helpers import REPO_ROOT, load_config, snakemake, write_config

PROFILE = REPO_ROOT / "workflow" / "profiles" / "slurm"
TORCH_RULES = ("pretrain", "finetune", "train_final")


def load_helper(name: str) -> ModuleType:
    """One of the profile's helper scripts, imported as a module."""
    spec = importlib.util.spec_from_file_location(name, PROFILE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


submit = load_helper("sbatch_submit")
status = load_helper("sbatch_status")


def properties(rule: str = "finetune", threads: int = 2, **resources) -> dict:
    """Job properties as Snakemake writes them into a jobscript."""
    return {"type": "single", "rule": rule, "local": False, "threads": threads, "jobid": 7,
            "resources": {"mem_mb": 4000, "runtime": 60, "tmpdir": "<TBD>", **resources}}


# ---- sbatch_submit.py --------------------------------------------------------------------------------------------

def test_gpu_job_asks_slurm_for_gres_and_passes_threads_memory_time():
    args = submit.sbatch_args(properties(gpu=1), Path("/w/results/logs/slurm"))
    assert args[:2] == ["sbatch", "--parsable"]
    assert {"--cpus-per-task=2", "--mem=4000", "--time=60", "--gres=gpu:1", "--job-name=sclabel-finetune",
            "--output=/w/results/logs/slurm/finetune-%j.log"} <= set(args)
    assert not any(a.startswith(("--partition", "--account", "--gpus")) for a in args)


def test_cpu_job_asks_for_no_gpu():
    args = submit.sbatch_args(properties(rule="baseline", threads=1, gpu=0, mem_mb=2000, runtime=30))
    assert {"--cpus-per-task=1", "--mem=2000", "--time=30"} <= set(args)
    assert not any("gres" in a or "gpu" in a for a in args)
    assert not any("gres" in a for a in submit.sbatch_args(properties(rule="qc", threads=1)))  # no gpu resource


def test_gpu_model_partition_account_and_rounding():
    args = submit.sbatch_args(properties(gpu=2, gpu_model="a100", slurm_partition="gpu", slurm_account="lab",
                                         mem_mb=1500.2, runtime=0.5))
    assert {"--gres=gpu:a100:2", "--partition=gpu", "--account=lab", "--mem=1501", "--time=1"} <= set(args)


def test_group_job_is_named_after_its_group():
    group = {"type": "group", "groupid": "torch", "threads": 1, "resources": {}}
    args = submit.sbatch_args(group, Path("logs"))
    assert "--job-name=sclabel-group-torch" in args and "--output=logs/group-torch-%j.log" in args
    assert not any(a.startswith(("--mem", "--time")) for a in args)


def test_properties_are_read_from_the_jobscript(tmp_path):
    jobscript = tmp_path / "snakejob.finetune.7.sh"
    jobscript.write_text(f"#!/bin/sh\n# properties = {json.dumps(properties(gpu=1))}\npython -m snakemake ...\n")
    assert submit.read_properties(jobscript)["resources"]["gpu"] == 1
    jobscript.write_text("#!/bin/sh\necho not a snakemake jobscript\n")
    with pytest.raises(ValueError, match="no '# properties = ' line"):
        submit.read_properties(jobscript)


@pytest.mark.parametrize(("stdout", "job_id"), [("42\n", "42"), ("42;cluster\n", "42"),
                                                ("sbatch: warning: x\n43\n", "43")])
def test_job_id_from_parsable_output(stdout, job_id):
    assert submit.parse_job_id(stdout) == job_id


def test_no_job_id_is_an_error():
    with pytest.raises(ValueError, match="no job id"):
        submit.parse_job_id("Submitted batch job\n")


# ---- sbatch_status.py --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "expected"), [
    *((s, "running") for s in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED")),
    ("COMPLETED", "success"),
    *((s, "failed") for s in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                              "BOOT_FAIL", "DEADLINE")),
    ("CANCELLED by 0", "failed"),  # sacct's spelling
    ("RUNNING+", "running"),
])
def test_slurm_states_map_to_snakemake_states(state, expected):
    assert status.snakemake_status(state) == expected


def test_unknown_state_is_an_error():
    with pytest.raises(ValueError, match="unknown SLURM job state"):
        status.snakemake_status("BLUE_MOON")


def test_state_from_scontrol_and_squeue_output():
    line = ("JobId=12 JobName=sclabel-split UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=1 Nice=0 "
            "Account=(null) QOS=(null) JobState=COMPLETED Reason=None Dependency=(null) ExitCode=0:0\n")
    assert status.state_from_scontrol(line) == "COMPLETED"
    assert status.state_from_scontrol("slurm_load_jobs error: Invalid job id specified") is None
    assert status.state_from_table("\n  PENDING \n") == "PENDING"
    assert status.state_from_table("") is None


def run_status(monkeypatch, capsys, answers: dict[str, tuple[str | None, str]]) -> tuple[str, str]:
    """sbatch_status.py's stdout and stderr when each SLURM command answers as given."""
    monkeypatch.setattr(status, "ask", lambda command: answers[command[0]])
    assert status.main(["12"]) == 0
    out, err = capsys.readouterr()
    return out, err


def test_status_falls_back_to_squeue(monkeypatch, capsys):
    out, _ = run_status(monkeypatch, capsys, {"scontrol": (None, "scontrol not found"), "squeue": ("RUNNING\n", ""),
                                              "sacct": (None, "unused")})
    assert out == "running\n"


def test_job_unknown_everywhere_is_failed_with_a_reason(monkeypatch, capsys):
    unknown = (None, "slurm_load_jobs error: Invalid job id specified")
    out, err = run_status(monkeypatch, capsys, {"scontrol": unknown, "squeue": unknown,
                                                "sacct": (None, "Slurm accounting storage is disabled")})
    assert out == "failed\n"
    assert "job 12 unknown to SLURM" in err and "accounting storage is disabled" in err


# ---- the profile -------------------------------------------------------------------------------------------------

def test_profile_names_executable_helpers_that_snakemake_makes_absolute():
    from snakemake.profiles import ProfileConfigFileParser

    with open(PROFILE / "config.yaml") as stream:
        settings = ProfileConfigFileParser().parse(stream)
    assert settings["executor"] == "cluster-generic"
    for key, helper in (("cluster-generic-submit-cmd", "sbatch_submit.py"),
                        ("cluster-generic-status-cmd", "sbatch_status.py")):
        assert settings[key] == str(PROFILE / helper)
        assert os.access(PROFILE / helper, os.X_OK), f"{helper} must be executable (git: chmod +x)"
    assert int(settings["retries"]) >= 1
    assert {f"{rule}:{res}={n} * attempt" for rule in TORCH_RULES for res, n in (("mem_mb", 4000), ("runtime", 60))
            } <= set(settings["set-resources"])


def test_dry_run_gives_torch_rules_more_memory_and_time(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_cluster_generic")
    result = snakemake(tmp_path, REPO_ROOT / "config" / "config.yaml", "--workflow-profile", str(PROFILE),
                       "--dry-run", "--", "results/models/mlp/final", "results/benchmark/summary.tsv")
    text = result.stdout + result.stderr
    jobs = {m.group(1): m.group(2) for m in re.finditer(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", text,
                                                          re.MULTILINE)}
    assert "mem_mb=4000" in jobs["train_final"] and "runtime=60" in jobs["train_final"]
    assert "mem_mb=2000" in jobs["baseline"] and "runtime=30" in jobs["baseline"]


# ---- end to end on a real SLURM cluster --------------------------------------------------------------------------

def slurm_problem() -> str | None:
    """Why the SLURM end-to-end test cannot run here, or None when it can."""
    if importlib.util.find_spec("snakemake_executor_plugin_cluster_generic") is None:
        return "snakemake-executor-plugin-cluster-generic is not installed (pip install -e .)"
    for command in ("sbatch", "scontrol", "sinfo"):
        if shutil.which(command) is None:
            return f"{command} not found: no SLURM client here (bash .ci/start_slurm.sh installs and starts one)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "scontrol ping got no answer in 20 s: no SLURM controller (bash .ci/start_slurm.sh)"
    if "is UP" not in ping.stdout:
        said = " ".join((ping.stdout + ping.stderr).replace("*", " ").split())
        return f"no SLURM controller answers scontrol ping ({said}) (bash .ci/start_slurm.sh)"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    """A reachable SLURM controller; skips without one, fails instead when SCLABEL_REQUIRE_SLURM=1."""
    problem = slurm_problem()
    if problem and os.environ.get("SCLABEL_REQUIRE_SLURM") == "1":
        pytest.fail(f"SCLABEL_REQUIRE_SLURM=1 but {problem}")
    if problem:
        pytest.skip(problem)


def slurm_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` fields of a job."""
    line = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                          check=True).stdout
    return dict(field.split("=", 1) for field in line.split() if "=" in field)


@pytest.mark.slurm
@pytest.mark.workflow
def test_default_workflow_runs_through_slurm(slurm, tmp_path):
    """The default config's chain from download to report figures (logreg and kmeans+mlp: a baseline, pretraining,
    fine-tuning and a final model), every job submitted with sbatch by the profile's helpers and polled through
    scontrol.

    The config is the repository's with 2 folds instead of 5, the smoke sizes (each neural stage at most 2 epochs:
    what SLURM sees of a job does not depend on its length) and two methods; the status polling interval is
    shortened from 10 s to 2 s. 14 SLURM jobs, 2 at a time.
    """
    methods = ["logreg", "kmeans+mlp"]
    config = load_config()
    config.update(smoke=True, split={**config["split"], "n_folds": 2}, methods=methods)
    outputs = ("results/benchmark/summary.tsv", "results/benchmark/metrics.tsv", "results/report/kappa.png",
               "results/report/per_class_f1.png", "results/models/kmeans+mlp/final")
    result = snakemake(tmp_path, write_config(tmp_path, config), "--workflow-profile", str(PROFILE), "--jobs", "2",
                       "--seconds-between-status-checks", "2", *outputs)
    text = result.stdout + result.stderr
    for output in outputs[:-1]:
        assert (tmp_path / output).stat().st_size > 0, output
    assert (tmp_path / outputs[-1] / "annotator.json").stat().st_size > 0

    # every job but `all` went through sbatch: one slurm log per job, named <rule>-<slurm job id>.log
    submitted = re.findall(r"with external jobid '(\d+)'", text)
    logs = {m.group(2): m.group(1) for p in (tmp_path / "results/logs/slurm").iterdir()
            if (m := re.fullmatch(r"(\w+)-(\d+)\.log", p.name))}
    assert sorted(logs) == sorted(submitted)
    assert sorted(logs.values()) == sorted(re.findall(r"^rule (\w+):", text, re.MULTILINE))
    assert {"download", "qc", "split", "baseline", *TORCH_RULES, "evaluate", "report_figures"} <= set(logs.values())
    assert not re.findall(r"^localrule (\w+):", text, re.MULTILINE)

    # SLURM ran each job with the profile's resources and saw it finish
    for job_id, rule in logs.items():
        job = slurm_job(job_id)
        torch = rule in TORCH_RULES
        assert job["JobName"] == f"sclabel-{rule}" and job["JobState"] == "COMPLETED", job
        assert job["MinMemoryNode"] == ("4000M" if torch else "2000M"), job
        assert job["TimeLimit"] == ("01:00:00" if torch else "00:30:00"), job
        assert "gres/gpu" not in job.get("TRES", "")  # the default config trains on the CPU
        assert f"localrule {rule}:" in (tmp_path / f"results/logs/slurm/{rule}-{job_id}.log").read_text()


@pytest.mark.slurm
def test_gpu_job_arguments_are_accepted_by_slurm(slurm, tmp_path):
    """sbatch accepts what the submit helper asks for a GPU job (test-only: nothing is run)."""
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout
    if "gpu" not in gres:
        pytest.skip(f"no node of this cluster has gpu gres (sinfo %G: {gres.strip() or 'none'})")
    args = submit.sbatch_args(properties(threads=1, gpu=1, mem_mb=1000, runtime=5), tmp_path)
    result = subprocess.run([*args, "--test-only", "--wrap", "true"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "to start at" in result.stderr, result.stderr
    cpu_args = submit.sbatch_args(properties(threads=1, gpu=0, mem_mb=1000, runtime=5), tmp_path)
    ask_too_many = [*cpu_args, "--gres=gpu:99", "--test-only", "--wrap", "true"]
    assert subprocess.run(ask_too_many, capture_output=True, text=True, timeout=60).returncode != 0
