"""Snakemake step: combine the QC'd datasets on harmonised gene names, chunk by chunk."""

from sclabel.qc import harmonise_stage
from sclabel.runner import run_step


def main(sm) -> None:
    harmonise_stage(list(sm.input), sm.params.names, sm.params.settings, sm.params.target_sum,
                    sm.output.h5ad, sm.output.table, sm.params.chunk_cells)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
