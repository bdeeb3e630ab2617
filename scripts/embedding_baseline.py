"""Snakemake step: a classical baseline on a split's pretrained embedding."""

import torch

from sclabel.runner import run_step
from sclabel.training import embedding_baseline_stage


def main(sm) -> None:
    torch.set_num_threads(sm.threads)
    embedding_baseline_stage(sm.wildcards.method, sm.params.settings, sm.params.seed, sm.input.h5ad,
                             sm.input.splits, sm.wildcards.split, sm.input.encoder, sm.output[0], sm.params.batch_size,
                             sm.params.store["chunk_cells"])


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
