"""Snakemake step: train one peer annotator (CellTypist, SingleR) on one split and write its test predictions."""

from sclabel.peers import peer_stage
from sclabel.runner import run_step


def main(sm) -> None:
    peer_stage(sm.params.peer, sm.params.settings, sm.params.seed, sm.threads, sm.params.target_sum, sm.input.h5ad,
               sm.input.splits, sm.wildcards.split, sm.output[0], sm.params.chunk_cells)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
