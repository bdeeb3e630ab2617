"""Tests of the scBERT-style gene transformer: binning, masking, FAVOR+ attention, pre-training."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from sclabel.errors import InputError
from sclabel.store import CellStore, write_store
from sclabel.nn.transformer import (
    GeneTransformerEncoder,
    attention_received,
    bin_expression,
    linear_attention,
    mask_detected,
    orthogonal_random_features,
    pretrain_masked_bins,
    softmax_kernel_features,
)

TINY = {"dim": 16, "depth": 1, "heads": 2, "nb_features": 16}


@pytest.fixture(scope="module")
def pbmc(shared_data: Path) -> ad.AnnData:
    """pbmc_symphony: 1,200 cells x 1,767 genes of log1p CP10k."""
    return ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")


def _random_qkv(seed: int, shape: tuple[int, ...], scale: float = 0.5) -> list[torch.Tensor]:
    """Three reproducible Gaussian tensors (q, k, v)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) * s for s in (scale, scale, 1.0)]


def _relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Frobenius relative error."""
    return float((approx - exact).norm() / exact.norm())


def test_bin_expression_known_values() -> None:
    x = torch.tensor([[0.0, 0.1, 0.5, 0.99, 1.0, 1.2, 1.5, 2.0, 2.9, 3.0, 8.0]])
    expected = torch.tensor([[0, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6]])
    assert torch.equal(bin_expression(x), expected)
    assert torch.equal(bin_expression(x, [1.0]), torch.tensor([[0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]]))


def test_bin_zero_iff_not_detected_on_real_data(pbmc: ad.AnnData) -> None:
    x = torch.from_numpy(pbmc.X[:200].toarray())
    bins = bin_expression(x)
    assert torch.equal(bins == 0, x == 0)
    assert set(bins.unique().tolist()) == set(range(7))


def test_mask_only_detected_about_15_percent(pbmc: ad.AnnData) -> None:
    bins = bin_expression(torch.from_numpy(pbmc.X.toarray()))
    masked, mask = mask_detected(bins, 0.15, torch.Generator().manual_seed(0), mask_token=7)
    detected = bins > 0
    assert not (mask & ~detected).any()
    assert torch.equal(masked[mask], torch.full((int(mask.sum()),), 7))
    assert torch.equal(masked[~mask], bins[~mask])
    assert mask.sum() / detected.sum() == pytest.approx(0.15, abs=0.003)
    per_cell = mask.sum(1) / detected.sum(1)
    assert per_cell.mean() == pytest.approx(0.15, abs=0.005) and per_cell.max() < 0.35
    again, _ = mask_detected(bins, 0.15, torch.Generator().manual_seed(0), mask_token=7)
    assert torch.equal(again, masked)


def test_favor_approaches_softmax_attention() -> None:
    q, k, v = _random_qkv(0, (4, 64, 16))
    exact = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1) @ v

    def error(m: int, seed: int) -> float:
        projection = orthogonal_random_features(m, 16, torch.Generator().manual_seed(seed))
        return _relative_error(linear_attention(q, k, v, projection), exact)

    errors = {m: np.mean([error(m, seed) for seed in range(3)]) for m in (16, 256, 16384)}
    assert errors[16] > errors[256] > errors[16384]
    assert errors[16384] < 0.03  # unbiased features: error keeps falling like 1/sqrt(m)


def test_attention_received_and_output_match_explicit_matrix() -> None:
    q, k, v = _random_qkv(1, (2, 3, 10, 8), scale=1.0)
    projection = orthogonal_random_features(32, 8, torch.Generator().manual_seed(0))
    scores = softmax_kernel_features(q, projection, is_query=True) @ softmax_kernel_features(
        k, projection, is_query=False
    ).transpose(-2, -1)
    attention = scores / scores.sum(-1, keepdim=True)  # explicit [.., g, g] FAVOR+ matrix
    tolerance = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(attention_received(q, k, projection), attention.sum(-2), **tolerance)
    torch.testing.assert_close(linear_attention(q, k, v, projection), attention @ v, **tolerance)


def test_20000_genes_forward_without_quadratic_memory() -> None:
    n_genes = 20_000
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, n_genes, generator=gen) * 3 * (torch.rand(2, n_genes, generator=gen) < 0.1)
    torch.manual_seed(0)
    encoder = GeneTransformerEncoder(n_genes, checkpointing=True, **TINY)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    embedding = encoder(x)
    embedding.sum().backward()
    encoder.eval()
    scores = encoder.attention_scores(x)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert embedding.shape == (2, 16) and scores.shape == (2, n_genes)
    assert grown_mib < 1024  # one genes x genes float32 matrix alone would be 1.5 GiB
    torch.testing.assert_close(scores.sum(1), torch.full((2,), float(n_genes)), rtol=1e-4, atol=0)


def test_checkpointing_keeps_gradients() -> None:
    x = torch.rand(3, 50) * (torch.rand(3, 50) < 0.3) * 4
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        encoder = GeneTransformerEncoder(50, dropout=0.0, checkpointing=checkpointing, **TINY)
        encoder(x).pow(2).sum().backward()
        named = encoder.named_parameters()
        used = [p for name, p in named if not name.startswith("reconstruction_head")]
        grads.append(torch.cat([p.grad.flatten() for p in used]))
    torch.testing.assert_close(grads[0], grads[1])


def test_pretraining_learns_masked_bins(pbmc: ad.AnnData) -> None:
    X = pbmc.X[:300]
    torch.manual_seed(0)
    config = {"dim": 32, "depth": 1, "heads": 2, "nb_features": 32, "dropout": 0.0}
    encoder = GeneTransformerEncoder(X.shape[1], **config)
    history = pretrain_masked_bins(encoder, X, epochs=5, batch_size=16, lr=1e-2, progress=False)
    bins = bin_expression(torch.from_numpy(X.toarray()))
    majority_rate = float(torch.bincount(bins[bins > 0]).max() / (bins > 0).sum())
    assert history["loss"][-1] < 0.85 * history["loss"][0]
    assert history["masked_accuracy"][-1] > majority_rate + 0.1


def test_pretraining_is_reproducible_with_seed() -> None:
    gen = torch.Generator().manual_seed(0)
    X = (torch.rand(40, 60, generator=gen) * 4 * (torch.rand(40, 60, generator=gen) < 0.4)).numpy()

    def run(seed: int) -> dict[str, list[float]]:
        torch.manual_seed(0)
        encoder = GeneTransformerEncoder(60, **TINY)
        return pretrain_masked_bins(
            encoder, X, epochs=2, batch_size=8, seed=seed, progress=False, grad_accum_steps=2
        )

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_pretraining_streamed_from_the_store_equals_in_memory(pbmc: ad.AnnData, tmp_path: Path) -> None:
    write_store(pbmc, tmp_path / "store.h5ad", chunk_cells=250)
    rows = np.sort(np.random.default_rng(0).choice(pbmc.n_obs, 150, replace=False))

    def run(X) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        encoder = GeneTransformerEncoder(pbmc.n_vars, **TINY)
        history = pretrain_masked_bins(encoder, X, epochs=2, batch_size=16, seed=1, progress=False,
                                       buffer_cells=40)  # a buffer of two batches: several disk reads per epoch
        return history, encoder.state_dict()

    in_memory, weights = run(pbmc.X[rows])
    with CellStore(tmp_path / "store.h5ad") as store:
        streamed, streamed_weights = run(store.view(rows))
    assert streamed == in_memory
    assert all(torch.equal(weights[key], streamed_weights[key]) for key in weights)


def test_gene_embedding_init_sets_rows(tmp_path: Path) -> None:
    genes = ["CD3E", "MS4A1", "LYZ", "NKG7"]
    vectors = tmp_path / "gene2vec.txt"
    vectors.write_text("3 4\nMS4A1 1 2 3 4\nNOT_IN_DATA 9 9 9 9\nNKG7 -1 0.5 0 2\n")
    small = {"dim": 4, "depth": 1, "heads": 1, "nb_features": 4}
    torch.manual_seed(0)
    plain = GeneTransformerEncoder(4, **small)
    torch.manual_seed(0)
    encoder = GeneTransformerEncoder(4, **small, gene_embedding_init=vectors, genes=genes)
    weight = encoder.gene_embedding.weight.detach()
    assert torch.equal(weight[1], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.equal(weight[3], torch.tensor([-1.0, 0.5, 0.0, 2.0]))
    assert torch.equal(weight[[0, 2]], plain.gene_embedding.weight.detach()[[0, 2]])
    with pytest.raises(InputError, match="has 4 values, the model has dim=8"):
        GeneTransformerEncoder(4, **{**small, "dim": 8}, gene_embedding_init=vectors, genes=genes)
    with pytest.raises(InputError, match="no gene of the dataset"):
        GeneTransformerEncoder(4, **small, gene_embedding_init=vectors, genes=list("abcd"))


@pytest.mark.parametrize(("value", "shown"), [("nan", "nan"), ("inf", "inf"), ("-Infinity", "-Infinity"),
                                             ("0,5", "0,5"), ("x", "x")])
def test_gene_vector_file_with_a_non_numeric_or_non_finite_value_is_refused_in_one_line(
        tmp_path: Path, value: str, shown: str) -> None:
    vectors = tmp_path / "gene2vec.txt"
    vectors.write_text(f"MS4A1 1 2 3 4\nNKG7 -1 {value} 0 2\n")
    with pytest.raises(InputError) as err:
        GeneTransformerEncoder(4, dim=4, depth=1, heads=1, nb_features=4, gene_embedding_init=vectors,
                               genes=["CD3E", "MS4A1", "LYZ", "NKG7"])
    message = str(err.value)
    assert message.startswith(f"{vectors}: line 2 (NKG7): value '{shown}' is not a finite number")
    assert "Fix:" in message and "\n" not in message


def test_hparams_rebuild_the_encoder() -> None:
    encoder = GeneTransformerEncoder(30, bin_edges=[0.4, 1.0, 2.0], n_bins=5, pooling="max", **TINY)
    rebuilt = GeneTransformerEncoder(n_genes=30, **json.loads(json.dumps(encoder.hparams)))
    rebuilt.load_state_dict(encoder.state_dict())
    encoder.eval(), rebuilt.eval()
    x = torch.rand(4, 30) * (torch.rand(4, 30) < 0.5) * 3
    torch.testing.assert_close(rebuilt(x), encoder(x))
    assert encoder.out_dim == 16 and encoder.reconstruction_head.out_features == 5
    with pytest.raises(ValueError, match="n_bins - 2"):
        GeneTransformerEncoder(30, n_bins=7, bin_edges=[0.5, 1.0])
