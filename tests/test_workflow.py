"""The real Snakemake workflow, run end to end on the bundled default data and on edge cases."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sclabel import registry
from workflow_helpers import REPO_ROOT, absolute_paths, load_config, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.workflow
SPLITS = [f"cv{i}" for i in range(1, 6)]
METHODS = ["logreg", "mlp", "kmeans+mlp"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, Path]:
    """The default config run once, end to end (what it printed kept in ``snakemake.out``)."""
    workdir = tmp_path_factory.mktemp("default")
    configfile = write_config(workdir, load_config())
    result = snakemake(workdir, configfile)
    (workdir / "snakemake.out").write_text(result.stdout + result.stderr)
    return workdir, configfile


def test_a_clean_default_run_prints_no_python_warning(default_run):
    workdir, _ = default_run
    job_logs = sorted((workdir / "results/logs").rglob("*.log"))
    assert len(job_logs) >= 40
    for path in [workdir / "snakemake.out", *job_logs]:
        warnings = re.findall(r"^.*\b\w+Warning: .*$", path.read_text(), re.MULTILINE)
        assert not warnings, f"{path.relative_to(workdir)}: {warnings[:3]}"


def test_default_run_writes_the_output_contract(default_run):
    workdir, _ = default_run
    for method in METHODS:
        for split in SPLITS:
            predictions = pd.read_csv(workdir / f"results/predictions/{method}/{split}.tsv", sep="\t")
            assert list(predictions.columns)[:4] == ["cell_id", "true", "predicted", "confidence"]
            assert predictions["confidence"].between(0, 1).all()
    metrics = pd.read_csv(workdir / "results/benchmark/metrics.tsv", sep="\t")
    assert list(metrics.columns) == ["method", "split", "metric", "value"]
    assert set(metrics["metric"]) >= {"known_accuracy", "known_kappa", "known_macro_f1", "known_abstention"}
    assert sorted(metrics["split"].unique()) == SPLITS
    summary = pd.read_csv(workdir / "results/benchmark/summary.tsv", sep="\t").set_index(["method", "metric"])
    kappa = summary.loc[("logreg", "known_kappa")]
    assert 0.6 < kappa["mean"] < 1.0 and kappa["sd"] > 0  # real numbers with spread across folds
    assert kappa["mean"] == pytest.approx(metrics.query("metric == 'known_kappa' and method == 'logreg'")["value"].mean())
    for path in ("results/report/kappa.png", *(f"results/report/confusion/{m}.png" for m in METHODS)):
        assert (workdir / path).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("method", METHODS)
def test_every_cell_is_predicted_once_across_folds(default_run, method):
    workdir, _ = default_run
    predictions = pd.concat(pd.read_csv(workdir / f"results/predictions/{method}/{s}.tsv", sep="\t") for s in SPLITS)
    assert predictions["cell_id"].is_unique and len(predictions) == 700


def test_neural_methods_beat_the_majority_class(default_run):
    workdir, _ = default_run
    summary = pd.read_csv(workdir / "results/benchmark/summary.tsv", sep="\t").set_index(["method", "metric"])
    majority = 240 / 700  # Dendritic, the largest class of pbmc68k_reduced
    for method in ("mlp", "kmeans+mlp"):
        assert summary.loc[(method, "known_accuracy"), "mean"] > majority + 0.3
        assert summary.loc[(method, "known_kappa"), "mean"] > 0.6


def test_pretraining_is_per_split_and_loss_falls(default_run):
    workdir, _ = default_run
    for split in SPLITS:
        history = json.loads((workdir / f"results/pretrain/kmeans+mlp/{split}/history.json").read_text())
        assert history["loss"][-1] < history["loss"][0]
        test_cells = set(pd.read_csv(workdir / f"results/predictions/logreg/{split}.tsv", sep="\t")["cell_id"])
        pretrained_on = set(history["cells"]["pbmc68k"])
        assert len(pretrained_on) == 560 and pretrained_on.isdisjoint(test_cells)


@pytest.mark.parametrize("method", ["mlp", "kmeans+mlp"])
def test_rerunning_a_neural_job_gives_identical_predictions(default_run, method):
    workdir, configfile = default_run
    target = f"results/predictions/{method}/cv2.tsv"
    before = (workdir / target).read_bytes()
    log = workdir / f"results/logs/finetune/{method}/cv2.log"
    written = log.stat().st_mtime_ns
    snakemake(workdir, configfile, "--forcerun", target, "--allowed-rules", "finetune", "--", target)
    assert log.stat().st_mtime_ns > written  # the job really ran again
    assert (workdir / target).read_bytes() == before


def test_report_renders(default_run):
    workdir, configfile = default_run
    snakemake(workdir, configfile, "--report", str(workdir / "report.html"))
    html = (workdir / "report.html").read_text(errors="ignore")
    assert "summary.tsv" in html and "kappa.png" in html
    assert "run.html" in html and "summary.html" in html and "1. Run" in html and "2. Benchmark" in html
    assert "This run: datasets pbmc68k" in html  # the landing page is rendered from the config
    assert "Benchmark summary: mean" in html and "Methods: family, package" in html  # its two tables


def test_report_landing_page_in_a_headless_browser(default_run):
    """What a browser shows first: the run description, the summary and methods tables, and the categories holding
    the run and summary pages."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless browser (chromium) on this machine: apt-get install chromium")
    workdir, configfile = default_run
    report = workdir / "browser_report.html"
    snakemake(workdir, configfile, "--report", str(report))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S))
    assert "This run: datasets pbmc68k" in text and "1. Run" in text and "2. Benchmark" in text
    landing = text[text.index("This run: datasets pbmc68k"):]
    summary = landing[landing.index("Benchmark summary: mean ± sd"):landing.index("Methods: family, package")]
    methods = landing[landing.index("Methods: family, package"):]
    assert "known_kappa" in summary and all(method in summary for method in load_config()["methods"])
    assert "±" in summary and all(method in methods for method in load_config()["methods"])


