"""Run the workflow on N synthetic PBMCs x ~20,000 genes for growing N and report how each job scales.

Usage: python benchmarks/scale.py --cells 10000 100000 1000000 [--seed 0] [--workdir DIR] [--keep] [--low-disk]
                                  [--out T.tsv] [--epochs 3] [--methods logreg mlp kmeans+mlp celltypist] [--genes 20000]

Cells are resampled from the shared real data (``../shared/data``, or ``$SCLABEL_SHARED_DATA``): each cell copies
the type of a random FACS-sorted cell of ``pbmc_zheng_sorted.h5ad`` (so the real type proportions) and draws Poisson
counts from a mix of that cell's and its type's normalised profile, donor A's (``pbmc_donorA_unlabelled.h5ad``) mean
profile over the genes Zheng lacks, and low-rate genes (named after gene-set symbols) whose rates are drawn from
donor A's gene-level rates; library sizes follow the source cell's with log-normal jitter, scaled so cells average
~1,500 non-zeros over 20,000 genes. The generator is seeded per block of cells (same N and seed: identical counts)
and streams the h5ad to disk in chunks, so its memory does not grow with N.

Each size runs one held-out batch (``split.scheme: lodo``) with capped epochs and one thread per job, in
``DIR/<N>/``, which is deleted once measured unless ``--keep``. The report, from Snakemake's benchmark files: per job
(rule, method) wall s, CPU s and peak RSS per size and the growth exponent between consecutive sizes
(log ratio / log size ratio); the largest job RSS per size. Snakemake samples a job every second for 30 s, then
every 30 s, so its CPU s of a long job miss up to 30 s; the peak RSS is the larger of its samples and the kernel's
high-water mark of the job's processes, polled here every 0.5 s. Then mlp fine-tuning cells/s per epoch next to
the dense-FLOP floor (6 x genes x first-layer width FLOP per cell per epoch at the float32 matmul rate measured here
with 1 thread), and CellTypist's (mini-batch) fit + predict time next to mlp's. Markdown on stdout; ``--out`` writes the per-job rows as
TSV and the summary beside it (``<out>.summary.tsv``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import psutil
import scipy.sparse as sp
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from sclabel.store import CellStore, RowWriter  # noqa: E402

SHARED_DATA = Path(os.environ.get("SCLABEL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
REFERENCE = "pbmc_zheng_sorted.h5ad"
BACKGROUND = "pbmc_donorA_unlabelled.h5ad"
DATASET = "scale"
BATCHES = ("batch1", "batch2", "batch3")
HOLDOUT = "batch3"
BLOCK_CELLS = 1_000  # cells drawn from one seeded generator: the counts do not depend on the write chunk size
WRITE_CELLS = 10_000  # cells appended to the h5ad at once
FULL_GENES = 20_000
TARGET_NNZ = 1_500  # mean non-zeros per cell over FULL_GENES genes
CELL_SHARE = 0.5  # weight of the source cell's own profile against its type's mean profile
LIBRARY_SIGMA = 0.25  # sd of the log-normal library-size jitter
GENE_SEED = 7  # the gene space's extra low-rate genes (names, rates) and the library calibration sample
DEFAULT_METHODS = ("logreg", "mlp", "kmeans+mlp", "celltypist")
SPLIT_NAME = re.compile(r"^(cv[0-9]+|lodo_.+|final)$")
EPOCH_RATE = re.compile(r"epoch \d+(?:/\d+)?: .* (\d+) training cells/s$", re.MULTILINE)
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .* best epoch", re.MULTILINE)


# ---------------------------------------------------------------------------------------------------- generator

GUIDE_BUCKETS = 1 << 15  # guide-table buckets per profile row (categorical draws in about O(1) each)


@dataclass
class Profiles:
    """Rows of non-negative weights over output genes, sampled in proportion by ``draw`` (guide-table method)."""

    cum: np.ndarray  # 0, then the running sum of all rows' weights, concatenated
    start: np.ndarray  # where each row's weights begin (len rows + 1)
    genes: np.ndarray  # output column of each weight

    def __post_init__(self) -> None:
        begin, end = self.start[:-1, None], self.start[1:, None]
        edges = self.cum[begin] + np.arange(GUIDE_BUCKETS) / GUIDE_BUCKETS * (self.cum[end] - self.cum[begin])
        self.guide = np.clip(np.searchsorted(self.cum, edges, side="right") - 1, begin, np.maximum(end - 1, begin))

    def mass(self) -> np.ndarray:
        """Total weight per row."""
        return self.cum[self.start[1:]] - self.cum[self.start[:-1]]

    def draw(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One gene column per entry of ``rows``, drawn in proportion to that row's weights."""
        u = rng.random(len(rows))
        begin, end = self.start[rows], self.start[rows + 1]
        targets = self.cum[begin] + u * (self.cum[end] - self.cum[begin])
        positions = self.guide[rows, (u * GUIDE_BUCKETS).astype(np.int64)]
        behind = np.flatnonzero((self.cum[positions + 1] <= targets) & (positions < end - 1))
        while len(behind):
            positions[behind] += 1
            still = (self.cum[positions[behind] + 1] <= targets[behind]) & (positions[behind] < end[behind] - 1)
            behind = behind[still]
        return self.genes[positions]


