"""Snakemake step: train one classical baseline on one split, save its model and (CV / LODO) its test predictions."""

from sclabel.annotator import RunContext
from sclabel.method_stage import method_stage
from sclabel.runner import run_step


def main(sm) -> None:
    context = RunContext(sm.threads, sm.params.store["chunk_cells"], sm.params.store["buffer_cells"],
                         sm.params.target_sum)
    method_stage(sm.wildcards.method, sm.params.settings, sm.params.seed, sm.input.h5ad, sm.input.splits,
                 sm.wildcards.get("split", "final"), sm.output.model, sm.output.get("predictions"), context,
                 sm.output.validation, sm.params.known_abstention)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
