"""Snakemake step: draw the report's figures (kappa per method and split, confusion matrices; in a label-fraction
sweep, the label-efficiency curves)."""

from sclabel.plots import report_stage
from sclabel.runner import run_step


def main(sm) -> None:
    report_stage(sm.input.metrics, sm.input.confusion, sm.input.per_class, sm.params.methods,
                 sm.params.settings["dpi"], sm.output.kappa, sm.output.per_class, list(sm.output.confusions),
                 sm.input.get("label_efficiency"), sm.output.get("label_efficiency"))


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