def on_output_genes(weights: sp.csr_matrix, columns: np.ndarray) -> sp.csr_matrix:
    """A non-negative CSR matrix whose column j is output gene ``columns[j]`` (-1: dropped), without dropped ones."""
    weights = sp.csr_matrix(weights, dtype=np.float64)
    weights.data[columns[weights.indices] < 0] = 0.0
    weights.eliminate_zeros()
    weights.indices = columns[weights.indices].astype(np.int32)
    return weights


def profiles_of(weights: sp.csr_matrix) -> Profiles:
    """Sampling rows of a non-negative CSR matrix."""
    return Profiles(np.concatenate([[0.0], np.cumsum(weights.data)]), weights.indptr.astype(np.int64),
                    weights.indices.astype(np.int64))


@dataclass
class Source:
    """The real cells and gene rates the synthetic cells are drawn from, over the output genes."""

    genes: pd.Index
    origin: np.ndarray  # per output gene: zheng, donorA or rate
    types: pd.Categorical  # per reference cell
    library: np.ndarray  # per reference cell: its scaled library size
    own: sp.csr_matrix  # per reference cell: its normalised counts x the reference genes' share x CELL_SHARE
    typical: Profiles  # per type: mean normalised profile x the reference genes' share
    background: Profiles  # one row: rates of the genes the reference lacks
    weights: np.ndarray  # per reference cell: (typical, background) expected-count shares of a unit library


def normalised(X: sp.csr_matrix) -> sp.csr_matrix:
    """Rows scaled to sum 1."""
    totals = np.asarray(X.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(totals, 1e-12)) @ X)


def gene_set_symbols(shared: Path) -> list[str]:
    """Human gene symbols of the shared gene-set libraries, sorted."""
    symbols: set[str] = set()
    for path in sorted((shared / "genesets").glob("*.gmt")):
        for line in path.read_text().splitlines():
            symbols.update(field for field in line.split("\t")[2:] if field)
    return sorted(symbols)


def library_scale(own: sp.csr_matrix, typical: np.ndarray, background: np.ndarray, library: np.ndarray,
                  cells: np.ndarray, target: float) -> float:
    """Factor on the reference library sizes that gives ``target`` expected non-zeros per cell (bisection)."""
    rates = np.hstack([CELL_SHARE * own[cells].toarray() + (1 - CELL_SHARE) * typical,
                       np.broadcast_to(background, (len(cells), len(background)))])
    low, high = 0.01, 100.0
    for _ in range(50):
        mid = math.sqrt(low * high)
        expected = (-np.expm1(-mid * library[cells, None] * rates)).sum(axis=1).mean()
        low, high = (mid, high) if expected < target else (low, mid)
    return math.sqrt(low * high)


