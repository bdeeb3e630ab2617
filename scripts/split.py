"""Snakemake step: write the train / validation / test role of every labelled cell in every split."""

from sclabel.splits import split_stage
from sclabel.runner import run_step


def main(sm) -> None:
    split_stage(sm.input[0], sm.params.settings, sm.output.splits, sm.output.classes)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
