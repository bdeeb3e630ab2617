"""Snakemake step: rank genes per predicted cell type by mean SHAP value of one method's final model."""

import torch

from sclabel.explain import shap_top_genes_stage
from sclabel.runner import run_step


def main(sm) -> None:
    torch.set_num_threads(sm.threads)
    shap_top_genes_stage(sm.wildcards.method, sm.params.seed, sm.input.h5ad, sm.input.splits, sm.input.model,
                         sm.output[0], sm.params.settings)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
