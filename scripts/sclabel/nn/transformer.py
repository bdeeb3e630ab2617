"""scBERT-style gene transformer: expression-bin tokens, Performer (FAVOR+) attention over genes.

Each cell is a sequence of ``n_genes`` tokens. A gene's token is the sum of an embedding of its
discretised expression (its *bin*) and a learned gene-identity embedding (optionally initialised
from gene2vec-style vectors). Pre-norm transformer blocks mix the genes with FAVOR+ linear
attention (Choromanski et al. 2021), so time and memory grow linearly with the number of genes:
no genes x genes tensor is ever built. Self-supervised pre-training masks ~15% of the *detected*
genes of each cell and reconstructs their bins (Yang et al. 2022, scBERT).

Expression bins (input: natural-log ``log1p`` CP10k values)::

    bin 0            x == 0 (not detected; negative values are treated the same)
    bin 1            0    < x < e[0]
    bin k (1<k<B-1)  e[k-2] <= x < e[k-1]
    bin B-1          x >= e[B-3]
    bin B            the mask token (never produced by binning)

With the default edges ``e = [0.5, 1.0, 1.5, 2.0, 3.0]`` (B = 7): a gene at 1.2 falls in bin 3,
one at 3.0 in bin 6. ``log1p(1 CP10k) = 0.69``, so bin 1 holds genes below ~0.65 CP10k.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from os import PathLike

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from sclabel.errors import InputError
from sclabel.nn.encoders import autocast, dense_tensor, time_left
from sclabel.store import DEFAULT_BUFFER_CELLS, Matrix, row_blocks

log = logging.getLogger(__name__)

DEFAULT_BIN_EDGES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
POOLINGS = ("mean", "max")
LOG2_E = math.log2(math.e)


def bin_expression(x: Tensor, bin_edges: Sequence[float] = DEFAULT_BIN_EDGES) -> Tensor:
    """Discretise log1p CP10k values into bins 0..len(bin_edges)+1 (0 = not detected)."""
    edges = torch.as_tensor(bin_edges, dtype=x.dtype, device=x.device)
    detected_bins = torch.bucketize(x, edges, right=True) + 1
    return torch.where(x > 0, detected_bins, torch.zeros_like(detected_bins))


def mask_detected(
    bins: Tensor,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
    mask_token: int = len(DEFAULT_BIN_EDGES) + 2,
) -> tuple[Tensor, Tensor]:
    """Replace each detected gene (bin > 0) by ``mask_token`` with probability ``mask_prob``."""
    draws = torch.rand(bins.shape, generator=generator, device=bins.device)
    mask = (draws < mask_prob) & (bins > 0)
    return bins.masked_fill(mask, mask_token), mask


def orthogonal_random_features(
    nb_features: int, dim: int, generator: torch.Generator | None = None
) -> Tensor:
    """Gaussian ``[nb_features, dim]`` projection, rows orthogonal within blocks of ``dim``."""
    blocks = []
    for _ in range(math.ceil(nb_features / dim)):
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        # sign(diag R) makes Q Haar-distributed; without it the kernel estimate is biased
        blocks.append((q * torch.diagonal(r).sign()).T)
    directions = torch.cat(blocks)[:nb_features]
    lengths = torch.randn(nb_features, dim, generator=generator).norm(dim=1, keepdim=True)
    return lengths * directions


def softmax_kernel_features(x: Tensor, projection: Tensor, is_query: bool) -> Tensor:
    """FAVOR+ positive features: phi(q)·phi(k) estimates exp(q·k/sqrt(d)) up to c(q)·c(keys)."""
    # exp(w·x - |x|^2/2) / sqrt(m) with x scaled by d^-1/4, times a constant per query row
    # (queries) or per sequence (keys) that cancels in attention normalised per query: it
    # removes the max against overflow and absorbs |q|^2/2 and 1/sqrt(m). exp2 is far faster
    # than exp on CPU, so log2(e) is folded into the projection.
    scale = x.shape[-1] ** -0.25
    log2_features = x @ (projection.T * (scale * LOG2_E))
    if not is_query:
        log2_features = log2_features - (x**2).sum(-1, keepdim=True) * (scale**2 * LOG2_E / 2)
    stabiliser = log2_features.amax(dim=-1 if is_query else (-2, -1), keepdim=True).detach()
    return torch.exp2(log2_features - stabiliser)


def _float32_features(q: Tensor, k: Tensor, projection: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """phi(Q), phi(K) and the per-query normalisers D_i = phi(q_i)·sum_j phi(k_j), in float32."""
    phi_q = softmax_kernel_features(q.float(), projection.float(), is_query=True)
    phi_k = softmax_kernel_features(k.float(), projection.float(), is_query=False)
    denominator = (phi_q @ phi_k.sum(-2).unsqueeze(-1)).clamp_min(1e-30)  # [..., g, 1]
    return phi_q, phi_k, denominator


def linear_attention(q: Tensor, k: Tensor, v: Tensor, projection: Tensor) -> Tensor:
    """FAVOR+ estimate of softmax(QK^T/sqrt(d))V in O(genes·features·d); shapes [..., g, d]."""
    with torch.autocast(q.device.type, enabled=False):
        phi_q, phi_k, denominator = _float32_features(q, k, projection)
        context = phi_k.transpose(-2, -1) @ v.float()  # [..., m, d_v]
        return (phi_q @ context / denominator).to(v.dtype)


def attention_received(q: Tensor, k: Tensor, projection: Tensor) -> Tensor:
    """Attention each key receives, sum_i A_ij of the FAVOR+ matrix, in linear time; [..., g]."""
    # A_ij = phi(q_i)·phi(k_j) / D_i with D_i = phi(q_i)·sum_j' phi(k_j'), so
    # sum_i A_ij = phi(k_j) · sum_i phi(q_i) / D_i: no genes x genes matrix.
    with torch.autocast(q.device.type, enabled=False):
        phi_q, phi_k, denominator = _float32_features(q, k, projection)
        query_weight = (phi_q / denominator).sum(-2)  # [..., m]
        return (phi_k @ query_weight.unsqueeze(-1)).squeeze(-1)


class FavorSelfAttention(nn.Module):
    """Multi-head self-attention over genes with a fixed FAVOR+ random projection per layer."""

    def __init__(self, dim: int, heads: int, nb_features: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.register_buffer("projection", orthogonal_random_features(nb_features, dim // heads))

    def _qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Split ``[n, g, dim]`` into per-head q, k, v of shape ``[n, heads, g, dim/heads]``."""
        n, g, _ = h.shape
        qkv = self.to_qkv(h).view(n, g, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, h: Tensor) -> Tensor:
        """Attend over genes; ``[n, g, dim] -> [n, g, dim]``."""
        q, k, v = self._qkv(h)
        out = linear_attention(q, k, v, self.projection)
        return self.to_out(out.transpose(1, 2).flatten(2))

    def received(self, h: Tensor) -> Tensor:
        """Attention each gene receives, summed over queries; ``[n, heads, g]``."""
        q, k, _ = self._qkv(h)
        return attention_received(q, k, self.projection)


