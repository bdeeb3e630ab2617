rule split:
    input:
        "results/data/combined.h5ad",
    output:
        splits="results/splits/splits.tsv",
        classes="results/splits/class_counts.tsv",
    params:
        settings=config["split"],
    log:
        "results/logs/split.log",
    benchmark:
        "results/benchmarks/split.tsv"
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/split.py"
