"""Snakemake step: annotate new datasets with a trained model."""

import torch

from sclabel.runner import run_step
from sclabel.training import annotate_stage


def main(sm) -> None:
    torch.set_num_threads(sm.threads)
    annotate_stage(sm.input.model, list(sm.input.queries), sm.params.settings, sm.params.target_sum,
                   list(sm.output.annotated), sm.output.summary, sm.params.store["chunk_cells"])


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
