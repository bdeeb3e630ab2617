"""Snakemake step: the consensus of the members' predictions on one split (weights from their validation ones)."""

from sclabel.consensus import consensus_stage
from sclabel.runner import run_step


def main(sm) -> None:
    consensus_stage(sm.input.validation, sm.params.models, sm.params.settings, sm.params.known_abstention,
                    sm.output.model, sm.input.get("predictions", []), sm.output.get("predictions"))


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