def test_nothing_to_do_after_a_complete_run(default_run):
    assert planned_jobs(*default_run) == {}


REPORT = {"evaluate": 1, "report_figures": 1, "report_pages": 1, "all": 1}
# selections.tsv gathers what every retrained model chose on validation cells; the consensus recombines its members
AFTER_RETRAINING = {"selections": 1, "consensus": 5}
METHODS_TABLE = {"methods_table": 1}  # methods.tsv lists each method's configured settings
NEURAL_ALL = {"pretrain": 6, "finetune": 10, "train_final": 2}
BASELINE_ALL = {"baseline": 5, "baseline_final": 1}  # the final logreg model is the one top_genes ranks


@pytest.mark.parametrize(
    ("block", "key", "value", "expected"),
    [
        ("baseline", "logreg", {"C": 0.5}, {**BASELINE_ALL, "top_genes": 1, **REPORT, **METHODS_TABLE,
                                              **AFTER_RETRAINING}),
        ("finetune", "lr", 0.002, {"finetune": 10, "train_final": 2, "top_genes": 2, **REPORT, **METHODS_TABLE,
                                      **AFTER_RETRAINING}),
        ("pretrain", "seed", 3, {"pretrain": 6, "finetune": 5, "train_final": 1, "top_genes": 1, **REPORT,
                                  **AFTER_RETRAINING}),
        ("evaluate", "unassigned_threshold", 0.5, REPORT),
        # wilcoxon ranks the labelled cells of the combined data, whatever the split: 3 of the 4 rankings rerun
        ("split", "seed", 1, {"split": 1, **BASELINE_ALL, **NEURAL_ALL, "top_genes": 3, **REPORT,
                                 **AFTER_RETRAINING}),
        ("qc", "min_genes", 150, {"qc": 1, "harmonise": 1, "split": 1, **BASELINE_ALL, **NEURAL_ALL, "top_genes": 4,
                                   **REPORT, **AFTER_RETRAINING}),
    ],
)
def test_changing_one_stage_reruns_it_and_what_follows_only(default_run, tmp_path, block, key, value, expected):
    workdir, _ = default_run
    config = copy.deepcopy(load_config())
    config.setdefault(block, {})[key] = value
    changed = write_config(tmp_path, config)
    assert planned_jobs(workdir, changed) == expected


