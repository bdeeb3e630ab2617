# Published annotators as peers: same preprocessed matrix, same splits, same prediction contract as every method.
# One rule for every peer, each method in its own conda env (the registry's env: CellTypist 1.7.1 needs
# scikit-learn < 1.8 for its default solver); the fitted model is saved like any method's (results/models).
PEER_PARAMS = {
    "settings": lambda wildcards: config["peers"][wildcards.method],
    "seed": config["peers"]["seed"],
    "target_sum": config["qc"]["target_sum"],
    "chunk_cells": config["store"]["chunk_cells"],
    "known_abstention": config["abstention"]["known_rate"],
}


rule peer:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
    output:
        model=directory("results/models/{method}/{split}"),
        validation="results/validation/{method}/{split}.tsv",
        predictions="results/predictions/{method}/{split}.tsv",
    log:
        "results/logs/peers/{method}/{split}.log",
    benchmark:
        "results/benchmarks/peers/{method}/{split}.tsv"
    wildcard_constraints:
        method=one_of(PEERS),
        split=names_of_splits.SCORED_SPLIT,
    conda:
        env_of_method
    threads: config["peers"]["threads"]
    params:
        **PEER_PARAMS,
    script:
        "../../scripts/peer.py"


rule peer_final:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
    output:
        model=directory("results/models/{method}/final"),
        validation="results/validation/{method}/final.tsv",
    log:
        "results/logs/peers/{method}/final.log",
    benchmark:
        "results/benchmarks/peers/{method}/final.tsv"
    wildcard_constraints:
        method=one_of(PEERS),
    conda:
        env_of_method
    threads: config["peers"]["threads"]
    params:
        **PEER_PARAMS,
    script:
        "../../scripts/peer.py"
