"""The page a biologist opens first after annotating a query: cells per predicted type, the confidence and
rejection-score histograms with the rejection threshold, and a UMAP coloured by prediction (queries of >= 200 cells).

One self-contained HTML page (the figure inline as base64 PNG) and the same figure as a PNG beside it.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from sclabel import io, voting
from sclabel.annotate import annotation_counts
from sclabel.annotator import UNASSIGNED
from sclabel.plots import plt, save_figure  # matplotlib with the Agg backend
from sclabel.report_pages import html_table, page

MIN_UMAP_CELLS = 200  # below this a kNN graph of the query is too thin for a UMAP worth reading
N_NEIGHBORS = 15  # scanpy's default
EMBEDDING = "X_sclabel"

log = logging.getLogger("sclabel")


def umap_coordinates(query: ad.AnnData, target_sum: float, chunk_cells: int,
                     seed: int) -> tuple[np.ndarray | None, str]:
    """(2-D UMAP of the query's cells or None, a sentence saying which representation it was computed on or why
    there is none). The method's embedding (``obsm['X_sclabel']``) when it has one, else the principal components
    of the query's log-normalised cells; scanpy's kNN graph and UMAP, seeded by ``seed``."""
    import scanpy as sc

    if query.n_obs < MIN_UMAP_CELLS:
        return None, (f"No UMAP: the query has {query.n_obs} cells, fewer than {MIN_UMAP_CELLS}, too few for a "
                      "neighbourhood graph worth drawing.")
    if EMBEDDING in query.obsm:
        representation = np.asarray(query.obsm[EMBEDDING], dtype=np.float32)
        used = f"the method's embedding of the cells (obsm['{EMBEDDING}'], {representation.shape[1]} dimensions)"
    else:
        representation = voting.principal_components(voting.lognormalised(query, target_sum, chunk_cells), seed)
        used = (f"{representation.shape[1]} principal components of the query's log-normalised cells (up to "
                f"{voting.N_TOP_GENES:,} most variable genes; the method has no embedding)")
    cells = ad.AnnData(obsm={"X_rep": representation}, shape=(query.n_obs, 0))
    sc.pp.neighbors(cells, n_neighbors=N_NEIGHBORS, use_rep="X_rep", random_state=seed)
    sc.tl.umap(cells, random_state=seed)
    return cells.obsm["X_umap"], (f"UMAP computed on {used}: scanpy's {N_NEIGHBORS}-nearest-neighbour graph and "
                                  f"sc.tl.umap with random_state {seed} (annotate.seed).")


def type_colours(types: list[str]) -> dict[str, Any]:
    """A colour per predicted type (tab20, then tab20b), light grey for ``unassigned``."""
    palette = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors]
    known = [t for t in types if t != UNASSIGNED]
    colours = {t: palette[i % len(palette)] for i, t in enumerate(known)}
    return {**colours, UNASSIGNED: "lightgrey"}


def summary_figure(obs: pd.DataFrame, threshold: float | None, umap: np.ndarray | None,
                   umap_note: str) -> plt.Figure:
    """Cells per predicted type, the UMAP coloured by prediction (or why there is none), confidence by assignment,
    and the rejection score with the threshold line."""
    predicted = obs["predicted_cell_type"].astype(str)
    counts = predicted.value_counts()
    colours = type_colours(counts.index.tolist())
    height = 9.5 + 0.3 * max(0, len(counts) - 15)  # room for a bar and a legend entry per type
    fig, ((bars, embedding), (confidence, rejection)) = plt.subplots(2, 2, figsize=(13, height), layout="constrained",
                                                                     height_ratios=[height - 4.5, 4.5])
    bars.barh(range(len(counts)), counts.to_numpy() / len(obs), color=[colours[t] for t in counts.index])
    bars.set_yticks(range(len(counts)), [f"{t} ({n})" for t, n in counts.items()], fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel("fraction of cells")
    bars.set_title("Predicted cell types (cells)")
    if umap is None:
        embedding.axis("off")
        embedding.text(0.5, 0.5, umap_note, ha="center", va="center", wrap=True, transform=embedding.transAxes)
    else:
        assigned = (predicted != UNASSIGNED).to_numpy()
        order = np.argsort(assigned, kind="stable")  # unassigned cells drawn first, underneath
        embedding.scatter(umap[order, 0], umap[order, 1], s=max(0.5, min(8.0, 4e4 / len(obs))), linewidths=0,
                          c=[colours[t] for t in predicted.to_numpy()[order]])
        embedding.set_xticks([])
        embedding.set_yticks([])
        embedding.set_xlabel("UMAP 1")
        embedding.set_ylabel("UMAP 2")
        embedding.set_title("UMAP, coloured by prediction")
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[t], label=t) for t in counts.index]
        embedding.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    unassigned = predicted == UNASSIGNED
    scores = obs["prediction_confidence"].to_numpy()
    confidence.hist([scores[~unassigned], scores[unassigned]], bins=np.linspace(0, 1, 26), stacked=True,
                    color=["steelblue", "lightgrey"], label=["assigned", UNASSIGNED])
    confidence.set_xlabel("confidence (highest class probability)")
    confidence.set_ylabel("cells")
    confidence.legend(fontsize=8)
    confidence.set_title("Confidence")
    rejection.hist(obs["rejection_score"].to_numpy(), bins=25, color="grey")
    if threshold is not None:
        rejection.axvline(threshold, color="crimson", linestyle="--", label=f"rejection threshold {threshold:.3g}")
        rejection.legend(fontsize=8)
    rejection.set_xlabel("rejection score (higher: more likely novel)")
    rejection.set_ylabel("cells")
    rejection.set_title("Rejection score")
    return fig


def abstention_sentence(annotation: Mapping[str, Any], unassigned: int, n_cells: int) -> str:
    """How many cells are unassigned and by which rule; the threshold's exact value in ``#rejection-threshold``."""
    share = f"{unassigned} of {n_cells} cells ({100 * unassigned / max(n_cells, 1):.1f}%) are <code>unassigned</code>"
    threshold = annotation.get("rejection_threshold")
    value = ("<span id=\"rejection-threshold\">none</span> (the model had no validation cells: no cell is left "
             "unassigned by a threshold)" if threshold is None else
             f'<span id="rejection-threshold" data-value="{float(threshold)!r}">{float(threshold):.4g}</span>')
    rule = ("by the method's own rule (the threshold is shown for reference only)"
            if annotation.get("abstention_rule") == "own" else
            "where the rejection score is above the threshold set on the model's validation cells")
    return (f"<p>{share}, {rule}. Rejection threshold: {value}. "
            "<code>obs['predicted_cell_type_raw']</code> keeps every cell's best guess.</p>")


