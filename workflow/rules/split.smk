rule split:
    input:
        "results/data/combined.h5ad",
    output:
        splits="results/splits/splits.tsv",
        classes="results/splits/class_counts.tsv",
    log:
        "results/logs/split.log",
    benchmark:
        "results/benchmarks/split.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        settings=config["split"],
    script:
        "../../scripts/split.py"
