"""The report's first pages as self-contained HTML: what was run (datasets, splits, methods, versions) and the
benchmark summary as a sortable table with the best method per metric marked and the paired comparison to the best
peer. Pure functions of the run's tables; ``report_pages_stage`` writes both files, and the summary and methods as
tables the report's landing page shows (reStructuredText cells: literal names, the best mean in bold).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import pandas as pd

from sclabel import __version__, io
from sclabel.split_names import group_columns

# the summary's columns, in reading order; for these a higher mean is better (known_abstention is not marked)
SUMMARY_METRICS = ("known_kappa", "known_macro_f1", "known_accuracy", "called_kappa", "rare_f1", "macro_auroc",
                   "novel_auroc", "novel_recall", "known_abstention")
HIGHER_IS_BETTER = frozenset(SUMMARY_METRICS) - {"known_abstention"}
# the landing page's narrower summary (beside Snakemake's rule graph): the headline, rare and novel types, abstention
LANDING_METRICS = ("known_kappa", "known_macro_f1", "rare_f1", "novel_auroc", "known_abstention")
METHOD_COLUMNS = {"name": "method", "family": "family", "description": "what it is", "package": "package",
                  "version": "version", "rejection_rule": "abstains when", "configured_settings": "settings"}
STYLE = """<style>
body { font-family: sans-serif; font-size: 14px; margin: 1em; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eee; cursor: pointer; }
td.best { font-weight: bold; background: #e6f4e6; }
</style>"""
# click a column header to sort the table by it (numbers by their leading value)
SORTER = """<script>
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const key = r => { const t = r.cells[col].innerText, n = parseFloat(t); return isNaN(n) ? t : n; };
  const up = th.dataset.up !== "1"; th.dataset.up = up ? "1" : "0";
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1));
  rows.forEach(r => body.appendChild(r));
}));
</script>"""


def html_table(frame: pd.DataFrame, marked: pd.DataFrame | None = None, table_id: str = "") -> str:
    """``frame`` as a sortable HTML table (text escaped); cells where ``marked`` is True get class ``best``."""
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in frame.columns)
    rows = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cells = []
        for j, value in enumerate(row):
            opening = '<td class="best">' if marked is not None and bool(marked.iat[i, j]) else "<td>"
            cells.append(f"{opening}{html.escape('' if pd.isna(value) else str(value))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def page(title: str, body: str) -> str:
    """A complete HTML page."""
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>{STYLE}</head>"
            f"<body><h1>{html.escape(title)}</h1>{body}{SORTER}</body></html>")


def summary_wide(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, best): one row per method and scheme (and label fraction, in a sweep), a column per summary metric
    (``mean ± sd``), and where each metric's best mean sits among the methods of that scheme (and fraction)."""
    metrics = [m for m in SUMMARY_METRICS if m in set(summary["metric"])]
    shown = summary[summary["metric"].isin(metrics)]
    groups = group_columns(summary)
    table = shown.pivot_table(index=[*groups, "method"], columns="metric", values="mean_sd", aggfunc="first")
    means = shown.pivot_table(index=[*groups, "method"], columns="metric", values="mean", aggfunc="first")
    table, means = table.reindex(columns=metrics), means.reindex(index=table.index, columns=metrics)
    best = pd.DataFrame(False, index=table.index, columns=metrics)
    for metric in HIGHER_IS_BETTER & set(metrics):
        top = means[metric].groupby(level=groups).transform("max")
        best[metric] = means[metric].notna() & (means[metric] == top)
    order = means["known_kappa"].sort_values(ascending=False).index if "known_kappa" in metrics else table.index
    if len(groups) > 1:  # a sweep: fractions in increasing order, methods by kappa within each
        order = sorted(order, key=lambda key: key[:-1])
    table, best = table.loc[order].reset_index(), best.loc[order].reset_index(drop=True)
    for column in reversed([*groups, "method"]):
        best.insert(0, column, False)
    return table, best


