"""Snakemake step: train one classical baseline on one split and write its test predictions."""

from sclabel.pipeline import baseline_stage
from sclabel.runner import run_step


def main(sm) -> None:
    baseline_stage(sm.wildcards.method, sm.params.settings, sm.params.seed, sm.input.h5ad, sm.input.splits,
                   sm.wildcards.split, sm.output[0], sm.params.chunk_cells)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
