"""The data path streams: peak memory of download + QC + harmonise does not grow with the number of cells."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.store import RowWriter

REPO = Path(__file__).resolve().parents[1]
N_GENES = 5000
GENES_PER_CELL = 300
CHUNK_CELLS = 2000

# Runs the three stages on one raw file in a fresh process and prints its own peak RSS (KiB on Linux).
STAGES = """
import json, resource, sys
from pathlib import Path
from sclabel.datasets import download_stage
from sclabel.qc import harmonise_stage, qc_stage
source, out = sys.argv[1], Path(sys.argv[2])
spec = {"source": source, "label_key": "cell_type", "values": "counts"}
qc = {"min_genes": 50, "max_pct_mito": 20.0, "mito_prefix": "MT-", "min_cells": 3, "target_sum": 1e4}
harmonise = {"gene_join": "inner", "case": "keep", "renormalise": True}
chunk = int(sys.argv[3])
download_stage("syn", spec, {"retries": 0, "timeout_s": 5.0}, str(out / "raw.h5ad"), str(out / "dl"), chunk)
qc_stage(str(out / "raw.h5ad"), qc, str(out / "qc.h5ad"), str(out / "qc.tsv"), chunk)
harmonise_stage([str(out / "qc.h5ad")], ["syn"], harmonise, 1e4, str(out / "combined.h5ad"),
                str(out / "genes.tsv"), chunk)
print(json.dumps({"max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def synthetic_counts(path: Path, n_cells: int, seed: int = 0) -> None:
    """Poisson-like counts, ~GENES_PER_CELL genes per cell (a few mitochondrial), written chunk by chunk."""
    rng = np.random.default_rng(seed)
    genes = [f"MT-{j}" if j < 10 else f"G{j}" for j in range(N_GENES)]
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], n_cells))},
                       index=[f"cell{i}" for i in range(n_cells)])
    with RowWriter(path, obs, pd.DataFrame(index=genes)) as writer:
        for start in range(0, n_cells, CHUNK_CELLS):
            rows = min(CHUNK_CELLS, n_cells - start)
            cols = np.sort(rng.integers(0, N_GENES, size=(rows, GENES_PER_CELL)), axis=1)
            fresh = np.ones_like(cols, dtype=bool)
            fresh[:, 1:] = cols[:, 1:] != cols[:, :-1]
            indptr = np.concatenate([[0], np.cumsum(fresh.sum(axis=1))])
            values = rng.poisson(1.5, size=int(indptr[-1])).astype(np.float32) + 1
            writer.append(sp.csr_matrix((values, cols[fresh], indptr), shape=(rows, N_GENES)))


def peak_rss_mib(tmp_path: Path, n_cells: int) -> float:
    """Peak RSS of a fresh process running download, QC and harmonise on ``n_cells`` synthetic cells."""
    folder = tmp_path / str(n_cells)
    folder.mkdir()
    synthetic_counts(folder / "source.h5ad", n_cells)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "scripts"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", STAGES, str(folder / "source.h5ad"), str(folder), str(CHUNK_CELLS)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(folder / "qc.tsv", sep="\t").set_index("step")
    assert table.loc["max_pct_mito", "remaining"] > 0.9 * n_cells  # nearly every cell went through every stage
    return json.loads(done.stdout.strip().splitlines()[-1])["max_rss_kib"] / 1024


def test_data_path_peak_memory_is_flat_in_the_cell_count(tmp_path):
    small = peak_rss_mib(tmp_path, 20_000)
    large = peak_rss_mib(tmp_path, 80_000)  # 4x the cells: ~24M non-zeros, ~190 MiB as float32 + indices
    assert large < 1.15 * small + 40, f"peak RSS grew from {small:.0f} MiB to {large:.0f} MiB with 4x the cells"
