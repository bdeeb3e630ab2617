"""Snakemake step: pydeseq2 pseudobulk differential expression per cell type."""

from sclabel.explain import pseudobulk_stage
from sclabel.runner import run_step


def main(sm) -> None:
    pseudobulk_stage(sm.input[0], sm.params.settings, sm.output.table, sm.output.skipped, sm.output.figure,
                     sm.params.chunk_cells)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
