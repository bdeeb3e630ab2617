"""Snakemake step: recall of known markers within each method's top-k genes."""

from sclabel.explain import marker_recall_stage
from sclabel.runner import run_step


def main(sm) -> None:
    marker_recall_stage(list(sm.input.rankings), sm.input.h5ad, sm.params.settings, sm.output.table,
                        sm.output.figure)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
