"""Snakemake step: gseapy over-representation of each type's top genes in local gene-set libraries."""

from sclabel.explain import enrich_stage
from sclabel.runner import run_step


def main(sm) -> None:
    enrich_stage(sm.input.ranking, sm.input.h5ad, sm.params.libraries, sm.params.top_n, sm.output[0])


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
