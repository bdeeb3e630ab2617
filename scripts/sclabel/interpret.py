"""Which genes drive each predicted cell type, and how many known markers those genes recover.

Four gene rankings, all returned as the same tidy table (``sclabel.ranking.RANK_COLUMNS``: ``cell_type, gene, score, rank``,
rank 1 = highest score within the cell type, ties broken by gene order):

* ``attention_top_genes`` (transformer encoders; scBERT's attention sum): per cell, the attention each gene
  receives (``GeneTransformerEncoder.attention_scores``: FAVOR+ column sums, mean over heads and layers), averaged
  over the cells *predicted* as each type. Each cell's scores sum to the number of genes.
* ``gradient_top_genes`` (any CellTypeAnnotator): gradient × input of each cell's predicted-class logit, averaged
  over the cells predicted as each type; signed, so high scores are genes whose expression pushes cells towards
  their predicted type. For the MLP the input is the log expression (a first-order estimate of the logit change
  when the gene is set to 0). Binning makes the transformer's logit piecewise constant in expression, so there
  the input is each gene's bin embedding and the baseline the embedding of bin 0 (not detected): the score is
  ``grad · (bin_embedding[bin] - bin_embedding[0])``, the same first-order estimate, 0 for undetected genes.
* ``mask_top_genes`` (TabNet encoders; the paper's aggregate feature importance): per cell, the sparsemax masks
  summed over decision steps, each weighted by its step's decision contribution (``TabNetEncoder.mask_importance``,
  summing to 1 per cell), averaged over the cells predicted as each type.
* ``sclabel.ranking.coefficient_top_genes`` (linear baselines, torch-free so the baselines' env ranks its own
  models): logistic-regression coefficients per class, ``MaxAbsScaler`` folded in.

Cells labelled ``unassigned`` (below a confidence threshold) are left out of the per-type averages; a cell type
with no predicted cell gets no rows.

Marker recall (scaLR's measure): ``marker_recall_curve`` counts, per cell type mapped to a PanglaoDB cell type,
how many of its markers (``load_marker_table``) are among the type's top-k genes.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sclabel.errors import InputError
from sclabel.model import UNASSIGNED, CellTypeAnnotator
from sclabel.nn.encoders import Matrix, dense_batch, iterate_minibatches
from sclabel.nn.transformer import GeneTransformerEncoder
from sclabel.ranking import rank_table

RECALL_COLUMNS = ("cell_type", "marker_set", "k", "recovered", "n_markers", "recall")
MARKER_COLUMNS = ("species", "official gene symbol", "cell type", "canonical marker")
SPECIES = ("Hs", "Mm")
CellScores = Callable[[Tensor, Tensor], Tensor]


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, restoring each one's own mode afterwards."""
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, training in modes:
            sub.training = training


def _mean_per_type(model: CellTypeAnnotator, X: Matrix, predicted: Sequence[str], batch_size: int,
                   cell_scores: CellScores, desc: str, progress: bool) -> pd.DataFrame:
    """Average ``cell_scores(x, class codes)`` [cells, genes] over the cells predicted as each type; ranked."""
    if X.shape[1] != len(model.genes):
        raise ValueError(f"matrix has {X.shape[1]} genes but the model has {len(model.genes)}; "
                         "reorder its columns with align_genes first")
    predicted = np.asarray(predicted, dtype=str)
    if predicted.shape != (X.shape[0],):
        raise ValueError(f"got {predicted.size} predicted labels for {X.shape[0]} cells")
    cells = np.flatnonzero(predicted != UNASSIGNED)
    if not len(cells):
        raise ValueError(f"every cell is {UNASSIGNED!r}: no predicted cell type to explain")
    codes = model.encode_labels(predicted[cells])
    device = next(model.network.parameters()).device
    sums = torch.zeros(len(model.labels), len(model.genes), dtype=torch.float64)
    batches = iterate_minibatches(np.arange(len(cells)), batch_size)
    with _eval_mode(model.network):
        for part in tqdm(batches, total=math.ceil(len(cells) / batch_size), desc=desc, disable=not progress):
            batch_codes = torch.from_numpy(codes[part])
            scores = cell_scores(dense_batch(X, cells[part], device), batch_codes.to(device))
            sums.index_add_(0, batch_codes, scores.detach().double().cpu())
    counts = np.bincount(codes, minlength=len(model.labels))
    present = counts > 0
    return rank_table(sums.numpy()[present] / counts[present, None], np.array(model.labels)[present], model.genes)


def _encoder_top_genes(model: CellTypeAnnotator, X: Matrix, predicted: Sequence[str], batch_size: int,
                       progress: bool, encoder_kind: str, what: str, scores: str) -> pd.DataFrame:
    """Mean of the encoder's own per-gene ``scores`` method (``what``) over the cells predicted as each type, for
    models whose encoder is ``encoder_kind`` only."""
    if model.encoder_kind != encoder_kind:
        raise ValueError(f"{what} needs a {encoder_kind} encoder, this model's is {model.encoder_kind!r}; "
                         "use gradient_top_genes instead")
    return _mean_per_type(model, X, predicted, batch_size, lambda x, codes: getattr(model.encoder, scores)(x),
                          what, progress)


