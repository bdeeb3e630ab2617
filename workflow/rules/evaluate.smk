rule evaluate:
    input:
        predictions=prediction_files,
        class_counts="results/splits/class_counts.tsv",
        ontology="results/qc/ontology.tsv",
    output:
        **(
            {
                "label_efficiency": report(
                    "results/benchmark/label_efficiency.tsv",
                    caption="../report/label_efficiency_table.rst",
                    category="2. Benchmark",
                )
            }
            if LABEL_SWEEP
            else {}
        ),
        metrics="results/benchmark/metrics.tsv",
        summary=report(
            "results/benchmark/summary.tsv",
            caption="../report/summary.rst",
            category="Benchmark",
        ),
        per_class="results/benchmark/per_class.tsv",
        confusion="results/benchmark/confusion.tsv",
        paired=report(
            "results/benchmark/paired.tsv",
            caption="../report/paired.rst",
            category="Benchmark",
        ),
        pretraining=report(
            "results/benchmark/pretraining.tsv",
            caption="../report/pretraining.rst",
            category="Benchmark",
        ),
        variants=report(
            "results/benchmark/variants.tsv",
            caption="../report/variants.rst",
            category="Benchmark",
        ),
        # a split.label_fractions sweep: the curves of every method over the label fractions
    log:
        "results/logs/evaluate.log",
    benchmark:
        "results/benchmarks/evaluate.tsv"
    conda:
        "../../envs/sklearn.yaml"
    params:
        settings=config["evaluate"],
    script:
        "../../scripts/evaluate.py"


rule methods_table:
    output:
        report(
            "results/benchmark/methods.tsv",
            caption="../report/methods.rst",
            category="Benchmark",
        ),
    log:
        "results/logs/methods_table.log",
    benchmark:
        "results/benchmarks/methods_table.tsv"
    conda:
        "../../envs/sklearn.yaml"
    params:
        rows=registry.method_rows(METHODS, config),
        envs=f"{SCLABEL_ROOT}/envs",
    script:
        "../../scripts/methods_table.py"


rule selections:
    input:
        # written by the jobs that save the models; a forced rerun rewriting the same model changes neither
        expand("results/validation/{method}/{split}.tsv", method=TRAINED_METHODS, split=SPLITS),
    output:
        report(
            "results/benchmark/selections.tsv",
            caption="../report/selections.rst",
            category="Benchmark",
        ),
    log:
        "results/logs/selections.log",
    benchmark:
        "results/benchmarks/selections.tsv"
    conda:
        "../../envs/sklearn.yaml"
    params:
        models=expand("results/models/{method}/{split}", method=TRAINED_METHODS, split=SPLITS),
    script:
        "../../scripts/selections_table.py"
