rule qc:
    input:
        "results/data/raw/{dataset}.h5ad",
    output:
        h5ad="results/data/qc/{dataset}.h5ad",
        table="results/qc/{dataset}.tsv",
    log:
        "results/logs/qc/{dataset}.log",
    benchmark:
        "results/benchmarks/qc/{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        settings=config["qc"],
        chunk_cells=config["store"]["chunk_cells"],
    script:
        "../../scripts/qc.py"


rule harmonise:
    input:
        qc=expand("results/data/qc/{dataset}.h5ad", dataset=DATASETS),
        maps=list(ONTOLOGY_MAPS.values()),
    output:
        h5ad="results/data/combined.h5ad",
        table="results/qc/genes.tsv",
        ontology="results/qc/ontology.tsv",
    log:
        "results/logs/harmonise.log",
    benchmark:
        "results/benchmarks/harmonise.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        names=DATASETS,
        ontology_maps=ONTOLOGY_MAPS,
        settings=config["harmonise"],
        target_sum=config["qc"]["target_sum"],
        chunk_cells=config["store"]["chunk_cells"],
    script:
        "../../scripts/harmonise.py"
