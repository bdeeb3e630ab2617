"""TabNet-style encoder over genes (Arik & Pfister 2021): sequential sparse feature attention.

Each of ``n_steps`` decision steps picks genes with a sparsemax mask computed by an attentive transformer from the
previous step's output, scaled by a prior that discounts genes already used (``prior *= gamma - mask``; gamma 1 uses
each gene once, larger gamma lets steps reuse genes). The masked expression goes through a feature transformer:
GLU blocks (Linear → batch norm → GLU, residuals scaled by sqrt(0.5)), the first ``n_shared`` shared by every step,
then ``n_independent`` of the step's own. Each step's output splits into a decision part (ReLU, summed over steps:
the embedding, ``n_d`` wide) and an attention part (``n_a`` wide) that drives the next mask. Batch norms are ghost
batch norms over chunks of ``virtual_batch_size`` cells when that is set.

The classifier head and the training loop are the other neural methods' (``sclabel.nn.finetune``): the encoder adds
its mask-sparsity penalty (``lambda_sparse`` × mean mask entropy) to the loss through ``penalty``. Its per-cell
explanation (``mask_importance``) is the paper's aggregate: the sum over steps of each mask weighted by that step's
decision contribution, normalised to sum to 1 per cell.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ENTROPY_EPS = 1e-15  # keeps log(mask) finite where sparsemax gives exact zeros


def sparsemax(z: Tensor) -> Tensor:
    """Euclidean projection of each row of ``z`` onto the probability simplex (Martins & Astudillo 2016).

    The threshold tau solves sum(max(z - tau, 0)) = 1. Michelot's iteration finds it without sorting (sorting
    thousands of genes per cell dominated the step time): tau of the entries above the last tau, rising until the
    support stops changing; the final tau is computed with gradients, so they are the sparsemax Jacobian's.
    """
    z = z - z.max(dim=-1, keepdim=True).values  # the largest entry is 0, so tau lies in [-1, 0)
    with torch.no_grad():
        support = z > -1
        for _ in range(z.shape[-1]):
            tau = (torch.where(support, z, 0).sum(dim=-1, keepdim=True) - 1) / support.sum(dim=-1, keepdim=True)
            shrunk = z > tau
            if torch.equal(shrunk, support):
                break
            support = shrunk
    threshold = (torch.where(support, z, 0).sum(dim=-1, keepdim=True) - 1) / support.sum(dim=-1, keepdim=True)
    return torch.clamp(z - threshold, min=0)


class GhostBatchNorm(nn.Module):
    """Batch norm computed over chunks of ``virtual_batch_size`` cells in training (plain batch norm when None)."""

    def __init__(self, dim: int, virtual_batch_size: int | None, momentum: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, momentum=momentum)
        self.virtual_batch_size = virtual_batch_size

    def forward(self, x: Tensor) -> Tensor:
        """Normalise a [cells, dim] batch."""
        if not self.training or not self.virtual_batch_size or x.shape[0] <= self.virtual_batch_size:
            return self.bn(x)
        chunks = torch.tensor_split(x, math.ceil(x.shape[0] / self.virtual_batch_size))
        return torch.cat([self.bn(chunk) for chunk in chunks])


class GLUBlock(nn.Module):
    """Linear (possibly shared between steps) → ghost batch norm → gated linear unit."""

    def __init__(self, fc: nn.Linear, virtual_batch_size: int | None, momentum: float) -> None:
        super().__init__()
        self.fc = fc
        self.bn = GhostBatchNorm(fc.out_features, virtual_batch_size, momentum)

    def forward(self, x: Tensor) -> Tensor:
        """[cells, in] → [cells, out / 2]."""
        return nn.functional.glu(self.bn(self.fc(x)), dim=-1)


class FeatureTransformer(nn.Module):
    """The shared GLU blocks then the step's own, each after the first added to its input and scaled by sqrt(0.5)."""

    def __init__(self, shared: list[nn.Linear], n_independent: int, n_genes: int, width: int,
                 virtual_batch_size: int | None, momentum: float) -> None:
        super().__init__()
        own = [nn.Linear(n_genes if not shared and i == 0 else width, 2 * width, bias=False)
               for i in range(n_independent)]
        self.blocks = nn.ModuleList([GLUBlock(fc, virtual_batch_size, momentum) for fc in [*shared, *own]])

    def forward(self, x: Tensor) -> Tensor:
        """[cells, genes] → [cells, width]."""
        h = self.blocks[0](x)
        for block in self.blocks[1:]:
            h = (h + block(h)) * math.sqrt(0.5)
        return h


