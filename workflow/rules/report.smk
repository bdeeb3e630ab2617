rule report_figures:
    input:
        metrics="results/benchmark/metrics.tsv",
        confusion="results/benchmark/confusion.tsv",
        per_class="results/benchmark/per_class.tsv",
        label_efficiency="results/benchmark/label_efficiency.tsv" if LABEL_SWEEP else [],
    output:
        # a split.label_fractions sweep: kappa and macro F1 against the label fraction, and the pretraining effect
        **(
            {
                "label_efficiency": report(
                    "results/report/label_efficiency.png",
                    caption="../report/label_efficiency.rst",
                    category="2. Benchmark",
                )
            }
            if LABEL_SWEEP
            else {}
        ),
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
    log:
        "results/logs/report_figures.log",
    benchmark:
        "results/benchmarks/report_figures.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        methods=METHODS,
        settings=config["report"],
    script:
        "../../scripts/report_figures.py"


rule report_pages:
    input:
        summary="results/benchmark/summary.tsv",
        paired="results/benchmark/paired.tsv",
        methods="results/benchmark/methods.tsv",
        genes="results/qc/genes.tsv",
        classes="results/splits/class_counts.tsv",
    output:
        run=report(
            "results/report/run.html",
            caption="../report/run.rst",
            category="1. Run",
        ),
        summary=report(
            "results/report/summary.html",
            caption="../report/summary_page.rst",
            category="2. Benchmark",
        ),
        # the same summary and the methods as the landing page's tables (workflow/report/workflow.rst)
        summary_table=report(
            "results/report/summary_table.tsv",
            caption="../report/summary_table.rst",
            category="2. Benchmark",
        ),
        methods_table=report(
            "results/report/methods_table.tsv",
            caption="../report/methods_table.rst",
            category="1. Run",
        ),
    log:
        "results/logs/report_pages.log",
    benchmark:
        "results/benchmarks/report_pages.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        split=config["split"],
    script:
        "../../scripts/report_pages.py"
