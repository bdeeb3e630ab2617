"""Snakemake step: fetch or read one dataset and write it in sclabel's standard h5ad form."""

from sclabel.datasets import download_stage
from sclabel.runner import run_step


def main(sm) -> None:
    download_stage(sm.wildcards.dataset, sm.params.spec, sm.params.settings, sm.output[0], sm.params.download_dir,
                   sm.params.chunk_cells)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
