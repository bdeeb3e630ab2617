rule report_figures:
    input:
        metrics="results/benchmark/metrics.tsv",
        confusion="results/benchmark/confusion.tsv",
        per_class="results/benchmark/per_class.tsv",
    output:
        kappa=report(
            "results/report/kappa.png",
            caption="../report/kappa.rst",
            category="Benchmark",
        ),
        per_class=report(
            "results/report/per_class_f1.png",
            caption="../report/per_class_f1.rst",
            category="Benchmark",
        ),
        confusions=[
            report(path, caption="../report/confusion.rst", category="Confusion matrices")
            for path in expand("results/report/confusion/{method}.png", method=METHODS)
        ],
    params:
        methods=METHODS,
        settings=config["report"],
    log:
        "results/logs/report_figures.log",
    benchmark:
        "results/benchmarks/report_figures.tsv"
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/report_figures.py"
