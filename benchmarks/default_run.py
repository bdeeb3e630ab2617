"""Time the default workflow end to end (fresh working folder) and break the time down by rule.

Usage: python benchmarks/default_run.py [--configfile config/config.yaml] [--cores 2]
Prints the wall time, its ratio to the 2-minute target, and each rule's summed job time from Snakemake's
benchmark files; the time Snakemake itself adds is the wall time minus the critical path of the jobs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 120.0


def run_workflow(configfile: Path, cores: int, workdir: Path) -> float:
    """Run the workflow once in ``workdir``; return its wall time in seconds."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(configfile.resolve()), "--cores", str(cores), "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def rule_times(workdir: Path) -> pd.DataFrame:
    """Summed seconds and peak memory per rule from the benchmark files."""
    rows = []
    for path in sorted((workdir / "results/benchmarks").rglob("*.tsv")):
        rule = path.relative_to(workdir / "results/benchmarks").parts[0].removesuffix(".tsv")
        record = pd.read_csv(path, sep="\t").iloc[0]
        rows.append({"rule": rule, "s": float(record["s"]), "max_rss_mb": float(record["max_rss"])})
    table = pd.DataFrame(rows)
    return table.groupby("rule").agg(jobs=("s", "size"), seconds=("s", "sum"), max_rss_mb=("max_rss_mb", "max"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=REPO_ROOT / "config" / "config.yaml")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        wall = run_workflow(args.configfile, args.cores, Path(scratch))
        table = rule_times(Path(scratch))
    print(table.round(2).to_string())
    print(f"\nwall time {wall:.1f} s on {args.cores} cores; ratio to the {TARGET_S:.0f} s target: {wall / TARGET_S:.2f}")
    print(f"sum of job times {table['seconds'].sum():.1f} s (parallel jobs overlap)")


if __name__ == "__main__":
    main()
