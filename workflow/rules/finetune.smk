FINETUNE_PARAMS = {
    "encoder_hparams": encoder_settings,
    "settings": lambda wildcards: finetune_settings(wildcards.method),
    "preprocessing": {
        "normalisation": "log1p_cp10k",
        "target_sum": config["qc"]["target_sum"],
        "renormalise": config["harmonise"]["renormalise"],
    },
    "checkpoints": lambda wildcards: f"results/checkpoints/{wildcards.method}/{wildcards.get('split', 'final')}",
    "store": config["store"],
    "known_abstention": config["abstention"]["known_rate"],
}


rule finetune:
    input:
        h5ad=method_matrix,
        splits="results/splits/splits.tsv",
        pretrained=pretrained_encoder,
    output:
        model=directory("results/models/{method}/{split}"),
        validation="results/validation/{method}/{split}.tsv",
        predictions="results/predictions/{method}/{split}.tsv",
    log:
        "results/logs/finetune/{method}/{split}.log",
    benchmark:
        "results/benchmarks/finetune/{method}/{split}.tsv"
    wildcard_constraints:
        method=one_of(NEURAL_METHODS),
        split=names_of_splits.SCORED_SPLIT,
    conda:
        "../../envs/torch.yaml"
    threads: config["finetune"]["threads"]
    resources:
        gpu=gpu_resource("finetune"),
    params:
        **FINETUNE_PARAMS,
    script:
        "../../scripts/finetune.py"


rule train_final:
    input:
        h5ad=method_matrix,
        splits="results/splits/splits.tsv",
        pretrained=pretrained_encoder,
    output:
        model=directory("results/models/{method}/final"),
        validation="results/validation/{method}/final.tsv",
    log:
        "results/logs/finetune/{method}/final.log",
    benchmark:
        "results/benchmarks/finetune/{method}/final.tsv"
    wildcard_constraints:
        method=one_of(NEURAL_METHODS),
    conda:
        "../../envs/torch.yaml"
    threads: config["finetune"]["threads"]
    resources:
        gpu=gpu_resource("finetune"),
    params:
        **FINETUNE_PARAMS,
    script:
        "../../scripts/finetune.py"
