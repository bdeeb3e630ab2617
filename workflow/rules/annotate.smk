rule annotate:
    input:
        model=f"results/models/{ANNOTATE_METHOD}/final",
        queries=expand("results/data/raw/{dataset}.h5ad", dataset=QUERIES),
        members=annotate_member_tables,
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
    log:
        "results/logs/annotate.log",
    benchmark:
        "results/benchmarks/annotate.tsv"
    conda:
        method_env(ANNOTATE_METHOD)
    params:
        settings=config["annotate"],
        target_sum=config["qc"]["target_sum"],
        store=config["store"],
        members_per_query=len(CONSENSUS_MEMBERS),
    script:
        "../../scripts/annotate.py"


rule annotate_member:
    input:
        model="results/models/{method}/final",
        query="results/data/raw/{query}.h5ad",
    output:
        temp("results/annotate/members/{method}/{query}.tsv"),
    log:
        "results/logs/annotate/{method}/{query}.log",
    benchmark:
        "results/benchmarks/annotate/{method}/{query}.tsv"
    wildcard_constraints:
        method=one_of(MEMBER_METHODS),
    conda:
        env_of_method
    params:
        settings=config["annotate"],
        target_sum=config["qc"]["target_sum"],
        store=config["store"],
    script:
        "../../scripts/annotate_member.py"


rule annotation_summary:
    input:
        annotated=expand("results/annotate/{query}.h5ad", query=QUERIES),
    output:
        pages=[
            report(
                path,
                caption="../report/annotation_summary.rst",
                category="Annotation",
            )
            for path in expand("results/annotate/{query}.summary.html", query=QUERIES)
        ],
        figures=expand("results/annotate/{query}.summary.png", query=QUERIES),
    log:
        "results/logs/annotation_summary.log",
    benchmark:
        "results/benchmarks/annotation_summary.tsv"
    conda:
        "../../envs/sklearn.yaml"
    params:
        target_sum=config["qc"]["target_sum"],
        store=config["store"],
        seed=config["annotate"]["seed"],
    script:
        "../../scripts/annotation_summary.py"
