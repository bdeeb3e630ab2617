"""Gene-expression encoders, the encoder registry and small mini-batch, seed and device helpers."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import warnings
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from sclabel.store import DEFAULT_BUFFER_CELLS, Matrix, row_blocks

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16")


def pick_device(requested: str = "auto") -> torch.device:
    """Return cuda when available and asked for ("auto"/"cuda[:n]"), else cpu (warning when cuda was asked)."""
    if requested == "cpu":
        return torch.device("cpu")
    if requested != "auto" and not requested.startswith("cuda"):
        raise ValueError(f"device {requested!r} is not one of auto, cpu, cuda, cuda:N")
    if torch.cuda.is_available():
        return torch.device("cuda" if requested == "auto" else requested)
    if requested != "auto":
        log.warning("device %r requested but CUDA is not available; using cpu", requested)
    return torch.device("cpu")


def time_left(epoch_seconds: list[float], epochs_left: int) -> str:
    """The remaining epochs at the mean epoch time so far, as ``1h 02m``, ``3m 05s`` or ``12s`` (an upper bound when
    early stopping may end the loop sooner)."""
    seconds = round(epochs_left * sum(epoch_seconds) / max(len(epoch_seconds), 1))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def iterate_minibatches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Split row indices ``order`` into consecutive near-equal chunks of at most ``batch_size`` rows."""
    yield from np.array_split(order, max(1, math.ceil(len(order) / batch_size)))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision`` "bf16" (weights and optimiser stay float32); else nothing."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def dense_tensor(block: sp.spmatrix | sp.sparray | np.ndarray, device: torch.device) -> torch.Tensor:
    """A sparse or dense block of rows as a dense float32 tensor on ``device``.

    On a GPU a sparse block travels as CSR and is made dense there: it moves its non-zeros, not cells x genes floats.
    """
    if sp.issparse(block) and device.type == "cuda":
        csr = sp.csr_matrix(block)
        with warnings.catch_warnings():  # torch flags its CSR tensors as beta; construction and to_dense are exact
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            sparse = torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(np.int64)),
                                             torch.from_numpy(csr.indices.astype(np.int64)),
                                             torch.from_numpy(csr.data.astype(np.float32)), size=csr.shape,
                                             check_invariants=False)  # scipy CSR is valid by construction
        return sparse.to(device, non_blocking=True).to_dense()
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)


def dense_batch(X: Matrix, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows ``rows`` of a sparse or dense matrix (or ``RowView``) as a dense float32 tensor on ``device``."""
    return dense_tensor(X[rows], device)


@torch.no_grad()
def predict_batches(module: nn.Module, X: Matrix, batch_size: int = 1024,
                    buffer_cells: int = DEFAULT_BUFFER_CELLS) -> np.ndarray:
    """Outputs of ``module`` (in eval mode) for every row of ``X``, ``batch_size`` rows per forward pass.

    A ``RowView`` is read from disk ``buffer_cells`` rows at a time (``store.row_blocks``).
    """
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        batches = iterate_minibatches(np.arange(X.shape[0]), batch_size)
        parts = [module(dense_tensor(block, device)).cpu().numpy()
                 for _, block in row_blocks(X, batches, buffer_cells)]
    finally:
        module.train(was_training)
    return np.concatenate(parts)


class MLPEncoder(nn.Module):
    """Genes → ``out_dim`` embedding: optional hidden Linear → ELU → Dropout layers, then a Linear."""

    def __init__(self, n_genes: int, hidden_dims: list[int] | None = None, out_dim: int = 200,
                 dropout: float = 0.1) -> None:
        super().__init__()
        hidden_dims = list(hidden_dims or [])
        self.out_dim = out_dim
        self.hparams = {"hidden_dims": hidden_dims, "out_dim": out_dim, "dropout": dropout}
        layers: list[nn.Module] = []
        width = n_genes
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ELU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a [cells, genes] batch into [cells, out_dim]."""
        return self.net(x)


def penalty(encoder: nn.Module) -> torch.Tensor | float:
    """The term the encoder's last forward pass adds to the training loss (TabNet's mask sparsity; 0 for others)."""
    return getattr(encoder, "penalty", 0.0)


def build_encoder(kind: str, n_genes: int, hparams: dict) -> nn.Module:
    """Build the encoder named ``kind`` (one of ``registry.ENCODERS``) for ``n_genes`` inputs."""
    if kind == "mlp":
        return MLPEncoder(n_genes=n_genes, **hparams)
    if kind == "transformer":
        from sclabel.nn.transformer import GeneTransformerEncoder

        return GeneTransformerEncoder(n_genes=n_genes, **hparams)
    if kind == "tabnet":
        from sclabel.nn.tabnet import TabNetEncoder

        return TabNetEncoder(n_genes=n_genes, **hparams)
    raise ValueError(f"encoder kind {kind!r} is not one of mlp, transformer, tabnet")
