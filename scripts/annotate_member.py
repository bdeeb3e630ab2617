"""Snakemake step: one consensus member's predictions on one query dataset (in the member's env)."""

from sclabel.annotate import member_stage
from sclabel.runner import run_step


def main(sm) -> None:
    member_stage(sm.input.model, [sm.input.query], sm.params.settings, sm.params.target_sum, [sm.output[0]],
                 sm.params.store["chunk_cells"])


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
