rule top_genes:
    input:
        h5ad="results/data/combined.h5ad",
        model=model_for_interpretation,
    output:
        report(
            "results/interpret/top_genes/{method}.tsv",
            caption="../report/top_genes.rst",
            category="Interpretation",
            subcategory="Top genes",
        ),
    log:
        "results/logs/top_genes/{method}.log",
    benchmark:
        "results/benchmarks/top_genes/{method}.tsv"
    wildcard_constraints:
        method=one_of(INTERPRET_METHODS),
    conda:
        "../../envs/interpret.yaml"
    params:
        seed=config["baseline"]["seed"],
        max_cells_per_type=config["interpret"]["max_cells_per_type"],
    script:
        "../../scripts/top_genes.py"


rule shap_top_genes:
    input:
        h5ad="results/data/combined.h5ad",
        splits="results/splits/splits.tsv",
        model="results/models/{method}/final",
    output:
        report(
            "results/interpret/top_genes/{method}.shap.tsv",
            caption="../report/shap_top_genes.rst",
            category="Interpretation",
            subcategory="Top genes",
        ),
    log:
        "results/logs/top_genes/{method}.shap.log",
    benchmark:
        "results/benchmarks/top_genes/{method}.shap.tsv"
    wildcard_constraints:
        method=one_of(SHAP_METHODS),
    conda:
        "../../envs/interpret.yaml"
    params:
        seed=config["baseline"]["seed"],
        settings=config["interpret"]["shap"],
    script:
        "../../scripts/shap_top_genes.py"


# {method} is a ranking: a method's native one (mlp) or its SHAP one (mlp.shap)
rule enrich:
    input:
        ranking="results/interpret/top_genes/{method}.tsv",
        h5ad="results/data/combined.h5ad",
    output:
        report(
            directory("results/interpret/enrichment/{method}"),
            patterns=["{name}.png", "{name}.tsv"],
            caption="../report/enrichment.rst",
            category="Interpretation",
            subcategory="Enrichment",
        ),
    log:
        "results/logs/enrich/{method}.log",
    benchmark:
        "results/benchmarks/enrich/{method}.tsv"
    conda:
        "../../envs/interpret.yaml"
    params:
        libraries=config["interpret"]["libraries"],
        top_n=config["interpret"]["top_n"],
    script:
        "../../scripts/enrichment.py"


rule marker_recall:
    input:
        rankings=expand("results/interpret/top_genes/{ranking}.tsv", ranking=RANKINGS),
        h5ad="results/data/combined.h5ad",
    output:
        table="results/interpret/marker_recall.tsv",
        figure=report(
            "results/interpret/marker_recall.png",
            caption="../report/marker_recall.rst",
            category="Interpretation",
        ),
    log:
        "results/logs/marker_recall.log",
    benchmark:
        "results/benchmarks/marker_recall.tsv"
    conda:
        "../../envs/interpret.yaml"
    params:
        settings={k: config["interpret"][k] for k in ("marker_table", "marker_species", "cell_type_map", "recall_ks")},
    script:
        "../../scripts/marker_recall.py"


rule pseudobulk_de:
    input:
        "results/data/combined.h5ad",
    output:
        table="results/interpret/pseudobulk_de.tsv",
        skipped="results/interpret/pseudobulk_skipped.tsv",
        figure=report(
            "results/interpret/pseudobulk_volcano.png",
            caption="../report/pseudobulk.rst",
            category="Interpretation",
        ),
    log:
        "results/logs/pseudobulk_de.log",
    benchmark:
        "results/benchmarks/pseudobulk_de.tsv"
    conda:
        "../../envs/interpret.yaml"
    threads: 1
    params:
        settings=config["interpret"]["de"],
        chunk_cells=config["store"]["chunk_cells"],
    script:
        "../../scripts/pseudobulk.py"