def summary_page(name: str, obs: pd.DataFrame, counts: pd.DataFrame, annotation: Mapping[str, Any],
                 umap_note: str, png: bytes) -> str:
    """The summary page of one annotated query: what annotated it, the counts table, the figure, the UMAP note."""
    shown = counts.drop(columns=["query", "gene_overlap"]).sort_values("cells", ascending=False, kind="stable")
    for column in [c for c in shown if c.endswith("fraction")]:
        shown[column] = (100 * shown[column]).round(1)
    shown = shown.rename(columns=lambda c: c.replace("fraction", "% of cells").replace("_", " "))
    overlap = annotation.get("gene_overlap", float("nan"))
    genes = ("" if not np.isfinite(overlap) else
             f"; {100 * overlap:.0f}% of the model's genes are in the query (missing ones count as zero)")
    unassigned = int((obs["predicted_cell_type"].astype(str) == UNASSIGNED).sum())
    body = (f"<p>{len(obs)} cells annotated by <b>{html.escape(str(annotation.get('method')))}</b> "
            f"(model <code>{html.escape(str(annotation.get('model')))}</code>){genes}.</p>"
            f"{abstention_sentence(annotation, unassigned, len(obs))}"
            f"<h2>Cells per predicted type</h2>{html_table(shown, table_id='counts')}"
            f'<img alt="summary figure of {html.escape(name)}" style="max-width:100%" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
            f"<p>{html.escape(umap_note, quote=False)}</p>")
    return page(f"Annotation of {name}", body)


def write_summary(query: ad.AnnData, name: str, target_sum: float, chunk_cells: int, seed: int, output_html: str,
                  output_png: str) -> None:
    """Write the summary page and its figure of an annotated query."""
    annotation = query.uns["sclabel_annotation"]
    umap, umap_note = umap_coordinates(query, target_sum, chunk_cells, seed)
    save_figure(summary_figure(query.obs, annotation.get("rejection_threshold"), umap, umap_note), output_png, dpi=100)
    counts = annotation_counts(query.obs, name, annotation.get("gene_overlap", float("nan")))
    page_text = summary_page(name, query.obs, counts, annotation, umap_note, Path(output_png).read_bytes())
    io.write_text(page_text, output_html)
    log.info("%s: %d cells, %d predicted types; %s", name, query.n_obs, counts["predicted_cell_type"].nunique(),
             umap_note)


def annotation_summary_stage(annotated: Sequence[str], outputs_html: Sequence[str], outputs_png: Sequence[str],
                             target_sum: float, chunk_cells: int, seed: int) -> None:
    """The summary page and figure of every annotated query (``results/annotate/{query}.h5ad``)."""
    for path, output_html, output_png in zip(annotated, outputs_html, outputs_png):
        write_summary(ad.read_h5ad(path), Path(path).stem, target_sum, chunk_cells, seed, output_html, output_png)
