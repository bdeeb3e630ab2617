"""Snakemake step: the report's first pages, what was run and the benchmark summary (HTML)."""

from sclabel.report_pages import report_pages_stage
from sclabel.runner import run_step


def main(sm) -> None:
    report_pages_stage(sm.input.summary, sm.input.paired, sm.input.methods, sm.input.genes, sm.input.classes,
                       sm.params.split, sm.output.run, sm.output.summary, sm.output.summary_table,
                       sm.output.methods_table)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