def attention_top_genes(model: CellTypeAnnotator, X: Matrix, predicted: Sequence[str], batch_size: int = 64,
                        progress: bool = True) -> pd.DataFrame:
    """Mean attention each gene receives over the cells predicted as each type (transformer models only)."""
    return _encoder_top_genes(model, X, predicted, batch_size, progress, "transformer", "attention",
                              "attention_scores")


def mask_top_genes(model: CellTypeAnnotator, X: Matrix, predicted: Sequence[str], batch_size: int = 256,
                   progress: bool = True) -> pd.DataFrame:
    """Mean aggregated attention-mask importance of each gene over the cells predicted as each type (TabNet only)."""
    return _encoder_top_genes(model, X, predicted, batch_size, progress, "tabnet", "attention masks",
                              "mask_importance")


@contextlib.contextmanager
def _output_as_leaf(module: nn.Module) -> Iterator[list[Tensor]]:
    """While active, ``module``'s outputs are replaced by detached leaves (appended to the yielded list)."""
    leaves: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        leaves.append(output.detach().requires_grad_())
        return leaves[-1]

    handle = module.register_forward_hook(hook)
    try:
        yield leaves
    finally:
        handle.remove()


def _gradient_times_input(model: CellTypeAnnotator, x: Tensor, codes: Tensor) -> Tensor:
    """Per gene, gradient of each cell's predicted-class logit times (input − not-detected baseline); [n, g]."""
    encoder = model.encoder
    with torch.enable_grad():
        if isinstance(encoder, GeneTransformerEncoder):
            with _output_as_leaf(encoder.bin_embedding) as leaves:
                logits = model.network(x)
            (grad,) = torch.autograd.grad(logits.gather(1, codes[:, None]).sum(), leaves[0])
            return (grad * (leaves[0] - encoder.bin_embedding.weight[0])).sum(-1)
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(model.network(x).gather(1, codes[:, None]).sum(), x)
        return grad * x


def gradient_top_genes(model: CellTypeAnnotator, X: Matrix, predicted: Sequence[str], batch_size: int = 256,
                       progress: bool = True) -> pd.DataFrame:
    """Mean gradient × input of the predicted-class logit over the cells predicted as each type (any encoder)."""
    return _mean_per_type(model, X, predicted, batch_size, lambda x, codes: _gradient_times_input(model, x, codes),
                          "gradient x input", progress)


# registry.Method.explains -> the neural attribution that gives it
ATTRIBUTIONS = {"attention": attention_top_genes, "gradient_x_input": gradient_top_genes,
                "attention_masks": mask_top_genes}


def load_marker_table(path: str | os.PathLike[str], species: str = "Hs",
                      canonical_only: bool = False) -> dict[str, set[str]]:
    """PanglaoDB TSV → {cell type: official gene symbols} for ``species`` ("Hs" or "Mm"; rows list both)."""
    # Symbols are as in the file: upper case for both species (mouse rows too), so match mouse data by case.
    # Rows whose species field names neither species (a few "None" / "4" rows) are never included.
    if species not in SPECIES:
        raise ValueError(f"species must be one of {SPECIES}, got {species!r}")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [column for column in MARKER_COLUMNS if column not in table.columns]
    if missing:
        raise InputError(path, "columns", f"missing {', '.join(missing)}",
                         "use the PanglaoDB marker table (PanglaoDB_markers_*.tsv, tab-separated with a header)")
    keep = table["species"].str.split().map(lambda names: species in names)
    if canonical_only:
        keep &= table["canonical marker"].str.strip() == "1"
    rows = table[keep]
    symbols = rows["official gene symbol"].str.strip()
    return {cell_type: set(group) for cell_type, group in symbols.groupby(rows["cell type"].str.strip())}


def marker_recall_curve(ranking: pd.DataFrame, markers: Mapping[str, set[str]], cell_type_map: Mapping[str, str],
                        ks: Sequence[int], background: set[str] | None = None) -> pd.DataFrame:
    """Recall@k of each mapped cell type's markers among its top-k ranked genes (``RECALL_COLUMNS``).

    recall@k = |top-k genes ∩ markers| / |markers ∩ background|. Pass the model's genes as ``background`` so
    markers the model never saw do not count; without it every marker counts and recall may stay below 1.
    Cell types missing from ``cell_type_map`` (our label → marker-set name) are skipped; recall is NaN when no
    marker is left in the background.
    """
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {list(ks)}")
    ranked_types = ranking["cell_type"].unique()
    unknown = sorted({cell_type_map[t] for t in ranked_types if t in cell_type_map} - set(markers))
    if unknown:
        raise ValueError(f"cell_type_map names marker sets missing from the marker table: {', '.join(unknown)}")
    rows = []
    ordered = ranking.sort_values("rank", kind="stable").groupby("cell_type", sort=False)["gene"]
    for cell_type, genes in ordered:
        if cell_type not in cell_type_map:
            continue
        marker_set = cell_type_map[cell_type]
        expected = markers[marker_set] if background is None else markers[marker_set] & set(background)
        top = genes.tolist()
        for k in ks:
            recovered = len(expected.intersection(top[:int(k)]))
            recall = recovered / len(expected) if expected else np.nan
            rows.append((cell_type, marker_set, int(k), recovered, len(expected), recall))
    return pd.DataFrame(rows, columns=list(RECALL_COLUMNS))
