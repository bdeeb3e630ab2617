"""Figures for the report: confusion matrices and Cohen's kappa per method across splits."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sclabel import io  # noqa: E402


def save_figure(fig: plt.Figure, output: str | Path, dpi: int = 120) -> None:
    """Save ``fig`` as PNG atomically and close it."""
    with io.atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def confusion_figure(confusion: pd.DataFrame, title: str) -> plt.Figure:
    """Row-normalised confusion heatmap (true label rows, predicted columns), counts summed over splits."""
    matrix = confusion.pivot_table(index="true", columns="predicted", values="count", aggfunc="sum", fill_value=0)
    labels = sorted(set(matrix.index) | set(matrix.columns))
    matrix = matrix.reindex(index=[label for label in labels if label in matrix.index], columns=labels, fill_value=0)
    fractions = matrix.to_numpy() / np.maximum(matrix.to_numpy().sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(matrix.index)), matrix.index)
    for (row, col), value in np.ndenumerate(matrix.to_numpy()):
        if value:
            ax.text(col, row, str(value), ha="center", va="center", fontsize=7,
                    color="white" if fractions[row, col] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true cells")
    return fig


def kappa_figure(metrics_long: pd.DataFrame) -> plt.Figure:
    """Cohen's kappa on known test cells (``known_kappa``) of every method on every split (points) with the mean."""
    kappa = metrics_long[metrics_long["metric"] == "known_kappa"]
    methods = sorted(kappa["method"].unique())
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(methods), 3.5))
    for i, method in enumerate(methods):
        values = kappa.loc[kappa["method"] == method, "value"].to_numpy()
        ax.bar(i, values.mean(), color="lightsteelblue", width=0.6)
        ax.scatter(np.full(len(values), i) + np.linspace(-0.15, 0.15, len(values)), values, color="black", s=12)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylabel("Cohen's kappa, known cells")
    ax.set_ylim(min(0.0, float(kappa["value"].min()) - 0.05), 1.0)
    ax.set_title("Cohen's kappa on known test cells per split (points) and mean (bars)")
    return fig


def per_class_f1_figure(per_class: pd.DataFrame) -> plt.Figure:
    """Heatmap of each method's F1 per true cell type, averaged over the splits where the type was tested."""
    tested = per_class[per_class["support"] > 0]
    matrix = tested.pivot_table(index="method", columns="cell_type", values="f1", aggfunc="mean")
    fig, ax = plt.subplots(figsize=(2.5 + 0.6 * matrix.shape[1], 1.5 + 0.4 * matrix.shape[0]))
    image = ax.imshow(matrix.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=60, ha="right")
    ax.set_yticks(range(matrix.shape[0]), matrix.index)
    for (row, col), value in np.ndenumerate(matrix.to_numpy()):
        if np.isfinite(value):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.6 else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, label="F1 (mean over splits)")
    ax.set_title("Per-class F1")
    return fig


def recall_figure(recall: pd.DataFrame) -> plt.Figure:
    """Marker recall against k, one panel per cell type, one line per method."""
    cell_types = sorted(recall["cell_type"].unique())
    columns = min(4, len(cell_types))
    rows = int(np.ceil(len(cell_types) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False, sharey=True)
    for ax, cell_type in zip(axes.ravel(), cell_types):
        for method, curve in recall[recall["cell_type"] == cell_type].groupby("method"):
            ax.plot(curve["k"], curve["recall"], marker="o", markersize=3, label=method)
        ax.set_title(cell_type, fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("top k genes")
    for ax in axes.ravel()[len(cell_types):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("marker recall")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def report_stage(metrics_file: str, confusion_file: str, per_class_file: str, methods: list[str], dpi: int,
                 output_kappa: str, output_per_class: str, output_confusions: list[str]) -> None:
    """Draw the kappa overview, the per-class F1 heatmap and one confusion matrix per method."""
    save_figure(kappa_figure(pd.read_csv(metrics_file, sep="\t")), output_kappa, dpi)
    save_figure(per_class_f1_figure(io.read_tsv(per_class_file, ["cell_type"])), output_per_class, dpi)
    confusion = io.read_tsv(confusion_file, ["true", "predicted"])
    for method, output in zip(methods, output_confusions):
        subset = confusion[confusion["method"] == method]
        save_figure(confusion_figure(subset, f"{method}: confusion summed over splits"), output, dpi)
