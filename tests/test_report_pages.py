"""The report's first pages: what was run and the benchmark summary, as HTML tables built from the run's tables."""

from __future__ import annotations

import pandas as pd

from sclabel.report_pages import run_page, summary_page, summary_wide


def summary_rows(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    """summary.tsv rows (method, metric, mean) on one cv scheme, sd 0.01."""
    return pd.DataFrame([{"method": m, "scheme": "cv", "metric": k, "mean": v, "sd": 0.01, "n_splits": 5,
                          "mean_sd": f"{v:.3f} ± 0.010"} for m, k, v in rows])


SUMMARY = summary_rows([("logreg", "known_kappa", 0.85), ("mlp", "known_kappa", 0.87), ("logreg", "rare_f1", 0.6),
                        ("mlp", "rare_f1", 0.4), ("logreg", "known_abstention", 0.02),
                        ("mlp", "known_abstention", 0.08)])
PAIRED = pd.DataFrame([{"scheme": "cv", "method": "mlp", "best_peer": "celltypist", "metric": "known_kappa",
                        "n_splits": 5, "mean_difference": 0.0123, "sd_difference": 0.02, "wins": 4, "losses": 1,
                        "ties": 0, "sign_test_p": 0.375}])


def test_summary_marks_the_best_mean_of_each_metric_and_sorts_by_kappa():
    table, best = summary_wide(SUMMARY)
    assert table["method"].tolist() == ["mlp", "logreg"]  # by known_kappa, highest first
    marked = {(table.at[i, "method"], column) for i in best.index for column in best.columns if best.at[i, column]}
    assert marked == {("mlp", "known_kappa"), ("logreg", "rare_f1")}  # abstention is not ranked
    assert table.at[0, "known_kappa"] == "0.870 ± 0.010"


def test_summary_page_holds_the_table_the_marks_and_the_paired_comparison():
    html = summary_page(SUMMARY, PAIRED)
    assert '<table class="sortable" id="summary">' in html and '<table class="sortable" id="paired">' in html
    assert html.count('<td class="best">') == 2 and "0.012" in html and "celltypist" in html


def test_run_page_lists_datasets_splits_and_methods_with_versions():
    genes = pd.DataFrame({"dataset": ["pbmc <68k>"], "cells": [700], "genes": [765]})
    classes = pd.DataFrame({"split": ["cv1", "cv1", "cv2"], "cell_type": ["B", "T", "B"], "train": [10, 20, 12],
                            "val": [1, 2, 1], "test": [3, 5, 2]})
    methods = pd.DataFrame({"name": ["logreg"], "family": ["baseline"], "description": ["L2 logistic regression"],
                            "package": ["scikit-learn"], "version": ["1.7.2"], "rejection_rule": ["never"],
                            "configured_settings": ['{"C": [0.1, 1.0]}']})
    html = run_page(genes, classes, methods, {"scheme": "cv", "n_folds": 2, "val_fraction": 0.1, "seed": 0})
    assert "2-fold stratified cross-validation" in html and "2 splits" in html
    assert "pbmc &lt;68k&gt;" in html  # escaped
    assert "<td>30</td>" in html and "1.7.2" in html and "{&quot;C&quot;: [0.1, 1.0]}" in html


def test_summary_page_says_so_when_no_peer_ran():
    html = summary_page(SUMMARY, PAIRED.iloc[:0].astype(object))
    assert 'id="summary"' in html and 'id="paired"' not in html and "No peer" in html


def test_landing_tables_bold_the_best_mean_and_show_names_and_settings_as_literals():
    from sclabel.report_pages import landing_methods, landing_summary

    shown = landing_summary(SUMMARY)
    assert list(shown.columns) == ["scheme", "method", "known_kappa", "rare_f1", "known_abstention"]
    assert shown["method"].tolist() == ["``mlp``", "``logreg``"]
    assert shown.loc[0, "known_kappa"] == "**0.870 ± 0.010**" and shown.loc[1, "known_kappa"] == "0.850 ± 0.010"
    assert shown.loc[1, "rare_f1"] == "**0.600 ± 0.010**" and "**" not in shown.loc[0, "known_abstention"]
    methods = pd.DataFrame({"name": ["kmeans+mlp"], "family": ["neural"], "package": ["sclabel"],
                            "version": ["0.1"], "configured_settings": ["{'lr': 0.001,\n 'note': `x`}"],
                            "rejection_rule": ["entropy"]})
    table = landing_methods(methods)
    assert list(table.columns) == ["method", "family", "package", "version", "settings"]
    assert table.iloc[0].tolist() == ["``kmeans+mlp``", "``neural``", "``sclabel``", "``0.1``",
                                      "``{'lr': 0.001, 'note': 'x'}``"]
