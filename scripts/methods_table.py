"""Snakemake step: write methods.tsv, what each benchmarked method is and does at scale (from the registry)."""

import pandas as pd

from sclabel.io import write_tsv
from sclabel.runner import run_step


def main(sm) -> None:
    write_tsv(pd.DataFrame(sm.params.rows), sm.output[0])


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
