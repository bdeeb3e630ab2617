# Classical baselines and controls (sclabel.baselines) and classical classifiers on a pretrained embedding
# (sclabel.embedding_baselines), each run through sclabel.method_stage: the fitted model is saved under
# results/models/{method}/{split} (skops, no pickle); CV / LODO splits also write test predictions. The final
# models (trained on the final split's train + val cells) are what interpretation reads.
BASELINE_PARAMS = {
    "settings": lambda wildcards: config["baseline"].get(registry.base_name(wildcards.method), {}),
    "seed": config["baseline"]["seed"],
    "store": config["store"],
    "target_sum": config["qc"]["target_sum"],
    "known_abstention": config["abstention"]["known_rate"],
}
EMBEDDING = config["baseline"]["embedding"]
EMBEDDING_PARAMS = {
    **BASELINE_PARAMS,
    "batch_size": config["pretrain"][EMBEDDING.split("+")[0]]["batch_size"],
}


rule baseline:
    input:
        h5ad=method_matrix,
        splits="results/splits/splits.tsv",
    output:
        model=directory("results/models/{method}/{split}"),
        validation="results/validation/{method}/{split}.tsv",
        predictions="results/predictions/{method}/{split}.tsv",
    log:
        "results/logs/baseline/{method}/{split}.log",
    benchmark:
        "results/benchmarks/baseline/{method}/{split}.tsv"
    wildcard_constraints:
        method=one_of(PLAIN_BASELINES),
        split=names_of_splits.SCORED_SPLIT,
    conda:
        "../../envs/sklearn.yaml"
    threads: 1
    params:
        **BASELINE_PARAMS,
    script:
        "../../scripts/baseline.py"


rule baseline_final:
    input:
        h5ad=method_matrix,
        splits="results/splits/splits.tsv",
    output:
        model=directory("results/models/{method}/final"),
        validation="results/validation/{method}/final.tsv",
    log:
        "results/logs/baseline/{method}/final.log",
    benchmark:
        "results/benchmarks/baseline/{method}/final.tsv"
    wildcard_constraints:
        method=one_of(PLAIN_BASELINES),
    conda:
        "../../envs/sklearn.yaml"
    threads: 1
    params:
        **BASELINE_PARAMS,
    script:
        "../../scripts/baseline.py"


rule embedding_baseline:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
        encoder=pretrained_file(EMBEDDING),
    output:
        model=directory("results/models/{method}/{split}"),
        validation="results/validation/{method}/{split}.tsv",
        predictions="results/predictions/{method}/{split}.tsv",
    log:
        "results/logs/baseline/{method}/{split}.log",
    benchmark:
        "results/benchmarks/baseline/{method}/{split}.tsv"
    wildcard_constraints:
        method=one_of(EMBEDDING_BASELINES),
        split=names_of_splits.SCORED_SPLIT,
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        **EMBEDDING_PARAMS,
    script:
        "../../scripts/embedding_baseline.py"


rule embedding_baseline_final:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
        encoder=f"results/pretrain/{EMBEDDING}/final/encoder.pt",
    output:
        model=directory("results/models/{method}/final"),
        validation="results/validation/{method}/final.tsv",
    log:
        "results/logs/baseline/{method}/final.log",
    benchmark:
        "results/benchmarks/baseline/{method}/final.tsv"
    wildcard_constraints:
        method=one_of(EMBEDDING_BASELINES),
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        **EMBEDDING_PARAMS,
    script:
        "../../scripts/embedding_baseline.py"