def test_bad_label_column_fails_with_one_line_and_no_output(tmp_path):
    config = load_config()
    config["datasets"]["pbmc68k"]["label_key"] = "no_such_column"
    configfile = write_config(tmp_path, config)
    result = snakemake(tmp_path, configfile, check=False)
    assert result.returncode != 0
    log = (tmp_path / "results/logs/download/pbmc68k.log").read_text().strip().splitlines()
    assert len(log) == 1 and "obs['no_such_column']: label column not found" in log[0] and "Fix:" in log[0]
    assert not (tmp_path / "results/data/raw/pbmc68k.h5ad").exists()
    assert not list((tmp_path / "results/data/raw").glob("*"))


def test_schema_rejects_unsafe_dataset_name(tmp_path):
    config = load_config()
    config["datasets"]["../evil"] = config["datasets"].pop("pbmc68k")
    result = snakemake(tmp_path, write_config(tmp_path, config), "--dry-run", check=False)
    assert result.returncode != 0 and "does not match" in result.stderr + result.stdout


def test_named_runs_keep_their_results_side_by_side(tmp_path):
    """Two configs with their own ``run`` names, run one after the other from one folder with a relative data path:
    each writes under runs/<run>/ and the second leaves the first's results as they were."""
    from sclabel.datasets import load_builtin

    (tmp_path / "data").mkdir()
    load_builtin("pbmc68k_reduced", "test").write_h5ad(tmp_path / "data" / "pbmc.h5ad")
    target = "results/splits/class_counts.tsv"
    written = {}
    for run, folds in (("two_folds", 2), ("three_folds", 3)):
        config = load_config()
        config["datasets"]["pbmc68k"]["source"] = "data/pbmc.h5ad"  # relative to where snakemake starts
        config.update(run=run, split={**config["split"], "n_folds": folds})
        configfile = write_config(tmp_path / "config", config, f"{run}.yaml")
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--configfile",
                   str(configfile), "--cores", "2", target]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        written[run] = {path: path.read_bytes() for path in (tmp_path / "runs" / run).rglob("results/**/*.tsv")}
    assert not (tmp_path / "results").exists()
    for run, folds in (("two_folds", 2), ("three_folds", 3)):
        counts = pd.read_csv(tmp_path / "runs" / run / target, sep="\t")
        assert set(counts["split"]) == {f"cv{i}" for i in range(1, folds + 1)}
        assert all(path.read_bytes() == content for path, content in written[run].items())


def test_rule_scripts_import_this_checkouts_sclabel_not_another_copy_on_the_path(tmp_path):
    """A stale sclabel earlier on the path (an install of another version, a PYTHONPATH entry) never shadows the
    workflow's own package in a rule's job."""
    shadow = tmp_path / "shadow" / "sclabel"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("a stale sclabel was imported")\n')
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(write_config(workdir, load_config())), "--cores", "1",
               "results/data/raw/pbmc68k.h5ad"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (workdir / "results/data/raw/pbmc68k.h5ad").stat().st_size > 0


def test_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_snakefmt_leaves_the_rules_unchanged():
    """The Snakefile and rule files are formatted as snakefmt writes them (settings in pyproject.toml)."""
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/rules"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"run snakefmt Snakefile workflow/rules:\n{result.stdout}{result.stderr}"


def test_pbmc_symphony_config(shared_data, tmp_path):
    config = absolute_paths(load_config("pbmc_symphony.yaml"))
    config["methods"] = ["logreg"]
    config["interpret"]["enabled"] = False
    configfile = write_config(tmp_path, config)
    snakemake(tmp_path, configfile)
    summary = pd.read_csv(tmp_path / "results/benchmark/summary.tsv", sep="\t").set_index(["method", "metric"])
    assert summary.loc[("logreg", "known_kappa"), "mean"] > 0.85
    assert summary.loc[("logreg", "known_kappa"), "n_splits"] == 5
    classes = pd.read_csv(tmp_path / "results/splits/class_counts.tsv", sep="\t")
    assert set(classes.loc[classes["fewer_cells_than_folds"], "cell_type"]) == {"HSC"}


def test_every_registered_baseline_is_implemented():
    from sclabel.baselines import BASELINES

    names = registry.names("baseline", "control", "embedding_baseline")
    assert sorted({registry.base_name(name) for name in names}) == sorted(BASELINES)
