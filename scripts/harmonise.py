"""Snakemake step: map labels to the Cell Ontology, combine the QC'd datasets on harmonised gene names by chunks."""

from sclabel.ontology import label_stage
from sclabel.qc import harmonise_stage
from sclabel.runner import run_step


def main(sm) -> None:
    relabel = label_stage(list(sm.input.qc), sm.params.names, sm.params.ontology_maps, sm.params.settings["labels"],
                          sm.output.ontology)
    harmonise_stage(list(sm.input.qc), sm.params.names, sm.params.settings, sm.params.target_sum,
                    sm.output.h5ad, sm.output.table, sm.params.chunk_cells, relabel)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
