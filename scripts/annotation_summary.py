"""Snakemake step: the summary page (HTML) and figure (PNG) of every annotated query."""

from sclabel.annotation_summary import annotation_summary_stage
from sclabel.runner import run_step


def main(sm) -> None:
    annotation_summary_stage(list(sm.input.annotated), list(sm.output.pages), list(sm.output.figures),
                             sm.params.target_sum, sm.params.store["chunk_cells"], sm.params.seed)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
