rule annotate:
    input:
        model=f"results/models/{ANNOTATE_METHOD}/final",
        queries=expand("results/data/raw/{dataset}.h5ad", dataset=QUERIES),
    output:
        annotated=[
            report(path, category="Annotation", caption="../report/annotate.rst")
            for path in expand("results/annotate/{query}.h5ad", query=QUERIES)
        ],
        summary=report(
            "results/annotate/summary.tsv",
            caption="../report/annotate.rst",
            category="Annotation",
        ),
    params:
        settings=config["annotate"],
        target_sum=config["qc"]["target_sum"],
        store=config["store"],
    log:
        "results/logs/annotate.log",
    benchmark:
        "results/benchmarks/annotate.tsv"
    conda:
        method_env(ANNOTATE_METHOD)
    script:
        "../../scripts/annotate.py"
