rule download:
    output:
        "results/data/raw/{dataset}.h5ad",
    log:
        "results/logs/download/{dataset}.log",
    benchmark:
        "results/benchmarks/download/{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wildcards: dataset_spec(wildcards.dataset),
        settings=config["download"],
        download_dir=lambda wildcards: f"resources/downloads/{wildcards.dataset}",
        chunk_cells=config["store"]["chunk_cells"],
    script:
        "../../scripts/download.py"
