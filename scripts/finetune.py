"""Snakemake step: fine-tune a classifier for one split; write the model, its validation and (CV / LODO) test predictions."""

import torch

from sclabel.runner import run_step
from sclabel.training import finetune_stage


def main(sm) -> None:
    torch.set_num_threads(sm.threads)
    finetune_stage(sm.wildcards.method, sm.params.encoder_hparams, sm.params.settings, sm.params.preprocessing,
                   sm.input.h5ad, sm.input.splits, sm.wildcards.get("split", "final"), sm.input.pretrained or None,
                   sm.params.checkpoints, sm.output.model, sm.output.get("predictions"), sm.params.store,
                   sm.output.validation, sm.params.known_abstention)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
