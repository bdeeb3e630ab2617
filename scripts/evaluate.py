"""Snakemake step: score all predictions into metrics, summary, per-class, confusion, paired, pretraining and variants
tables (and the label-efficiency curves in a split.label_fractions sweep)."""

from sclabel.evaluation import evaluate_stage
from sclabel.ontology import finer_from_file
from sclabel.runner import run_step


def main(sm) -> None:
    evaluate_stage(list(sm.input.predictions), sm.input.class_counts, sm.params.settings, sm.output.metrics,
                   sm.output.summary, sm.output.per_class, sm.output.confusion, sm.output.paired,
                   sm.output.pretraining, sm.output.variants, finer_from_file(sm.input.ontology),
                   sm.output.get("label_efficiency"))


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
