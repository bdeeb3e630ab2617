"""Snakemake step: write methods.tsv, what each benchmarked method is, its package's version, the cells it is fitted on,
when it abstains and what it does at scale (from the registry)."""

from pathlib import Path

import pandas as pd

from sclabel import registry
from sclabel.io import write_tsv
from sclabel.runner import run_step


def main(sm) -> None:
    table = pd.DataFrame(sm.params.rows)
    versions = [registry.package_version(registry.get(name), Path(sm.params.envs)) for name in table["name"]]
    table.insert(table.columns.get_loc("package") + 1, "version", versions)
    write_tsv(table, sm.output[0])


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
