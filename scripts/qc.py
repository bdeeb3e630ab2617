"""Snakemake step: QC-filter and log-normalise one dataset."""

from sclabel.pipeline import qc_stage
from sclabel.runner import run_step


def main(sm) -> None:
    qc_stage(sm.input[0], sm.params.settings, sm.output.h5ad, sm.output.table)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
