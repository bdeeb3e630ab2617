"""The environment the workflow's jobs inherit (standard library only: the Snakefile calls it before any rule env)."""

from __future__ import annotations

import os


def put_first_on_pythonpath(folder: str) -> None:
    """Make ``folder`` the first ``PYTHONPATH`` entry of this process and so of every job it starts.

    Snakemake appends a rule script's folder to ``sys.path`` after site-packages, so without this an installed
    ``sclabel`` (another checkout, another version) would be imported by the jobs instead of the workflow's own.
    """
    entries = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    if entries[:1] != [folder]:
        os.environ["PYTHONPATH"] = os.pathsep.join([folder, *entries])
