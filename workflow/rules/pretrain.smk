rule pretrain:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
    output:
        encoder="results/pretrain/{pretrain}+{encoder}/{split}/encoder.pt",
        history="results/pretrain/{pretrain}+{encoder}/{split}/history.json",
    log:
        "results/logs/pretrain/{pretrain}+{encoder}/{split}.log",
    benchmark:
        "results/benchmarks/pretrain/{pretrain}+{encoder}/{split}.tsv"
    wildcard_constraints:
        split=rf"{names_of_splits.BASE_SPLIT}|final",  # never a label-fraction split: pretraining is its base's
        pretrain="kmeans|masked_bins",
        encoder="|".join(registry.ENCODERS),
    conda:
        "../../envs/torch.yaml"
    threads: config["pretrain"]["threads"]
    resources:
        gpu=gpu_resource("pretrain"),
    params:
        encoder_hparams=lambda wildcards: config["encoder"][wildcards.encoder],
        settings={**config["pretrain"], "device": torch_device("pretrain")},
        store=config["store"],
    script:
        "../../scripts/pretrain.py"
