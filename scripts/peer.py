"""Snakemake step: train one peer annotator (CellTypist, SingleR) on one split; save it, predict its validation and test cells."""

from sclabel.annotator import RunContext
from sclabel.method_stage import method_stage
from sclabel.runner import run_step


def main(sm) -> None:
    context = RunContext(threads=sm.threads, chunk_cells=sm.params.chunk_cells, target_sum=sm.params.target_sum)
    method_stage(sm.wildcards.method, sm.params.settings, sm.params.seed, sm.input.h5ad, sm.input.splits,
                 sm.wildcards.get("split", "final"), sm.output.model, sm.output.get("predictions"), context,
                 sm.output.validation, sm.params.known_abstention)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
