# Published annotators as peers: same preprocessed matrix, same splits, same prediction contract as every method.
# One rule per peer, each in its own conda env (CellTypist 1.7.1 needs scikit-learn < 1.8 for its default solver).


rule peer_celltypist:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
    output:
        "results/predictions/celltypist/{split}.tsv",
    wildcard_constraints:
        split=r"cv[0-9]+|lodo_[A-Za-z0-9_-]+",
    params:
        peer="celltypist",
        settings=config["peers"]["celltypist"],
        seed=config["peers"]["seed"],
        target_sum=config["qc"]["target_sum"],
        chunk_cells=config["store"]["chunk_cells"],
    log:
        "results/logs/peers/celltypist/{split}.log",
    benchmark:
        "results/benchmarks/peers/celltypist/{split}.tsv"
    threads: config["peers"]["threads"]
    conda:
        "../../envs/celltypist.yaml"
    script:
        "../../scripts/peer.py"


rule peer_singler:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
    output:
        "results/predictions/singler/{split}.tsv",
    wildcard_constraints:
        split=r"cv[0-9]+|lodo_[A-Za-z0-9_-]+",
    params:
        peer="singler",
        settings=config["peers"]["singler"],
        seed=config["peers"]["seed"],
        target_sum=config["qc"]["target_sum"],
        chunk_cells=config["store"]["chunk_cells"],
    log:
        "results/logs/peers/singler/{split}.log",
    benchmark:
        "results/benchmarks/peers/singler/{split}.tsv"
    threads: config["peers"]["threads"]
    conda:
        "../../envs/singler.yaml"
    script:
        "../../scripts/peer.py"
