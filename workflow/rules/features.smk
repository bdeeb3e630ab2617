# Feature selection (sclabel.features, scaLR's scheme): per split, linear models on chunks of genes fitted on its
# training cells rank the genes; the top features.top_k are written with their scores, and the split's cells over
# those genes form the matrix the <method>@top variants train and predict on (temp: rebuilt when a variant needs it).
rule select_features:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
    output:
        genes="results/features/{split}.tsv",
        h5ad=temp("results/features/{split}.h5ad"),
    log:
        "results/logs/select_features/{split}.log",
    benchmark:
        "results/benchmarks/select_features/{split}.tsv"
    conda:
        "../../envs/sklearn.yaml"
    threads: 1
    params:
        settings=config["features"],
        store=config["store"],
        renormalise=config["harmonise"]["renormalise"],
        target_sum=config["qc"]["target_sum"],
    script:
        "../../scripts/select_features.py"
