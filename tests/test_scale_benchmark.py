"""benchmarks/scale.py end to end at a CI size: the seeded generator's file and the per-job scaling table.

The run resamples ``../shared/data``: without it the test is skipped, unless the ``CI`` environment variable is set,
where a missing folder is a failure (CI must run it).
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from workflow_helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "scale.py"
CELLS = 10_000
GENES = 2_000  # CI size: the 2,000 highest-rate genes of the ~20,000 (the full space runs in the benchmark itself)
METHODS = ["logreg", "mlp", "celltypist"]  # CI: kmeans+mlp's pretraining is left to the benchmark itself
EXPECTED_JOBS = {"download/scale", "qc/scale", "harmonise", "split", "baseline/logreg", "finetune/mlp",
                 "peers/celltypist", "report_figures"}

pytestmark = [pytest.mark.workflow, pytest.mark.shared_data]


def load_script() -> ModuleType:
    """benchmarks/scale.py imported as a module."""
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_folder(request: pytest.FixtureRequest) -> Path:
    """The shared real datasets; skipped without them, failed under CI."""
    if os.environ.get("CI"):
        from conftest import SHARED_DATA

        if not (SHARED_DATA / "README.md").is_file():
            pytest.fail(f"CI: real datasets not found at {SHARED_DATA}; the scale benchmark test must run")
        return SHARED_DATA
    return request.getfixturevalue("shared_data")


@pytest.fixture(scope="module")
def run(data_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One benchmark run at the CI size, its work folder kept."""
    workdir = tmp_path_factory.mktemp("scale")
    out = workdir / "table.tsv"
    env = {**os.environ, "SCLABEL_SHARED_DATA": str(data_folder)}
    result = subprocess.run([sys.executable, str(SCRIPT), "--cells", str(CELLS), "--genes", str(GENES),
                             "--methods", *METHODS, "--workdir", str(workdir), "--keep", "--out", str(out)],
                            capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return {"workdir": workdir, "stdout": result.stdout, "jobs": pd.read_csv(out, sep="\t"),
            "summary": pd.read_csv(out.with_suffix(".summary.tsv"), sep="\t"),
            "data": workdir / str(CELLS) / "data" / f"synthetic_{CELLS}.h5ad"}


def test_every_job_has_positive_finite_times_and_memory(run: dict) -> None:
    jobs = run["jobs"].set_index("job")
    assert EXPECTED_JOBS <= set(jobs.index)
    assert (jobs["cells"] == CELLS).all()
    for column in ("wall_s", "cpu_s", "max_rss_mb", "peak_rss_mb"):
        values = jobs.loc[sorted(EXPECTED_JOBS), column]
        assert np.isfinite(values).all() and (values > 0).all(), f"{column}: {values.to_dict()}"
    # the polled high-water mark of a job that runs for seconds: at least what Snakemake's samples saw
    assert jobs.loc["finetune/mlp", "hwm_rss_mb"] >= 0.9 * jobs.loc["finetune/mlp", "max_rss_mb"]
    assert (jobs["peak_rss_mb"] >= jobs[["max_rss_mb", "hwm_rss_mb"]].max(axis=1)).all()
    for job in EXPECTED_JOBS:
        assert f"| {job} |" in run["stdout"], f"{job} missing from the Markdown table"


def test_summary_relates_mlp_to_its_floor_and_to_celltypist(run: dict) -> None:
    summary = run["summary"].iloc[0]
    assert summary["cells"] == CELLS and summary["generated_genes"] == GENES
    assert summary["max_job_rss_mb"] == run["jobs"]["peak_rss_mb"].max()
    train_cells = summary["mlp_train_cells"]
    assert 0.5 * CELLS < train_cells < (2 / 3) * CELLS  # two of three batches, less the validation cells
    assert summary["mlp_epochs"] == 3
    for key in ("mlp_cells_per_s_epoch", "matmul_gflops_1thread", "mlp_floor_cells_per_s", "mlp_x_of_floor",
                "mlp_over_celltypist"):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    assert math.isclose(summary["mlp_x_of_floor"], summary["mlp_floor_cells_per_s"] / summary["mlp_cells_per_s_epoch"])
    assert math.isclose(summary["mlp_floor_cells_per_s"],
                        summary["matmul_gflops_1thread"] * 1e9 / (6 * summary["genes"] * 200), rel_tol=1e-6)


def test_generated_cells_are_integer_counts_with_the_real_type_proportions(run: dict, data_folder: Path) -> None:
    adata = ad.read_h5ad(run["data"])
    assert adata.shape == (CELLS, GENES)
    X = adata.X
    assert X.dtype == np.float32 and X.format == "csr"
    assert np.array_equal(X.data, np.round(X.data)) and X.data.min() >= 1
    assert adata.var_names.str.startswith("MT-").sum() >= 10 and adata.var_names.is_unique
    real = ad.read_h5ad(data_folder / "pbmc_zheng_sorted.h5ad").obs["cell_type"].value_counts(normalize=True)
    synthetic = adata.obs["cell_type"].value_counts(normalize=True)
    assert set(synthetic.index) == set(real.index)
    assert (synthetic.reindex(real.index) - real).abs().max() < 0.02
    assert sorted(adata.obs["batch"].unique()) == ["batch1", "batch2", "batch3"]
    assert adata.obs["batch"].value_counts().min() > CELLS / 4


def test_same_seed_same_counts_other_seed_other_counts(run: dict, data_folder: Path, tmp_path: Path) -> None:
    scale = load_script()
    again = scale.generate(tmp_path / "again.h5ad", CELLS, seed=0, n_genes=GENES, shared=data_folder)
    other = scale.generate(tmp_path / "other.h5ad", 2_500, seed=1, n_genes=GENES, shared=data_folder)
    first, second, third = (ad.read_h5ad(path) for path in (run["data"], again, other))
    for name in ("data", "indices", "indptr"):
        assert np.array_equal(getattr(first.X, name), getattr(second.X, name)), name
    pd.testing.assert_frame_equal(first.obs, second.obs)
    assert (first.X[:2_500] != third.X).nnz > 0
