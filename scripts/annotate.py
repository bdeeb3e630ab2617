"""Snakemake step: annotate new datasets with the final model of any registered method (in that method's env)."""

from sclabel.annotate import annotate_stage
from sclabel.runner import run_step


def main(sm) -> None:
    members, per_query = list(sm.input.members), sm.params.members_per_query
    member_files = [members[i:i + per_query] for i in range(0, len(members), per_query)]
    annotate_stage(sm.input.model, list(sm.input.queries), sm.params.settings, sm.params.target_sum,
                   list(sm.output.annotated), sm.output.summary, sm.params.store["chunk_cells"], member_files)


run_step(snakemake, main)  # noqa: F821 (injected by Snakemake)
