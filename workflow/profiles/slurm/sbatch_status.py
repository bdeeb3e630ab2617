#!/usr/bin/env python3
"""Print the state of a SLURM job for Snakemake: exactly one of ``running``, ``success`` or ``failed``.

Called by the cluster-generic executor as ``sbatch_status.py JOBID``. Asks ``scontrol show job -o`` first (works
without SLURM accounting; finished jobs stay visible for MinJobAge seconds), then ``squeue``, then ``sacct`` where
accounting is set up. A job none of them knows is reported ``failed``, with the reason on stderr.
Pure standard library, so it runs with any python3 on the submit host.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

RUNNING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
           "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
SUCCESS = {"COMPLETED"}
FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
          "SPECIAL_EXIT", "REVOKED"}
UNKNOWN_JOB = re.compile(r"invalid job id", re.IGNORECASE)


def snakemake_status(state: str) -> str:
    """``running``, ``success`` or ``failed`` for a SLURM job state (``CANCELLED by 0``, ``RUNNING+`` allowed)."""
    words = re.findall(r"[A-Z_]+", state.upper())
    if not words:
        raise ValueError(f"empty job state {state!r}")
    word = words[0]
    if word in RUNNING:
        return "running"
    if word in SUCCESS:
        return "success"
    if word in FAILED:
        return "failed"
    raise ValueError(f"unknown SLURM job state {state!r}")


def state_from_scontrol(text: str) -> str | None:
    """The JobState of ``scontrol show job -o`` output (one line per job; the first wins)."""
    match = re.search(r"\bJobState=(\S+)", text)
    return match.group(1) if match else None


def state_from_table(text: str) -> str | None:
    """The first non-empty line of ``squeue -h -o %T`` / ``sacct -n -X -P -o State`` output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else None


def ask(command: list[str], attempts: int = 3) -> tuple[str | None, str]:
    """stdout of a SLURM command, retried on transient errors; (None, error) when it fails or is missing."""
    if shutil.which(command[0]) is None:
        return None, f"{command[0]} not found"
    error = ""
    for attempt in range(attempts):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            error = f"{command[0]} timed out"
        else:
            if result.returncode == 0:
                return result.stdout, ""
            error = (result.stderr or result.stdout).strip() or f"{command[0]} exited {result.returncode}"
            if UNKNOWN_JOB.search(error):
                return None, error  # a definite answer: no point in asking again
        if attempt + 1 < attempts:
            time.sleep(2)
    return None, error


def job_state(job_id: str) -> tuple[str | None, list[str]]:
    """The job's SLURM state from the first command that knows it, and what the others said."""
    queries = [
        (["scontrol", "show", "job", "-o", job_id], state_from_scontrol),
        (["squeue", "-h", "-j", job_id, "-o", "%T"], state_from_table),
        (["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], state_from_table),
    ]
    reasons = []
    for command, parse in queries:
        stdout, error = ask(command)
        state = parse(stdout) if stdout is not None else None
        if state:
            return state, reasons
        reasons.append(f"{command[0]}: {error or 'no state in output'}")
    return None, reasons


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: sbatch_status.py JOBID", file=sys.stderr)
        return 2
    job_id = argv[0].strip().split(";")[0]
    state, reasons = job_state(job_id)
    if state is None:
        print(f"sbatch_status: job {job_id} unknown to SLURM ({'; '.join(reasons)}); reporting failed",
              file=sys.stderr)
        print("failed")
        return 0
    try:
        print(snakemake_status(state))
    except ValueError as error:
        print(f"sbatch_status: job {job_id}: {error}; reporting failed", file=sys.stderr)
        print("failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
