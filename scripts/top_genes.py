"""Snakemake step: rank genes per cell type for one method (attention, attention masks, gradient × input,
coefficients or Wilcoxon)."""

import torch

from sclabel.explain import top_genes_stage
from sclabel.runner import run_step


def main(sm) -> None:
    torch.set_num_threads(sm.threads)
    top_genes_stage(sm.wildcards.method, sm.params.seed, sm.input.h5ad, sm.input.model or None, sm.output[0],
                    sm.params.max_cells_per_type)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
