"""Over-representation analysis (gseapy, offline) of each cell type's top-ranked genes against local GMT libraries."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import gseapy
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sclabel.errors import InputError

RESULT_COLUMNS = ["library", "cell_type", "term", "overlap", "set_size", "p_value", "adjusted_p_value",
                  "odds_ratio", "genes"]
RANKING_COLUMNS = ["cell_type", "gene", "score", "rank"]
LABEL_WIDTH = 45  # characters per line of a term in the dot plot


def parse_gmt_line(line: str, path: Path, line_no: int) -> tuple[str, list[str]]:
    """One GMT line (``name<TAB>description<TAB>gene...``) as (name, unique genes in order)."""
    fields = line.rstrip("\r\n").split("\t")
    genes = list(dict.fromkeys(gene.strip() for gene in fields[2:] if gene.strip()))
    if not fields[0].strip() or not genes:
        raise InputError(path, f"line {line_no}", "not 'name<TAB>description<TAB>gene1<TAB>...' with at least one gene",
                         "write one gene set per line, tab-separated, as in the Enrichr/MSigDB GMT format")
    return fields[0].strip(), genes


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Gene sets of a GMT file as {term: genes}; one-line InputError if missing, empty or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "gmt", "file not found", "give the path of a local .gmt gene-set library")
    sets: dict[str, list[str]] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        name, genes = parse_gmt_line(line, path, line_no)
        if name in sets:
            raise InputError(path, f"line {line_no}", f"duplicate gene-set name {name!r}", "make set names unique")
        sets[name] = genes
    if not sets:
        raise InputError(path, "gmt", "no gene sets in file", "give a non-empty .gmt gene-set library")
    return sets


def restrict_gene_sets(gene_sets: Mapping[str, Sequence[str]], background: set[str],
                       min_set_size: int) -> dict[str, list[str]]:
    """Gene sets cut to the background genes, keeping those with at least ``min_set_size`` genes left."""
    restricted = {term: [gene for gene in genes if gene in background] for term, genes in gene_sets.items()}
    return {term: genes for term, genes in restricted.items() if len(genes) >= min_set_size}


def top_genes(ranking: pd.DataFrame, top_n: int) -> dict[str, list[str]]:
    """The ``top_n`` best-ranked (lowest ``rank``) genes of every cell type."""
    missing = [column for column in RANKING_COLUMNS if column not in ranking.columns]
    if missing:
        raise InputError("ranking", ", ".join(missing), "missing column(s) in the gene ranking",
                         f"give a table with columns {', '.join(RANKING_COLUMNS)}")
    ordered = ranking.sort_values(["cell_type", "rank"], kind="stable")
    return {str(cell_type): group["gene"].astype(str).head(top_n).tolist()
            for cell_type, group in ordered.groupby("cell_type", sort=True, observed=True)}


def ora(genes: Sequence[str], gene_sets: dict[str, list[str]], background: set[str]) -> pd.DataFrame | None:
    """gseapy hypergeometric test of ``genes`` against in-memory ``gene_sets``; None when no set overlaps."""
    if not genes or not gene_sets:
        return None
    # A dict (never a library name or .gmt path) and a set background (never a BioMart name) keep gseapy
    # offline; outdir=None with no_plot=True keeps it from writing reports, figures or logs.
    enr = gseapy.enrich(gene_list=list(genes), gene_sets=gene_sets, background=background, outdir=None,
                        no_plot=True, verbose=False)
    enr.close()
    return enr.res2d


def tidy_ora(raw: pd.DataFrame, library: str, cell_type: str, query: Sequence[str]) -> pd.DataFrame:
    """gseapy's result table in this module's column names, best term first, hit genes in query (rank) order."""
    position = {gene: i for i, gene in enumerate(query)}
    overlap = raw["Overlap"].astype(str).str.split("/", expand=True).astype(int)
    table = pd.DataFrame({
        "library": library,
        "cell_type": cell_type,
        "term": raw["Term"].astype(str),
        "overlap": overlap[0],
        "set_size": overlap[1],
        "p_value": raw["P-value"].astype(float),
        "adjusted_p_value": raw["Adjusted P-value"].astype(float),
        "odds_ratio": raw["Odds Ratio"].astype(float),
        "genes": [";".join(sorted(hits.split(";"), key=lambda gene: position.get(gene, len(position))))
                  for hits in raw["Genes"].astype(str)],
    })
    return table.sort_values(["adjusted_p_value", "p_value", "term"], kind="stable")


def enrich_top_genes(ranking: pd.DataFrame, libraries: Mapping[str, str | Path], background: Sequence[str],
                     top_n: int = 50, min_set_size: int = 3) -> pd.DataFrame:
    """Per library x cell type ORA of the top ``top_n`` genes against ``background`` (the genes the model saw)."""
    # Sets are cut to the background and kept with >= min_set_size genes; the BH family is the sets sharing
    # at least one gene with the query (gseapy, like Enrichr, tests and reports only those).
    if isinstance(background, str) or len(background) == 0:
        raise InputError("background", "background", "needs a non-empty list of gene names",
                         "pass the gene universe the model saw (e.g. adata.var_names)")
    universe = {str(gene) for gene in background}
    queries = {cell_type: [gene for gene in genes if gene in universe]
               for cell_type, genes in top_genes(ranking, top_n).items()}
    tables = []
    for library, path in libraries.items():
        gene_sets = restrict_gene_sets(read_gmt(path), universe, min_set_size)
        for cell_type, genes in queries.items():
            raw = ora(genes, gene_sets, universe)
            if raw is not None and len(raw):
                tables.append(tidy_ora(raw, library, cell_type, genes))
    if not tables:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    return pd.concat(tables, ignore_index=True)


def dot_plot(results: pd.DataFrame, cell_type: str, top_terms: int = 10) -> Figure:
    """Dot plot of a cell type's best terms: -log10 adjusted p on x, term on y, size = overlap, colour = log2 OR."""
    rows = results[results["cell_type"] == cell_type].sort_values(["adjusted_p_value", "p_value"]).head(top_terms)
    labels = rows["term"] if results["library"].nunique() == 1 else rows["term"] + " (" + rows["library"] + ")"
    # long terms (GO's run to 100 characters) wrapped, so the plot keeps its width whatever the library
    labels = [textwrap.fill(label, LABEL_WIDTH) for label in labels]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig = Figure(figsize=(8.0, 1.5 + 0.2 * max(len(rows), 1) + 0.15 * lines), layout="constrained")
    ax = fig.subplots()
    ax.set_title(f"Enriched terms: {cell_type}")
    if rows.empty:
        ax.text(0.5, 0.5, "no term overlaps the top genes", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    y = np.arange(len(rows))[::-1]
    x = -np.log10(rows["adjusted_p_value"].clip(lower=np.finfo(float).tiny).to_numpy())
    dots = ax.scatter(x, y, s=20 + 12 * rows["overlap"].to_numpy(), c=np.log2(rows["odds_ratio"].to_numpy()),
                      cmap="viridis", edgecolors="black", linewidths=0.5)
    ax.axvline(-math.log10(0.05), color="grey", linestyle="--", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("-log10 adjusted p-value")
    ax.set_xlim(0, 1.12 * max(x.max(), -math.log10(0.05)))
    ax.set_ylim(-0.7, len(rows) - 0.3)
    fig.colorbar(dots, ax=ax, label="log2 odds ratio")
    handles, sizes = dots.legend_elements(prop="sizes", num=3, func=lambda s: (s - 20) / 12, alpha=0.6)
    ax.legend(handles, sizes, title="overlap", loc="lower right", fontsize=7, title_fontsize=7)
    return fig
