#!/usr/bin/env python3
"""Submit a Snakemake jobscript with sbatch; print only the SLURM job id.

Called by the cluster-generic executor as ``sbatch_submit.py JOBSCRIPT``. The job's rule, threads and
resources come from the jobscript's ``# properties = {json}`` line and become sbatch flags:

    threads                 --cpus-per-task
    mem_mb (MB)             --mem
    runtime (minutes)       --time
    gpu (count, > 0)        --gres=gpu:N   (--gres=gpu:MODEL:N when a gpu_model resource is set)
    slurm_partition         --partition
    slurm_account           --account

Output and error of each job go to results/logs/slurm/<rule>-<slurm job id>.log below the working directory.
Pure standard library, so it runs with any python3 on the submit host.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

LOG_DIR = Path("results/logs/slurm")


def read_properties(jobscript: Path) -> dict[str, Any]:
    """The job properties Snakemake wrote into the jobscript's ``# properties = {...}`` line."""
    for line in jobscript.read_text().splitlines():
        if line.startswith("# properties = "):
            return json.loads(line.split("=", 1)[1])
    raise ValueError(f"{jobscript}: no '# properties = ' line; is this a Snakemake jobscript?")


def _count(value: Any) -> int:
    """A resource value as a whole number (rounded up), 0 when unset or not numeric (e.g. '<TBD>')."""
    try:
        return max(0, math.ceil(float(value)))
    except (TypeError, ValueError):
        return 0


def sbatch_args(properties: dict[str, Any], log_dir: Path = LOG_DIR) -> list[str]:
    """The sbatch command line (without the jobscript) for a job with these properties."""
    resources = properties.get("resources", {})
    name = properties.get("rule") or f"group-{properties.get('groupid', 'job')}"
    args = ["sbatch", "--parsable", f"--job-name=sclabel-{name}", "--nodes=1", "--ntasks=1",
            f"--cpus-per-task={max(1, _count(properties.get('threads', 1)))}",
            f"--output={log_dir / f'{name}-%j.log'}"]
    if mem_mb := _count(resources.get("mem_mb")):
        args.append(f"--mem={mem_mb}")
    if runtime := _count(resources.get("runtime")):
        args.append(f"--time={runtime}")
    if gpus := _count(resources.get("gpu")):
        model = resources.get("gpu_model")
        args.append(f"--gres=gpu:{model}:{gpus}" if model else f"--gres=gpu:{gpus}")
    if partition := resources.get("slurm_partition"):
        args.append(f"--partition={partition}")
    if account := resources.get("slurm_account"):
        args.append(f"--account={account}")
    return args


def parse_job_id(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` output (``ID`` or ``ID;CLUSTER``)."""
    job_id = stdout.strip().splitlines()[-1].split(";")[0].strip() if stdout.strip() else ""
    if not job_id.isdigit():
        raise ValueError(f"sbatch printed no job id: {stdout!r}")
    return job_id


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: sbatch_submit.py JOBSCRIPT", file=sys.stderr)
        return 2
    jobscript = Path(argv[-1])
    log_dir = Path.cwd() / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [*sbatch_args(read_properties(jobscript), log_dir), str(jobscript)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"sbatch failed ({result.returncode}): {' '.join(command)}\n{result.stderr.strip()}", file=sys.stderr)
        return result.returncode
    print(parse_job_id(result.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
