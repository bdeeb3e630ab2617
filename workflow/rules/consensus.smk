# The consensus of the benchmarked methods (sclabel.consensus): weighted per class by each member's F1 on the
# split's validation cells, which no member was fitted on; it combines the members' prediction tables, so it needs
# none of their envs. The members' model folders (written by the jobs that wrote their predictions) are recorded,
# not inputs: a rerun that rewrites a folder with the same model must not rerun the consensus.
CONSENSUS_PARAMS = {
    "settings": config["consensus"],
    "known_abstention": config["abstention"]["known_rate"],
}


rule consensus:
    input:
        validation=consensus_inputs("validation"),
        predictions=consensus_inputs("predictions"),
    output:
        model=directory("results/models/consensus/{split}"),
        predictions="results/predictions/consensus/{split}.tsv",
    log:
        "results/logs/consensus/{split}.log",
    benchmark:
        "results/benchmarks/consensus/{split}.tsv"
    wildcard_constraints:
        split=names_of_splits.SCORED_SPLIT,
    conda:
        "../../envs/sklearn.yaml"
    params:
        **CONSENSUS_PARAMS,
        models=consensus_inputs("models"),
    script:
        "../../scripts/consensus.py"


rule consensus_final:
    input:
        validation=consensus_inputs("validation"),
    output:
        model=directory("results/models/consensus/final"),
    log:
        "results/logs/consensus/final.log",
    benchmark:
        "results/benchmarks/consensus/final.tsv"
    conda:
        "../../envs/sklearn.yaml"
    params:
        **CONSENSUS_PARAMS,
        models=consensus_inputs("models"),
    script:
        "../../scripts/consensus.py"