class AttentiveTransformer(nn.Module):
    """Attention features → a sparsemax mask over genes, scaled by the prior of genes still unused."""

    def __init__(self, n_a: int, n_genes: int, virtual_batch_size: int | None, momentum: float) -> None:
        super().__init__()
        self.fc = nn.Linear(n_a, n_genes, bias=False)
        self.bn = GhostBatchNorm(n_genes, virtual_batch_size, momentum)

    def forward(self, a: Tensor, prior: Tensor) -> Tensor:
        """[cells, n_a], [cells, genes] → [cells, genes] mask, each row summing to 1."""
        return sparsemax(self.bn(self.fc(a)) * prior)


class TabNetEncoder(nn.Module):
    """Genes → ``n_d`` embedding: the ReLU decision outputs of ``n_steps`` masked feature-transformer steps, summed."""

    def __init__(self, n_genes: int, n_d: int = 16, n_a: int = 16, n_steps: int = 3, gamma: float = 1.3,
                 n_shared: int = 2, n_independent: int = 2, virtual_batch_size: int | None = None,
                 momentum: float = 0.1, lambda_sparse: float = 1e-4) -> None:
        super().__init__()
        if min(n_d, n_a, n_steps) < 1 or n_shared + n_independent < 1 or gamma < 1:
            raise ValueError("tabnet needs n_d, n_a, n_steps >= 1, n_shared + n_independent >= 1 and gamma >= 1")
        self.hparams = {"n_d": n_d, "n_a": n_a, "n_steps": n_steps, "gamma": gamma, "n_shared": n_shared,
                        "n_independent": n_independent, "virtual_batch_size": virtual_batch_size,
                        "momentum": momentum, "lambda_sparse": lambda_sparse}
        self.out_dim, self.n_d, self.gamma, self.lambda_sparse = n_d, n_d, gamma, lambda_sparse
        width = n_d + n_a
        self.input_bn = nn.BatchNorm1d(n_genes, momentum=momentum)
        self.shared = nn.ModuleList([nn.Linear(n_genes if i == 0 else width, 2 * width, bias=False)
                                     for i in range(n_shared)])
        self.transformers = nn.ModuleList([
            FeatureTransformer(list(self.shared), n_independent, n_genes, width, virtual_batch_size, momentum)
            for _ in range(n_steps + 1)])  # the first only splits off the first step's attention features
        self.attentive = nn.ModuleList([AttentiveTransformer(n_a, n_genes, virtual_batch_size, momentum)
                                        for _ in range(n_steps)])
        self.penalty = torch.zeros(())

    def steps(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """The embedding, each step's mask [cells, genes] and each step's decision contribution [cells]."""
        x = self.input_bn(x)
        prior = torch.ones_like(x)
        a = self.transformers[0](x)[:, self.n_d:]
        embedding, masks, contributions = a.new_zeros(a.shape[0], self.n_d), [], []
        for attentive, transformer in zip(self.attentive, self.transformers[1:]):
            mask = attentive(a, prior)
            prior = prior * (self.gamma - mask)
            h = transformer(mask * x)
            decision, a = torch.relu(h[:, :self.n_d]), h[:, self.n_d:]
            embedding = embedding + decision
            masks.append(mask)
            contributions.append(decision.sum(dim=1))
        return embedding, masks, contributions

    def forward(self, x: Tensor) -> Tensor:
        """Embed a [cells, genes] batch into [cells, n_d]; sets ``penalty`` (the sparsity term of the loss)."""
        embedding, masks, _ = self.steps(x)
        entropy = torch.stack([(-mask * torch.log(mask + ENTROPY_EPS)).sum(dim=1).mean() for mask in masks]).mean()
        self.penalty = self.lambda_sparse * entropy
        return embedding

    def mask_importance(self, x: Tensor) -> Tensor:
        """Per cell, the masks summed over steps weighted by each step's decision contribution; rows sum to 1."""
        _, masks, contributions = self.steps(x)
        total = sum(mask * weight[:, None] for mask, weight in zip(masks, contributions))
        return total / total.sum(dim=1, keepdim=True).clamp_min(ENTROPY_EPS)