def load_source(shared: Path, n_genes: int) -> Source:
    """Profiles over ``n_genes`` output genes (the highest-rate ones of the full ~20,000-gene space).

    Fixed for all seeds: the seed draws cells, not genes.
    """
    reference = ad.read_h5ad(shared / REFERENCE)
    donor = ad.read_h5ad(shared / BACKGROUND)
    donor_rates = np.asarray(normalised(sp.csr_matrix(donor.X)).mean(axis=0)).ravel()
    shared_genes = donor.var_names.isin(reference.var_names)
    reference_share = donor_rates[shared_genes].sum()
    extra = donor.var_names[~shared_genes & (donor_rates > 0)]
    extra_rates = donor_rates[donor.var_names.get_indexer(extra)]
    rng = np.random.default_rng(GENE_SEED)
    known = set(reference.var_names) | set(donor.var_names)
    names = rng.permutation([s for s in gene_set_symbols(shared) if s not in known])
    n_low = max(FULL_GENES - reference.n_vars - len(extra), 0)
    if len(names) < n_low:
        names = np.concatenate([names, [f"SYNTH{i:05d}" for i in range(n_low - len(names))]])
    low_rates = rng.choice(extra_rates, size=n_low)

    counts = sp.csr_matrix(reference.X, dtype=np.float64)
    own = normalised(counts) * reference_share
    types = pd.Categorical(reference.obs["cell_type"].astype(str))
    typical = np.vstack([np.asarray(own[types.codes == t].mean(axis=0)).ravel() for t in range(len(types.categories))])
    background = np.concatenate([extra_rates, low_rates])

    all_names = np.concatenate([reference.var_names.to_numpy(), extra.to_numpy(), names[:n_low]]).astype(str)
    origin = np.array(["zheng"] * reference.n_vars + ["donorA"] * len(extra) + ["rate"] * n_low)
    overall = np.concatenate([typical[types.codes].mean(axis=0), background])
    keep = np.sort(np.argsort(-overall, kind="stable")[:n_genes])
    column = np.full(len(all_names), -1)
    column[keep] = np.arange(len(keep))

    library = np.asarray(counts.sum(axis=1)).ravel()
    calibration = np.random.default_rng(GENE_SEED + 1).choice(reference.n_obs, size=min(300, reference.n_obs),
                                                           replace=False)
    library = library * library_scale(own, typical[types.codes[calibration]], background, library, calibration,
                                      TARGET_NNZ)
    n_ref = reference.n_vars
    typical_profiles = profiles_of(on_output_genes(sp.csr_matrix(typical), column[:n_ref]))
    background_profiles = profiles_of(on_output_genes(sp.csr_matrix(background[None, :]), column[n_ref:]))
    weights = np.column_stack([(1 - CELL_SHARE) * typical_profiles.mass()[types.codes],
                               np.full(reference.n_obs, background_profiles.mass()[0])])
    return Source(pd.Index(all_names[keep]), origin[keep], types, library,
                  on_output_genes(own * CELL_SHARE, column[:n_ref]), typical_profiles, background_profiles, weights)


