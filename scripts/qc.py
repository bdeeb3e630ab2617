"""Snakemake step: QC-filter and log-normalise one dataset, chunk by chunk."""

from sclabel.qc import qc_stage
from sclabel.runner import run_step


def main(sm) -> None:
    qc_stage(sm.input[0], sm.params.settings, sm.output.h5ad, sm.output.table, sm.params.chunk_cells)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
