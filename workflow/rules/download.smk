rule download:
    output:
        "results/data/raw/{dataset}.h5ad",
    params:
        spec=lambda wildcards: dataset_spec(wildcards.dataset),
        settings=config["download"],
        download_dir=lambda wildcards: f"resources/downloads/{wildcards.dataset}",
        chunk_cells=config["store"]["chunk_cells"],
    log:
        "results/logs/download/{dataset}.log",
    benchmark:
        "results/benchmarks/download/{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/download.py"
