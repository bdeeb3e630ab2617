"""Figures for the report: confusion matrices, Cohen's kappa per method across splits and, in a label-fraction
sweep, the label-efficiency curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sclabel import io  # noqa: E402
from sclabel.split_names import ALL_LABELS, label_fraction  # noqa: E402

EFFICIENCY_TITLES = {"known_kappa": "Cohen's kappa, known cells", "known_macro_f1": "macro F1, known cells"}


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


def class_support(per_class: pd.DataFrame) -> pd.Series:
    """Test cells per true cell type over all splits (every method is scored on the same cells: counted once)."""
    per_split = per_class.groupby(["cell_type", "split"], observed=True)["support"].first()
    return per_split.groupby(level="cell_type").sum().astype(int)


def per_class_f1_figure(per_class: pd.DataFrame) -> plt.Figure:
    """Heatmap of each method's F1 per true cell type, averaged over the splits where the type was tested; each type
    labelled with its support, the test cells of that type over all splits."""
    tested = per_class[per_class["support"] > 0]
    matrix = tested.pivot_table(index="method", columns="cell_type", values="f1", aggfunc="mean")
    support = class_support(tested).reindex(matrix.columns)
    fig, ax = plt.subplots(figsize=(2.5 + 0.6 * matrix.shape[1], 1.5 + 0.4 * matrix.shape[0]))
    image = ax.imshow(matrix.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), [f"{name} (n={n})" for name, n in support.items()], rotation=60,
                  ha="right")
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


def label_efficiency_figure(curves: pd.DataFrame) -> plt.Figure:
    """Per metric of ``curves`` (``metrics.label_efficiency``): above, each method's mean ± sd against the label
    fraction; below, each pretrained method minus its counterpart with the difference's confidence interval."""
    shown = [metric for metric in EFFICIENCY_TITLES if metric in set(curves["metric"])]
    fig, axes = plt.subplots(2, len(shown), figsize=(5.5 * len(shown), 7.5), squeeze=False, sharex=True)
    for column, metric in enumerate(shown):
        rows = curves[curves["metric"] == metric].sort_values("label_fraction")
        curve_ax, effect_ax = axes[0, column], axes[1, column]
        for method, curve in rows.groupby("method", sort=True):
            curve_ax.errorbar(curve["label_fraction"], curve["mean"], yerr=curve["sd"], marker="o", markersize=4,
                              capsize=3, label=method)
        paired = rows[rows["counterpart"].fillna("").astype(str) != ""]
        for (method, counterpart), effect in paired.groupby(["method", "counterpart"], sort=True):
            below = (effect["difference"] - effect["difference_low"]).fillna(0)
            above = (effect["difference_high"] - effect["difference"]).fillna(0)
            effect_ax.errorbar(effect["label_fraction"], effect["difference"], yerr=[below, above],
                               marker="o", markersize=4, capsize=3, label=f"{method} − {counterpart}")
        effect_ax.axhline(0.0, color="grey", linewidth=0.8)
        curve_ax.set_title(EFFICIENCY_TITLES[metric])
        curve_ax.set_ylabel("mean ± sd over splits × draws")
        effect_ax.set_ylabel("pretrained − not pretrained (95% CI)")
        effect_ax.set_xlabel("share of training labels kept")
        effect_ax.set_xscale("log")
        fractions = sorted(rows["label_fraction"].unique())
        effect_ax.set_xticks(fractions, [f"{fraction:g}" for fraction in fractions])
        effect_ax.minorticks_off()
        curve_ax.legend(fontsize=7)
        if len(paired):
            effect_ax.legend(fontsize=7)
        else:
            effect_ax.text(0.5, 0.5, "no pretrained method ran beside its counterpart", ha="center",
                           transform=effect_ax.transAxes)
    fig.tight_layout()
    return fig


def all_labels(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` on base splits (every training label): a label-fraction sweep's other splits dropped."""
    return table[table["split"].map(label_fraction) == ALL_LABELS]


def report_stage(metrics_file: str, confusion_file: str, per_class_file: str, methods: list[str], dpi: int,
                 output_kappa: str, output_per_class: str, output_confusions: list[str],
                 label_efficiency_file: str | None = None, output_label_efficiency: str | None = None) -> None:
    """Draw the kappa overview, the per-class F1 heatmap and one confusion matrix per method (on the base splits,
    every training label), and with a label-efficiency table its curves."""
    save_figure(kappa_figure(all_labels(pd.read_csv(metrics_file, sep="\t"))), output_kappa, dpi)
    save_figure(per_class_f1_figure(all_labels(io.read_tsv(per_class_file, ["cell_type"]))), output_per_class, dpi)
    if label_efficiency_file and output_label_efficiency:
        curves = io.read_tsv(label_efficiency_file, ["scheme", "method", "metric", "counterpart"])
        save_figure(label_efficiency_figure(curves), output_label_efficiency, dpi)
    confusion = all_labels(io.read_tsv(confusion_file, ["true", "predicted"]))
    for method, output in zip(methods, output_confusions):
        subset = confusion[confusion["method"] == method]
        save_figure(confusion_figure(subset, f"{method}: confusion summed over splits"), output, dpi)
