"""Profiles, config replacement, container recipe and shell safety of the workflow."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from workflow_helpers import REPO_ROOT, load_config, snakemake, write_config

PROFILES = REPO_ROOT / "workflow" / "profiles"


def test_default_profile_is_loaded_on_its_own_and_caps_gpu_jobs(tmp_path):
    profile = yaml.safe_load((PROFILES / "default" / "config.yaml").read_text())
    assert profile["resources"] == {"gpu": 1} and profile["rerun-incomplete"] is True
    result = snakemake(tmp_path, write_config(tmp_path, load_config()), "--dry-run")
    assert "Using workflow specific profile" in result.stdout + result.stderr
    assert (REPO_ROOT / "profiles" / "default").resolve() == (PROFILES / "default").resolve()


def test_a_configfile_replaces_the_bundled_default_instead_of_merging_into_it(tmp_path):
    bundled = load_config()
    bundled["datasets"] = {"leaky_default": bundled["datasets"]["pbmc68k"]}
    write_config(tmp_path / "config", bundled)  # where the Snakefile's `configfile:` looks
    mine = load_config()
    mine["datasets"] = {"mine": mine["datasets"]["pbmc68k"]}
    result = snakemake(tmp_path, write_config(tmp_path, mine, "mine.yaml"), "--dry-run")
    assert "dataset=mine" in result.stdout and "leaky_default" not in result.stdout


@pytest.mark.workflow
def test_smoke_profile_shrinks_every_neural_stage_to_a_cpu_sized_run(tmp_path):
    config = load_config()
    config["methods"] = ["mlp", "kmeans+mlp"]
    config["split"]["n_folds"] = 2
    config["interpret"] = {"enabled": False}
    config["finetune"] = {"gpu": True, "batch_size": 256, "overrides": {"mlp": {"epochs": 40}}}
    targets = [f"results/predictions/{method}/cv1.tsv" for method in config["methods"]]  # one fold is enough
    snakemake(tmp_path, write_config(tmp_path, config), "--workflow-profile", str(PROFILES / "smoke"), *targets)
    for method in config["methods"]:
        settings = json.loads((tmp_path / f"results/models/{method}/cv1/model.json").read_text())["config"]["finetune"]
        assert (settings["epochs"], settings["batch_size"], settings["device"]) == (2, 32, "cpu")
    pretrain = json.loads((tmp_path / "results/pretrain/kmeans+mlp/cv1/history.json").read_text())
    assert set(pretrain["round"]) == {1} and len(pretrain["loss"]) == 2  # one K-means round of 2 epochs


def shell_blocks() -> list[str]:
    """The text of every ``shell:`` directive in the Snakefile and rule files."""
    text = "\n".join(path.read_text() for path in [REPO_ROOT / "Snakefile", *REPO_ROOT.glob("workflow/rules/*.smk")])
    return re.findall(r"^\s+shell:\s*\n((?:\s{8}.*\n)+)", text, re.MULTILINE)


def test_config_values_reach_shell_commands_only_through_quoted_params():
    rules = "\n".join(path.read_text() for path in REPO_ROOT.glob("workflow/rules/*.smk"))
    assert len(re.findall(r"^rule \w+:", rules, re.MULTILINE)) > 10
    for block in shell_blocks():
        for placeholder in re.findall(r"\{(params|wildcards|input|output|log)[^}]*\}", block):
            assert placeholder.endswith(":q}"), f"unquoted {placeholder} in a shell command"


def dockerfile_envs() -> dict[str, str]:
    """env file -> conda prefix hash, as the committed Dockerfile records them."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    return dict(re.findall(r"^#   source: (envs/\S+)\n#   prefix: /conda-envs/([0-9a-f]{32})$", text, re.MULTILINE))


def test_dockerfile_holds_every_env_file_at_its_current_content():
    recorded = dockerfile_envs()
    assert sorted(recorded) == sorted(f"envs/{path.name}" for path in (REPO_ROOT / "envs").glob("*.yaml"))
    for env, prefix in recorded.items():
        # Snakemake names a containerized env by the md5 of its file: a changed env needs a new Dockerfile
        assert hashlib.md5((REPO_ROOT / env).read_bytes()).hexdigest() == prefix, (
            f"{env} changed: regenerate with `python .ci/dockerfile.py > Dockerfile`")


MODULE_SNAKEFILE = """configfile: "config.yaml"


module sclabel:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from sclabel as sclabel_*
"""


@pytest.mark.workflow
def test_deploys_unchanged_as_a_module_of_another_workflow(tmp_path):
    write_config(tmp_path, load_config())
    (tmp_path / "Snakefile").write_text(MODULE_SNAKEFILE.format(snakefile=REPO_ROOT / "Snakefile"))
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "results/splits/splits.tsv"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rule sclabel_split:" in result.stdout + result.stderr  # the host's names for the module's rules
    splits = pd.read_csv(tmp_path / "results/splits/splits.tsv", sep="\t")
    assert len(splits) > 0 and {"train", "test"} <= set(splits.melt()["value"].astype(str))