def cell_table(n_cells: int, n_reference: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per synthetic cell: its reference cell (uniform, so real type proportions) and its batch code."""
    rng = np.random.default_rng([seed, 1])
    return rng.integers(0, n_reference, n_cells), rng.integers(0, len(BATCHES), n_cells)


def own_counts(own: sp.csr_matrix, picks: np.ndarray, library: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson counts over each source cell's own detected genes: (cell, gene, count) of every such gene."""
    begin, lengths = own.indptr[picks], np.diff(own.indptr)[picks]
    cells = np.repeat(np.arange(len(picks)), lengths)
    positions = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(begin, lengths)
    return cells, own.indices[positions], rng.poisson(library[cells] * own.data[positions])


def draw_block(source: Source, picks: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """Poisson counts for cells copying reference cells ``picks``: the cell's own genes drawn directly, its type's
    profile and the background as Poisson totals spread over genes by categorical draws."""
    n_genes = len(source.genes)
    library = source.library[picks] * rng.lognormal(-LIBRARY_SIGMA ** 2 / 2, LIBRARY_SIGMA, len(picks))
    totals = rng.poisson(library[:, None] * source.weights[picks])
    codes = []
    for k, (profiles, rows) in enumerate([(source.typical, source.types.codes[picks]),
                                          (source.background, np.zeros(len(picks), dtype=np.int64))]):
        owner = np.repeat(np.arange(len(picks)), totals[:, k])
        codes.append(owner * n_genes + profiles.draw(np.asarray(rows, dtype=np.int64)[owner], rng))
    dense = np.bincount(np.concatenate(codes), minlength=len(picks) * n_genes)
    cells, genes, counts = own_counts(source.own, picks, library, rng)
    dense[cells * n_genes + genes] += counts
    flat = np.flatnonzero(dense)
    rows = flat // n_genes
    indptr = np.searchsorted(rows, np.arange(len(picks) + 1))
    return sp.csr_matrix((dense[flat].astype(np.float32), (flat % n_genes).astype(np.int32), indptr),
                         shape=(len(picks), n_genes))


def count_chunks(source: Source, picks: np.ndarray, seed: int) -> Iterator[sp.csr_matrix]:
    """The counts of all cells, ``WRITE_CELLS`` rows at a time; block b always uses generator (seed, 2, b)."""
    pending: list[sp.csr_matrix] = []
    for block, start in enumerate(range(0, len(picks), BLOCK_CELLS)):
        rng = np.random.default_rng([seed, 2, block])
        pending.append(draw_block(source, picks[start:start + BLOCK_CELLS], rng))
        if sum(x.shape[0] for x in pending) >= WRITE_CELLS:
            yield sp.vstack(pending, format="csr")
            pending = []
    if pending:
        yield sp.vstack(pending, format="csr")


def generate(dest: Path, n_cells: int, seed: int = 0, n_genes: int = FULL_GENES, shared: Path = SHARED_DATA) -> Path:
    """Write ``n_cells`` synthetic PBMCs (raw counts, float32 CSR) with cell_type, batch and dataset to ``dest``."""
    source = load_source(shared, n_genes)
    picks, batch = cell_table(n_cells, len(source.types), seed)
    width = len(str(n_cells - 1))
    obs = pd.DataFrame({
        "cell_type": pd.Categorical.from_codes(source.types.codes[picks], source.types.categories),
        "batch": pd.Categorical.from_codes(batch, BATCHES),
        "dataset": pd.Categorical([DATASET] * n_cells),
    }, index=pd.Index([f"cell{i:0{width}d}" for i in range(n_cells)]))
    var = pd.DataFrame({"origin": pd.Categorical(source.origin)}, index=source.genes)
    uns = {"synthetic": {"seed": seed, "cells": n_cells, "genes": len(source.genes), "reference": REFERENCE,
                         "background": BACKGROUND, "target_nnz": TARGET_NNZ}}
    with RowWriter(dest, obs, var, uns) as writer:
        for X in count_chunks(source, picks, seed):
            writer.append(X)
    return dest


# ---------------------------------------------------------------------------------------------------- workflow

def workflow_config(data: Path, methods: Sequence[str], epochs: int, seed: int) -> dict:
    """One held-out batch, capped epochs, one thread per job, no interpretation."""
    return {
        "datasets": {DATASET: {"source": str(data), "label_key": "cell_type", "batch_key": "batch",
                               "values": "counts", "species": "human"}},
        "methods": list(methods),
        "qc": {"min_genes": 200, "max_pct_mito": 20, "min_cells": 0},  # min_cells 0: the same genes at every size
        "split": {"scheme": "lodo", "lodo_key": "batch", "holdout": [HOLDOUT], "val_fraction": 0.1, "seed": seed},
        "pretrain": {"seed": seed, "threads": 1, "device": "cpu",
                     "kmeans": {"rounds": 1, "epochs": 1}},
        "finetune": {"seed": seed, "threads": 1, "device": "cpu", "epochs": epochs, "patience": epochs},
        # the yardstick: CellTypist's own large-data mode (mini-batch SGD, no centring of the sparse matrix) at every
        # size; the peer stage predicts through dense pieces, since annotate() fails on a sparse with_mean=False query
        "peers": {"seed": seed, "threads": 1,
                  "celltypist": {"use_SGD": True, "mini_batch": True, "with_mean": False}},
        "baseline": {"seed": seed},
        "interpret": {"enabled": False},
    }


def high_water_mb(pid: int) -> float:
    """A process's peak resident memory so far (the kernel's VmHWM), in MB; 0 when unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


class PeakSampler(threading.Thread):
    """Polls a Snakemake run's job processes: each job's peak RSS from the kernel's high-water mark.

    Snakemake's benchmark files sample RSS every second for 30 s, then every 30 s, so a long job's peak can fall
    between samples; the high-water mark cannot be missed, except in a job's last ``interval`` seconds. A job is
    known by the rule log its process holds open (``results/logs/X.log`` is job X, as the benchmark files name it).
    """

    def __init__(self, pid: int, interval: float = 0.5, reclaim: dict[Path, Path] | None = None) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.reclaim = pid, interval, dict(reclaim or {})
        self.jobs: dict[int, str] = {}
        self.peaks: dict[str, float] = {}
        self.done = threading.Event()

    def job_of(self, process: psutil.Process) -> str | None:
        """The job a process runs, from its open rule log (None until it opened one)."""
        if process.pid not in self.jobs:
            logs = [f.path.split("/results/logs/", 1)[1] for f in process.open_files() if "/results/logs/" in f.path]
            if not logs:
                return None
            self.jobs[process.pid] = job_name(Path(logs[0]).with_suffix(".tsv"))
        return self.jobs[process.pid]

    def sample(self) -> None:
        """Record the high-water mark of every running job (its process and its children)."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            return
        for child in children:
            try:
                job = self.job_of(child)
                if job is None:
                    continue
                peak = high_water_mb(child.pid) + sum(high_water_mb(c.pid) for c in child.children(recursive=True))
            except psutil.Error:
                continue
            self.peaks[job] = max(self.peaks.get(job, 0.0), peak)

    def reclaim_disk(self) -> None:
        """Delete each file of ``reclaim`` once its consumer's benchmark file exists (that job has finished)."""
        for path, consumer_done in list(self.reclaim.items()):
            if consumer_done.is_file():
                path.unlink(missing_ok=True)
                del self.reclaim[path]

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()
            self.reclaim_disk()


def consumed_copies(workdir: Path, data: Path) -> dict[Path, Path]:
    """The matrices a run no longer reads once a later job finished: generated source after download, raw after qc."""
    benchmarks = workdir / "results" / "benchmarks"
    return {data: benchmarks / "download" / f"{DATASET}.tsv",
            workdir / "results" / "data" / "raw" / f"{DATASET}.h5ad": benchmarks / "qc" / f"{DATASET}.tsv"}


def run_workflow(workdir: Path, configfile: Path, log: Path,
                 reclaim: dict[Path, Path] | None = None) -> tuple[bool, float, dict[str, float]]:
    """Run snakemake to the default target with 2 cores, output to ``log``; (succeeded, wall s, peak MB per job).
    ``reclaim`` maps files to delete to the benchmark file that says their last reader finished."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(configfile), "--cores", "2", "--keep-going"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "scripts"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = PeakSampler(process.pid, reclaim=reclaim)
        sampler.start()
        returncode = process.wait()
        sampler.done.set()
        sampler.join()
    return returncode == 0, time.perf_counter() - start, sampler.peaks


def failure(workdir: Path, log: Path) -> str:
    """Which rule failed and the tail of its log."""
    text = log.read_text()
    rules = list(dict.fromkeys(re.findall(r"Error in rule (\w+):", text)))
    logs = re.findall(r"log: (results/logs/\S+)", text.split("Error in rule", 1)[-1]) if rules else []
    detail = ""
    if logs and (workdir / logs[0]).is_file():
        detail = "\n" + "\n".join((workdir / logs[0]).read_text().splitlines()[-15:])
    return f"rule {', '.join(rules) or '?'} failed (snakemake log {log}){detail or chr(10) + text[-3000:]}"


def job_name(relative: Path) -> str:
    """A benchmark file's job: its path without the split name (e.g. finetune/mlp), final models kept apart."""
    parts = list(relative.with_suffix("").parts)
    if len(parts) > 1 and SPLIT_NAME.match(parts[-1]) and parts[-1] != "final":
        parts = parts[:-1]
    return "/".join(parts)


def job_table(workdir: Path, high_water: dict[str, float]) -> pd.DataFrame:
    """Wall s, CPU s and RSS (MB) per job from Snakemake's benchmark files (jobs of one name summed/maxed), with the
    polled high-water mark; peak_rss_mb is the larger of the two (jobs without a benchmark file: the mark alone)."""
    rows = []
    root = workdir / "results" / "benchmarks"
    for path in sorted(root.rglob("*.tsv")):
        record = pd.read_csv(path, sep="\t").iloc[0]
        rows.append({"job": job_name(path.relative_to(root)), "wall_s": float(record["s"]),
                     "cpu_s": float(record["cpu_time"]), "max_rss_mb": float(record["max_rss"])})
    table = pd.DataFrame(rows, columns=["job", "wall_s", "cpu_s", "max_rss_mb"]).groupby("job").agg(
        jobs=("wall_s", "size"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"), max_rss_mb=("max_rss_mb", "max"))
    table = table.join(pd.Series(high_water, name="hwm_rss_mb", dtype=float), how="outer").sort_index()
    table["peak_rss_mb"] = table[["max_rss_mb", "hwm_rss_mb"]].max(axis=1)
    return table.rename_axis("job")


def benchmark_file(workdir: Path, stage: str, method: str) -> Path | None:
    """The single held-out split's benchmark file of a method's job, if it ran."""
    path = workdir / "results" / "benchmarks" / stage / method / f"lodo_{HOLDOUT}.tsv"
    return path if path.is_file() else None


def finetune_log(workdir: Path, method: str) -> str:
    """The text of a neural method's fine-tuning log on the held-out split ('' when absent)."""
    log = workdir / "results" / "logs" / "finetune" / method / f"lodo_{HOLDOUT}.log"
    return log.read_text() if log.is_file() else ""


def fit_seconds(workdir: Path, method: str) -> float:
    """Fine-tuning seconds from job start to the log's 'best epoch' line (start-up and the data read included)."""
    bench = benchmark_file(workdir, "finetune", method)
    stamps = LOG_TIME.findall(finetune_log(workdir, method))
    if bench is None or not stamps:
        return math.nan
    job_start = bench.stat().st_mtime - float(pd.read_csv(bench, sep="\t")["s"][0])
    return datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - job_start


def matmul_gflops(genes: int, hidden: int, batch: int = 128, seconds: float = 1.0) -> float:
    """Dense float32 [batch, genes] @ [genes, hidden] GFLOP/s with one torch thread."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(batch, genes), torch.randn(genes, hidden)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2.0 * batch * genes * hidden * reps / (time.perf_counter() - start) / 1e9


def finetune_summary(workdir: Path, method: str, gflops: dict[tuple[int, int], float]) -> dict:
    """Training cells, epochs, fit s, cells/s per epoch, the dense-FLOP floor and the ratio for one neural method."""
    model = workdir / "results" / "models" / method / f"lodo_{HOLDOUT}" / "model.json"
    if not model.is_file():
        return {}
    meta = json.loads(model.read_text())
    history = meta["training"]["history"]
    genes = len((model.parent / "genes.txt").read_text().split())
    encoder = meta["encoder_hparams"]
    hidden = (encoder.get("hidden_dims") or [encoder["out_dim"]])[0]
    cells, epochs = len(meta["config"]["cells"]["train"]), len(history["epoch"])
    seconds = fit_seconds(workdir, method)
    epoch_rates = [float(rate) for rate in EPOCH_RATE.findall(finetune_log(workdir, method))]
    if (genes, hidden) not in gflops:
        gflops[genes, hidden] = matmul_gflops(genes, hidden)
    floor = gflops[genes, hidden] * 1e9 / (6.0 * genes * hidden)
    # the training steps' own rate, logged per epoch (batches read from disk included, validation excluded)
    rate = float(np.mean(epoch_rates)) if epoch_rates else cells * epochs / seconds
    return {f"{method}_train_cells": cells, f"{method}_epochs": epochs, f"{method}_fit_s": seconds,
            f"{method}_rate_source": "epoch log" if epoch_rates else "job time",
            f"{method}_cells_per_s_epoch": rate, "genes": genes,
            "first_layer_width": hidden, "matmul_gflops_1thread": gflops[genes, hidden],
            f"{method}_floor_cells_per_s": floor, f"{method}_x_of_floor": floor / rate}


def data_shape(data: Path) -> tuple[int, int, int]:
    """(cells, genes, non-zeros) of a generated matrix."""
    with CellStore(data) as store:
        return store.n_obs, store.n_vars, int(store.matrix().group["indptr"][-1])


def size_summary(workdir: Path, shape: tuple[int, int, int], jobs: pd.DataFrame, wall: float, generate_s: float,
                 gflops: dict[tuple[int, int], float]) -> dict:
    """The per-size numbers beyond the job table."""
    n_obs, n_vars, nnz = shape
    summary = {"cells": n_obs, "generated_genes": n_vars, "nnz_per_cell": nnz / n_obs, "generate_s": generate_s,
               "workflow_wall_s": wall, "max_job_rss_mb": float(jobs["peak_rss_mb"].max()),
               "max_rss_job": str(jobs["peak_rss_mb"].idxmax()) if len(jobs) else ""}
    summary.update(finetune_summary(workdir, "mlp", gflops))
    mlp, celltypist = benchmark_file(workdir, "finetune", "mlp"), benchmark_file(workdir, "peers", "celltypist")
    if mlp and celltypist:
        mlp_s, celltypist_s = (float(pd.read_csv(p, sep="\t")["s"][0]) for p in (mlp, celltypist))
        summary.update({"mlp_job_s": mlp_s, "celltypist_job_s": celltypist_s, "mlp_over_celltypist": mlp_s / celltypist_s})
    return summary


# ---------------------------------------------------------------------------------------------------- report

def exponent(small: float, large: float, n_small: int, n_large: int) -> float:
    """Growth exponent: log(large / small) / log(n_large / n_small)."""
    if not (small > 0 and large > 0):
        return math.nan
    return math.log(large / small) / math.log(n_large / n_small)


def label(n: int) -> str:
    """10000 -> 10k, 1000000 -> 1M."""
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def markdown(table: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (numbers rounded to 3 significant digits)."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def growth_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per job: wall s, CPU s, RSS MB per size and the exponents between consecutive sizes."""
    sizes = sorted(jobs["cells"].unique())
    wide = jobs.pivot(index="job", columns="cells", values=["wall_s", "cpu_s", "peak_rss_mb"])
    out = pd.DataFrame({"job": wide.index})
    for n in sizes:
        for metric, name in (("wall_s", "wall s"), ("cpu_s", "CPU s"), ("peak_rss_mb", "RSS MB")):
            out[f"{label(n)} {name}"] = wide[metric][n].to_numpy()
    for small, large in zip(sizes, sizes[1:]):
        for metric, name in (("wall_s", "wall"), ("peak_rss_mb", "RSS")):
            out[f"{name} exp {label(small)}→{label(large)}"] = [
                exponent(a, b, small, large) for a, b in zip(wide[metric][small], wide[metric][large])]
    return out


def summary_table(summaries: list[dict]) -> pd.DataFrame:
    """The per-size summary, one row per size, in the order of the columns worth reading."""
    columns = ["cells", "generated_genes", "nnz_per_cell", "generate_s", "workflow_wall_s", "max_job_rss_mb",
               "max_rss_job", "genes", "mlp_train_cells", "mlp_epochs", "mlp_fit_s", "mlp_cells_per_s_epoch",
               "matmul_gflops_1thread", "mlp_floor_cells_per_s", "mlp_x_of_floor", "mlp_rate_source",
               "mlp_job_s", "celltypist_job_s", "mlp_over_celltypist"]
    table = pd.DataFrame(summaries)
    return table[[c for c in columns if c in table.columns]]


def report(jobs: pd.DataFrame, summaries: list[dict], out: Path | None) -> None:
    """Print the Markdown tables; write the TSVs when ``out`` is given."""
    summary = summary_table(summaries)
    print("\n## Jobs (Snakemake benchmark files; one held-out batch)\n")
    print(markdown(growth_table(jobs)))
    print("\n## Per size (x of floor: dense-FLOP floor cells/s / measured; mlp over celltypist: job wall ratio)\n")
    print(markdown(summary))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        jobs.to_csv(out, sep="\t", index=False)
        summary.to_csv(out.with_suffix(".summary.tsv"), sep="\t", index=False)


def free_gb(path: Path) -> float:
    """Free disk space under ``path`` in GB."""
    return shutil.disk_usage(path).free / 1e9


def measure_size(n: int, args: argparse.Namespace,
                 gflops: dict[tuple[int, int], float]) -> tuple[pd.DataFrame, dict, str | None]:
    """Generate, run and measure one size in ``workdir/<n>`` (the jobs that finished, and what failed, if any);
    delete the folder unless --keep."""
    folder = args.workdir / str(n)
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "data").mkdir(parents=True)
    # matrix copies on disk at once: generated, raw, QC'd and combined (the last two with their counts layer);
    # --low-disk keeps only the QC'd and combined ones once the run is past QC
    copies = 4 if args.low_disk else 6
    need = copies * n * TARGET_NNZ * 8 * args.genes / FULL_GENES / 1e9
    if free_gb(folder) < need:
        print(f"warning: {n} cells need about {need:.0f} GB of disk, {free_gb(folder):.0f} GB free", file=sys.stderr)
    data = folder / "data" / f"synthetic_{n}.h5ad"
    start = time.perf_counter()
    generate(data, n, args.seed, args.genes)
    generate_s = time.perf_counter() - start
    print(f"{n} cells: generated in {generate_s:.0f} s; running the workflow in {folder}", file=sys.stderr)
    configfile = folder / "config.yaml"
    configfile.write_text(yaml.safe_dump(workflow_config(data, args.methods, args.epochs, args.seed), sort_keys=False))
    shape = data_shape(data)
    reclaim = consumed_copies(folder, data) if args.low_disk else None
    ok, wall, high_water = run_workflow(folder, configfile, folder / "snakemake.log", reclaim)
    error = None if ok else f"{n} cells: {failure(folder, folder / 'snakemake.log')}"
    jobs = job_table(folder, high_water).reset_index().assign(cells=n)
    summary = size_summary(folder, shape, jobs.set_index("job"), wall, generate_s, gflops)
    if not args.keep:
        shutil.rmtree(folder)
    return jobs, summary, error


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--genes", type=int, default=FULL_GENES, help="keep the N highest-rate genes (CI: fewer)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sclabel-scale"))
    parser.add_argument("--keep", action="store_true", help="keep each size's data and results (default: delete)")
    parser.add_argument("--low-disk", action="store_true",
                        help="delete the generated matrix once downloaded and the raw one once QC'd (saves 2 copies)")
    parser.add_argument("--out", type=Path, help="TSV of per-job rows (the summary goes to <out>.summary.tsv)")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0 < args.genes <= FULL_GENES:
        print(f"error: --genes must be between 1 and {FULL_GENES}", file=sys.stderr)
        return 2
    missing = [name for name in (REFERENCE, BACKGROUND) if not (SHARED_DATA / name).is_file()]
    if missing:
        print(f"error: the shared real datasets are missing: {', '.join(missing)} not in {SHARED_DATA}. "
              "Fix: put ../shared/data beside the checkout or set SCLABEL_SHARED_DATA", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    tables, summaries, gflops, error = [], [], {}, None
    for n in sorted(args.cells):
        jobs, summary, error = measure_size(n, args, gflops)
        tables.append(jobs)
        summaries.append(summary)
        if error:
            break
    if tables:
        report(pd.concat(tables, ignore_index=True), summaries, args.out)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