class TransformerBlock(nn.Module):
    """Pre-norm block: FAVOR+ attention then a GELU feed-forward, each with a residual."""

    def __init__(
        self, dim: int, heads: int, nb_features: int, ff_mult: int, dropout: float
    ) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attention = FavorSelfAttention(dim, heads, nb_features)
        self.ff_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, ff_mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * dim, dim),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        """Update token states ``[n, g, dim]``."""
        h = h + self.dropout(self.attention(self.attn_norm(h)))
        return h + self.dropout(self.feed_forward(self.ff_norm(h)))

    def attention_received(self, h: Tensor) -> Tensor:
        """Attention received per gene by this block's input ``h``; ``[n, heads, g]``."""
        return self.attention.received(self.attn_norm(h))


def _finite(text: str) -> float:
    """``text`` as a number; NaN when it is not one."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _vector(path: str | PathLike[str], line_no: int, fields: Sequence[str]) -> list[float]:
    """The numbers after the gene name on a gene-vector line; a one-line error when one is not a finite number."""
    values = [_finite(v) for v in fields[1:]]
    bad = [text for text, value in zip(fields[1:], values) if not math.isfinite(value)]
    if bad:
        raise InputError(
            path, f"line {line_no} ({fields[0]})", f"value '{bad[0]}' is not a finite number",
            "fix or drop that line, or regenerate the vectors (NaN or inf would make every prediction NaN)",
        )
    return values


def read_gene_vectors(
    path: str | PathLike[str], genes: Sequence[str], dim: int
) -> tuple[list[int], Tensor]:
    """Rows of ``genes`` found in a word2vec/gene2vec text file (``GENE v1 ... v_dim`` per line)."""
    index = {gene: i for i, gene in enumerate(genes)}
    rows: list[int] = []
    vectors: list[list[float]] = []
    with open(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or (line_no == 1 and len(fields) == 2):  # blank line or word2vec header
                continue
            if len(fields) != dim + 1:
                raise InputError(
                    path, f"line {line_no}",
                    f"has {len(fields) - 1} values, the model has dim={dim}",
                    f"set the encoder's dim to {len(fields) - 1} or use {dim}-dimensional vectors",
                )
            if fields[0] in index:
                rows.append(index[fields[0]])
                vectors.append(_vector(path, line_no, fields))
    if not rows:
        raise InputError(
            path, "gene names", "no gene of the dataset has a vector in this file",
            "use vectors for the dataset's species and gene symbols",
        )
    return rows, torch.tensor(vectors)


class GeneTransformerEncoder(nn.Module):
    """Cell encoder: bin + gene-identity tokens, FAVOR+ transformer blocks, pooled over genes."""

    # hparams: the constructor kwargs except n_genes (passed separately) and the gene-vector
    # file and gene names (their effect is in the weights), so cls(n_genes=g, **hparams) rebuilds.

    def __init__(
        self,
        n_genes: int,
        n_bins: int = 7,
        bin_edges: Sequence[float] | None = None,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        nb_features: int = 64,
        ff_mult: int = 2,
        dropout: float = 0.1,
        gene_embedding_init: str | PathLike[str] | None = None,
        genes: Sequence[str] | None = None,
        pooling: str = "mean",
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        edges = [float(e) for e in (DEFAULT_BIN_EDGES if bin_edges is None else bin_edges)]
        _check_config(n_genes, depth, n_bins, edges, pooling, gene_embedding_init, genes)
        self.n_genes = n_genes
        self.n_bins = n_bins
        self.mask_token = n_bins
        self.bin_edges = edges
        self.pooling = pooling
        self.checkpointing = checkpointing
        self.out_dim = dim
        self.hparams = {
            "n_bins": n_bins, "bin_edges": edges, "dim": dim, "depth": depth, "heads": heads,
            "nb_features": nb_features, "ff_mult": ff_mult, "dropout": dropout,
            "pooling": pooling, "checkpointing": checkpointing,
        }
        self.bin_embedding = nn.Embedding(n_bins + 1, dim)
        self.gene_embedding = nn.Embedding(n_genes, dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, nb_features, ff_mult, dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.reconstruction_head = nn.Linear(dim, n_bins)
        if gene_embedding_init is not None:
            rows, vectors = read_gene_vectors(gene_embedding_init, genes, dim)
            with torch.no_grad():
                self.gene_embedding.weight[rows] = vectors

    def bins(self, x: Tensor) -> Tensor:
        """Expression bins of log1p CP10k values ``[n, n_genes]``."""
        if x.ndim != 2 or x.shape[1] != self.n_genes:
            raise ValueError(f"expected [cells, {self.n_genes}] input, got {list(x.shape)}")
        return bin_expression(x, self.bin_edges)

    def tokens(self, x: Tensor) -> Tensor:
        """Token states before the blocks (bin + gene embeddings) of expression ``x``; ``[n, g] -> [n, g, dim]``."""
        return self._embed(self.bins(x))

    def _embed(self, bins: Tensor) -> Tensor:
        """Token states before the blocks; ``[n, g] -> [n, g, dim]``."""
        return self.bin_embedding(bins) + self.gene_embedding.weight

    def token_states(self, x: Tensor, bins: Tensor | None = None) -> Tensor:
        """Per-gene hidden states ``[n, g, dim]``; ``bins`` (e.g. masked) replaces binning ``x``."""
        return self.encode_tokens(self._embed(self.bins(x) if bins is None else bins))

    def encode_tokens(self, h: Tensor) -> Tensor:
        """Per-gene hidden states ``[n, g, dim]`` from the token states before the blocks (``_embed``)."""
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        return self.norm(h)

    def pool(self, states: Tensor) -> Tensor:
        """Cell embeddings ``[n, dim]``: per-gene hidden states pooled over genes."""
        return states.mean(1) if self.pooling == "mean" else states.amax(1)

    def forward(self, x: Tensor) -> Tensor:
        """Cell embeddings ``[n, dim]`` pooled over genes."""
        return self.pool(self.token_states(x))

    @torch.no_grad()
    def attention_scores(self, x: Tensor) -> Tensor:
        """Attention each gene receives, mean over heads and layers; ``[n, g]`` (use eval mode)."""
        h = self._embed(self.bins(x))
        total = torch.zeros(h.shape[:2], device=h.device)
        for block in self.blocks:
            total += block.attention_received(h).mean(1)
            h = block(h)
        return total / len(self.blocks)


def _check_config(
    n_genes: int,
    depth: int,
    n_bins: int,
    edges: list[float],
    pooling: str,
    gene_embedding_init: str | PathLike[str] | None,
    genes: Sequence[str] | None,
) -> None:
    """Raise ValueError for inconsistent encoder settings."""
    if n_genes < 1 or depth < 1:
        raise ValueError(f"n_genes and depth must be >= 1, got {n_genes} and {depth}")
    if len(edges) != n_bins - 2:
        raise ValueError(f"bin_edges needs n_bins - 2 = {n_bins - 2} thresholds, got {len(edges)}")
    if edges and (edges[0] <= 0 or any(b <= a for a, b in zip(edges, edges[1:]))):
        raise ValueError(f"bin_edges must be positive and strictly increasing, got {edges}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if gene_embedding_init is not None and (genes is None or len(genes) != n_genes):
        raise ValueError("gene_embedding_init needs genes: the n_genes gene names, in input order")


def _batches(
    X: Matrix, batch_size: int, generator: torch.Generator, device: torch.device,
    buffer_cells: int = DEFAULT_BUFFER_CELLS,
) -> Iterator[Tensor]:
    """Shuffled dense float32 mini-batches of the rows of ``X`` on ``device``, read ``buffer_cells`` rows at a time."""
    order = torch.randperm(X.shape[0], generator=generator).numpy()
    batches = [np.sort(order[start : start + batch_size]) for start in range(0, len(order), batch_size)]
    for _, block in row_blocks(X, batches, buffer_cells):
        yield dense_tensor(block, device)


def _masked_step(
    encoder: GeneTransformerEncoder,
    x: Tensor,
    mask_prob: float,
    generator: torch.Generator,
) -> tuple[Tensor, int, int]:
    """Summed cross-entropy over masked genes, number correct, number masked."""
    bins = encoder.bins(x)
    masked_bins, mask = mask_detected(bins, mask_prob, generator, encoder.mask_token)
    logits = encoder.reconstruction_head(encoder.token_states(x, masked_bins)[mask])
    targets = bins[mask]
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss, int((logits.argmax(-1) == targets).sum()), int(mask.sum())


def pretrain_masked_bins(
    encoder: GeneTransformerEncoder,
    X: Matrix,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-3,
    mask_prob: float = 0.15,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    grad_accum_steps: int = 1,
    weight_decay: float = 0.01,
    buffer_cells: int = DEFAULT_BUFFER_CELLS,
    precision: str = "fp32",
) -> dict[str, list[float]]:
    """Masked-bin pre-training on log1p CP10k ``X``; per-epoch ``loss`` and ``masked_accuracy``.

    ``X`` may be a ``store.RowView``: batches are then read from disk ``buffer_cells`` rows at a time. ``precision``
    "bf16" runs the forward pass under bf16 autocast (the loss and the weights stay float32).
    """
    # Cross-entropy on masked genes only, AdamW, gradients averaged over grad_accum_steps
    # batches; seed fixes the global torch RNG (dropout), the batch order and the masks.
    if X.shape[1] != encoder.n_genes:
        raise ValueError(f"X has {X.shape[1]} genes, the encoder expects {encoder.n_genes}")
    device = torch.device(device)
    torch.manual_seed(seed)
    order_rng = torch.Generator().manual_seed(seed)
    mask_rng = torch.Generator(device=device).manual_seed(seed)
    encoder.to(device).train()
    optimiser = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=weight_decay)
    history: dict[str, list[float]] = {"loss": [], "masked_accuracy": []}
    n_batches = math.ceil(X.shape[0] / batch_size)
    epoch_seconds: list[float] = []
    for epoch in range(epochs):
        started = time.perf_counter()
        totals = np.zeros(3)  # loss sum, correct, masked
        bar = tqdm(_batches(X, batch_size, order_rng, device, buffer_cells), total=n_batches,
                   desc=f"masked-bin epoch {epoch + 1}/{epochs}", disable=not progress)
        for step, x in enumerate(bar, start=1):
            with autocast(device, precision):
                loss, correct, n_masked = _masked_step(encoder, x, mask_prob, mask_rng)
            if n_masked:
                (loss / (n_masked * grad_accum_steps)).backward()
                totals += (loss.item(), correct, n_masked)
                bar.set_postfix(loss=f"{totals[0] / totals[2]:.3f}")
            if step % grad_accum_steps == 0 or step == n_batches:
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)
        history["loss"].append(float(totals[0] / max(totals[2], 1)))
        history["masked_accuracy"].append(float(totals[1] / max(totals[2], 1)))
        epoch_seconds.append(time.perf_counter() - started)
        log.info("masked-bin epoch %d/%d: loss %.4f, masked accuracy %.3f, %s left, %.0f cells/s", epoch + 1, epochs,
                 history["loss"][-1], history["masked_accuracy"][-1], time_left(epoch_seconds, epochs - epoch - 1),
                 X.shape[0] / max(epoch_seconds[-1], 1e-9))
    return history
