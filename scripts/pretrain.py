"""Snakemake step: self-supervised pretraining of an encoder for one split (labels are never read)."""

import torch

from sclabel.runner import run_step
from sclabel.training import pretrain_stage


def main(sm) -> None:
    torch.set_num_threads(sm.threads)
    pretrain_stage(sm.wildcards.pretrain, sm.wildcards.encoder, sm.params.encoder_hparams, sm.params.settings,
                   sm.params.store, sm.input.h5ad, sm.input.splits, sm.wildcards.split, sm.output.encoder,
                   sm.output.history)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
