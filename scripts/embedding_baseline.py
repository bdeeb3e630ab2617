"""Snakemake step: a classical baseline on a split's pretrained embedding; saves the model (with its encoder)."""

import torch

from sclabel.annotator import RunContext
from sclabel.method_stage import method_stage
from sclabel.runner import run_step


def main(sm) -> None:
    torch.set_num_threads(sm.threads)
    context = RunContext(sm.threads, sm.params.store["chunk_cells"], sm.params.store["buffer_cells"],
                         sm.params.target_sum)
    settings = {**sm.params.settings, "encoder_file": sm.input.encoder, "batch_size": sm.params.batch_size}
    method_stage(sm.wildcards.method, settings, sm.params.seed, sm.input.h5ad, sm.input.splits,
                 sm.wildcards.get("split", "final"), sm.output.model, sm.output.get("predictions"), context,
                 sm.output.validation, sm.params.known_abstention)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