def summary_page(summary: pd.DataFrame, paired: pd.DataFrame) -> str:
    """The benchmark summary and the paired comparison of every method with the best peer, as one page."""
    table, best = summary_wide(summary)
    paired_shown = paired.round({"mean_difference": 3, "sd_difference": 3, "sign_test_p": 3})
    comparison = (html_table(paired_shown, table_id="paired") if len(paired)
                  else "<p>No peer (CellTypist, SingleR) was benchmarked in this run.</p>")
    body = ("<p>Mean ± sd over the test splits, methods sorted by <code>known_kappa</code>; the best mean of each "
            "metric per scheme is marked (<code>known_abstention</code> is not ranked). Click a header to sort. "
            "Metric definitions: the caption of <code>summary.tsv</code>.</p>"
            f"{html_table(table, best, 'summary')}<h2>Paired with the best peer</h2>"
            "<p>Per split, each method's metric minus the best peer's on the same test cells: mean and sd of the "
            "difference, wins/losses/ties over splits and a two-sided sign test.</p>"
            f"{comparison}")
    return page("sclabel benchmark summary", body)


def run_page(genes: pd.DataFrame, class_counts: pd.DataFrame, methods: pd.DataFrame,
             split_settings: Mapping[str, Any]) -> str:
    """What was run: datasets with cells and genes, the split scheme with its splits and test cells, and every
    method with its settings and the package version that ran it."""
    splits = class_counts.groupby("split")[["train", "val", "test"]].sum().reset_index()
    scheme = split_settings.get("scheme", "cv")
    scheme_text = (f"{split_settings.get('n_folds')}-fold stratified cross-validation" if scheme == "cv"
                   else f"leave one {split_settings.get('lodo_key', 'dataset')} out")
    shown = methods[[c for c in METHOD_COLUMNS if c in methods.columns]].rename(columns=METHOD_COLUMNS)
    body = (f"<p>sclabel {html.escape(__version__)}. Split scheme: {html.escape(scheme_text)}, "
            f"{len(splits)} splits (<code>final</code> trains the models that annotate and explain), validation "
            f"share {html.escape(str(split_settings.get('val_fraction')))} of the training cells, seed "
            f"{html.escape(str(split_settings.get('seed')))}.</p>"
            f"<h2>Datasets</h2>{html_table(genes, table_id='datasets')}"
            f"<h2>Splits (cells per role)</h2>{html_table(splits, table_id='splits')}"
            f"<h2>Methods</h2>{html_table(shown, table_id='methods')}")
    return page("sclabel run", body)


def rst_literal(value: Any) -> str:
    """A table cell shown as typed: an inline literal (backticks, which it cannot hold, become quotes)."""
    text = "" if pd.isna(value) else " ".join(str(value).replace("`", "'").split())
    return f"``{text}``" if text else ""


def landing_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary for the landing page (``LANDING_METRICS``): names as literals, each metric's best mean in bold."""
    table, best = summary_wide(summary)
    shown = table.astype(object).where(~best, "**" + table.astype(str) + "**")
    labels = [column for column in table.columns if column not in SUMMARY_METRICS]
    shown[labels] = table[labels].map(rst_literal)
    return shown[[*labels, *(m for m in LANDING_METRICS if m in table.columns)]].fillna("")


def landing_methods(methods: pd.DataFrame) -> pd.DataFrame:
    """Every method with its family, package, version and configured settings, for the landing page."""
    columns = [c for c in ("name", "family", "package", "version", "configured_settings") if c in methods.columns]
    return methods[columns].map(rst_literal).rename(columns=METHOD_COLUMNS)


def report_pages_stage(summary_file: str, paired_file: str, methods_file: str, genes_file: str,
                       class_counts_file: str, split_settings: Mapping[str, Any], output_run: str,
                       output_summary: str, output_summary_table: str, output_methods_table: str) -> None:
    """Write the report's run description and summary pages and the landing page's two tables."""
    genes = io.read_tsv(genes_file, ["dataset"])
    class_counts = io.read_tsv(class_counts_file, ["split", "cell_type"])
    methods = io.read_tsv(methods_file, ["name", "version", "configured_settings"])
    io.write_text(run_page(genes, class_counts, methods, split_settings), output_run)
    summary = io.read_tsv(summary_file, ["method", "scheme", "metric", "mean_sd"])
    paired = io.read_tsv(paired_file, ["scheme", "method", "best_peer", "metric"])
    io.write_text(summary_page(summary, paired), output_summary)
    io.write_tsv(landing_summary(summary), output_summary_table)
    io.write_tsv(landing_methods(methods), output_methods_table)

