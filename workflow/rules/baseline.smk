rule baseline:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
    output:
        "results/predictions/{method}/{split}.tsv",
    wildcard_constraints:
        method=one_of(PLAIN_BASELINES),
        split=r"cv[0-9]+|lodo_[A-Za-z0-9_-]+",
    params:
        settings=lambda wildcards: config["baseline"].get(wildcards.method, {}),
        seed=config["baseline"]["seed"],
        chunk_cells=config["store"]["chunk_cells"],
    log:
        "results/logs/baseline/{method}/{split}.log",
    benchmark:
        "results/benchmarks/baseline/{method}/{split}.tsv"
    threads: 1
    conda:
        "../../envs/sklearn.yaml"
    script:
        "../../scripts/baseline.py"


rule embedding_baseline:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
        encoder=f"results/pretrain/{config['baseline']['embedding']}/{{split}}/encoder.pt",
    output:
        "results/predictions/{method}/{split}.tsv",
    wildcard_constraints:
        method=one_of(EMBEDDING_BASELINES),
        split=r"cv[0-9]+|lodo_[A-Za-z0-9_-]+",
    params:
        settings=lambda wildcards: config["baseline"].get(wildcards.method, {}),
        seed=config["baseline"]["seed"],
        batch_size=config["pretrain"][config["baseline"]["embedding"].split("+")[0]]["batch_size"],
        store=config["store"],
    log:
        "results/logs/baseline/{method}/{split}.log",
    benchmark:
        "results/benchmarks/baseline/{method}/{split}.tsv"
    threads: 1
    conda:
        "../../envs/torch.yaml"
    script:
        "../../scripts/embedding_baseline.py"
