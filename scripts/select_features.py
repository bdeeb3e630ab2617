"""Snakemake step: rank the genes on one split's training cells; write the top k and the split's matrix over them."""

from sclabel.features import select_features_stage
from sclabel.runner import run_step


def main(sm) -> None:
    select_features_stage(sm.input.h5ad, sm.input.splits, sm.wildcards.split, sm.params.settings, sm.output.genes,
                          sm.output.h5ad, sm.params.store["chunk_cells"], sm.params.renormalise, sm.params.target_sum)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
