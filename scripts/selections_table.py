"""Snakemake step: write selections.tsv, what each model chose on its split's validation cells."""

from sclabel.evaluation import selections_table
from sclabel.io import write_tsv
from sclabel.runner import run_step


def main(sm) -> None:
    write_tsv(selections_table(list(sm.params.models)), sm.output[0])


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
