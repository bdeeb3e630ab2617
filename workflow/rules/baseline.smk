rule baseline:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
    output:
        "results/predictions/{method}/{split}.tsv",
    wildcard_constraints:
        method=one_of(BASELINE_METHODS),
        split=r"cv[0-9]+",
    params:
        settings=lambda wildcards: config["baseline"][wildcards.method],
        seed=config["baseline"]["seed"],
    log:
        "results/logs/baseline/{method}/{split}.log",
    benchmark:
        "results/benchmarks/baseline/{method}/{split}.tsv"
    threads: 1
    conda:
        "../../envs/sklearn.yaml"
    script:
        "../../scripts/baseline.py"
