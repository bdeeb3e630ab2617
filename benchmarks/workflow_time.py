"""Time a workflow run end to end (fresh working folder) and break the time down by rule.

Usage: python benchmarks/workflow_time.py [--configfile config/config.yaml] [--cores 2] [--target-s 120]
The sweeps: --configfile config/bench_symphony_lodo.yaml --target-s 900 (issue target: under 15 minutes).
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
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def absolute_sources(configfile: Path, workdir: Path) -> Path:
    """A copy of the config in ``workdir`` whose relative dataset paths point where they did from the repository."""
    config = yaml.safe_load(configfile.read_text())
    entries = [*config["datasets"].values(), *config.get("annotate", {}).get("queries", {}).values()]
    for spec in entries:
        if not spec["source"].startswith(("builtin:", "http://", "https://", "file://", "/")):
            spec["source"] = str((REPO_ROOT / spec["source"]).resolve())
    interpret = config.get("interpret", {})
    for name, path in interpret.get("libraries", {}).items():
        interpret["libraries"][name] = str((REPO_ROOT / path).resolve())
    if interpret.get("marker_table"):
        interpret["marker_table"] = str((REPO_ROOT / interpret["marker_table"]).resolve())
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / "config.yaml"
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


def run_workflow(configfile: Path, cores: int, workdir: Path) -> float:
    """Run the workflow once in ``workdir``; return its wall time in seconds."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(absolute_sources(configfile, workdir)), "--cores", str(cores), "--quiet"]
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


def method_times(workdir: Path) -> pd.DataFrame:
    """Summed fit + predict seconds per method (pretraining shown separately under its own name)."""
    rows = []
    for stage in ("baseline", "peers", "finetune", "pretrain"):
        for path in sorted((workdir / "results/benchmarks" / stage).glob("*/*.tsv")):
            name = path.parent.name if stage != "pretrain" else f"pretrain:{path.parent.name}"
            rows.append({"method": name, "seconds": float(pd.read_csv(path, sep="\t").iloc[0]["s"])})
    return pd.DataFrame(rows).groupby("method")["seconds"].agg(["count", "sum"]).rename(columns={"count": "jobs"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=REPO_ROOT / "config" / "config.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--target-s", type=float, default=120.0, help="wall-time target to report the ratio to")
    parser.add_argument("--keep", type=Path, help="run in this (empty) folder and keep its results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = args.keep or scratch
        wall = run_workflow(args.configfile, args.cores, Path(scratch))
        table = rule_times(Path(scratch))
        methods = method_times(Path(scratch))
    print(table.round(2).to_string())
    print()
    print(methods.round(2).to_string())
    print(f"\nwall time {wall:.1f} s on {args.cores} cores; ratio to the {args.target_s:.0f} s target: "
          f"{wall / args.target_s:.2f}")
    print(f"sum of job times {table['seconds'].sum():.1f} s (parallel jobs overlap)")


if __name__ == "__main__":
    main()
