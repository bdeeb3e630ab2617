"""Tests of gene rankings (attention, gradient × input, linear coefficients) and marker recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler

from sclabel.baselines import logistic_regression
from sclabel.errors import InputError
from sclabel.interpret import (
    RECALL_COLUMNS,
    attention_top_genes,
    gradient_top_genes,
    load_marker_table,
    marker_recall_curve,
)
from sclabel.model import UNASSIGNED, CellTypeAnnotator
from sclabel.nn.finetune import FinetuneSettings
from sclabel.nn.transformer import softmax_kernel_features
from sclabel.ranking import RANK_COLUMNS, coefficient_top_genes, rank_table

GENES = [f"g{i}" for i in range(30)]
LABELS = ["A", "B", "C"]
PANGLAO = "markers/PanglaoDB_markers_27_Mar_2020.tsv"


def _expression(n_cells: int, n_genes: int, seed: int) -> np.ndarray:
    """log1p of sparse-ish Poisson counts: about half the entries are 0, values up to ~2.5."""
    rng = np.random.default_rng(seed)
    return np.log1p(rng.poisson(0.8, size=(n_cells, n_genes))).astype(np.float32)


def _scores(table: pd.DataFrame) -> pd.DataFrame:
    """Score matrix [cell types × genes] of a rank table, genes in GENES-like column order."""
    return table.pivot(index="cell_type", columns="gene", values="score")


def _per_type_mean(per_cell: np.ndarray, predicted: np.ndarray, genes: list[str]) -> pd.DataFrame:
    """Mean of per-cell gene scores over each predicted type (excluding unassigned), as a score matrix."""
    keep = predicted != UNASSIGNED
    return pd.DataFrame(per_cell[keep], columns=genes).groupby(predicted[keep]).mean()


def _transformer(depth: int, heads: int, seed: int = 0) -> CellTypeAnnotator:
    """Tiny freshly initialised transformer annotator over GENES (dropout high so train mode would differ)."""
    torch.manual_seed(seed)
    return CellTypeAnnotator(GENES, LABELS, "transformer",
                             {"dim": 8, "depth": depth, "heads": heads, "nb_features": 8, "dropout": 0.5},
                             {"hidden_dims": [8]})


def _modes(model: CellTypeAnnotator) -> list[bool]:
    """Training flag of every submodule."""
    return [module.training for module in model.network.modules()]


def test_rank_table_ranks_within_type_and_breaks_ties_by_gene_order() -> None:
    scores = np.array([[0.1, 0.5, 0.5, -1.0], [3.0, 2.0, 1.0, 0.0]])
    table = rank_table(scores, ["T1", "T2"], ["a", "b", "c", "d"])
    assert list(table.columns) == list(RANK_COLUMNS)
    t1 = table[table.cell_type == "T1"]
    assert t1.gene.tolist() == ["b", "c", "a", "d"]
    assert t1["rank"].tolist() == [1, 2, 3, 4]
    assert t1.score.tolist() == [0.5, 0.5, 0.1, -1.0]
    assert table[table.cell_type == "T2"].gene.tolist() == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="shape"):
        rank_table(scores, ["T1"], ["a", "b", "c", "d"])


def test_attention_is_per_cell_attention_averaged_over_predicted_types() -> None:
    model = _transformer(depth=2, heads=2)
    X = _expression(40, len(GENES), seed=1)
    rng = np.random.default_rng(2)
    predicted = rng.choice(["A", "B", UNASSIGNED], size=40)  # C is never predicted
    model.encoder.train()
    model.head.train()
    table = attention_top_genes(model, sp.csr_matrix(X), predicted, batch_size=7, progress=False)
    assert all(_modes(model)), "the caller's train mode is restored"
    model.network.eval()
    per_cell = np.concatenate([model.encoder.attention_scores(torch.from_numpy(X[i:i + 1])).numpy()
                               for i in range(len(X))])
    expected = _per_type_mean(per_cell, predicted, GENES)
    got = _scores(table)
    assert got.index.tolist() == ["A", "B"]
    np.testing.assert_allclose(got.loc[["A", "B"], GENES], expected.loc[["A", "B"], GENES], rtol=1e-5, atol=1e-6)
    # every attention row sums to 1, so the attention received by all genes sums to the number of genes
    np.testing.assert_allclose(got.sum(axis=1), len(GENES), rtol=1e-5)
    top = table[(table.cell_type == "A") & (table["rank"] == 1)].gene.item()
    assert top == expected.loc["A"].idxmax()


def test_attention_equals_column_sums_of_explicit_favor_matrix() -> None:
    model = _transformer(depth=1, heads=1, seed=3)
    X = _expression(12, len(GENES), seed=4)
    predicted = np.array(["A", "B", "C"] * 4)
    encoder, block = model.encoder, model.encoder.blocks[0]
    dim = encoder.out_dim
    column_sums = []
    with torch.no_grad():
        for row in X:
            bins = encoder.bins(torch.from_numpy(row[None]))
            tokens = block.attn_norm(encoder.bin_embedding(bins) + encoder.gene_embedding.weight)[0]
            qkv = block.attention.to_qkv(tokens)
            q, k = qkv[:, :dim], qkv[:, dim:2 * dim]
            projection = block.attention.projection
            kernel = (softmax_kernel_features(q, projection, is_query=True)
                      @ softmax_kernel_features(k, projection, is_query=False).T)  # genes × genes
            attention = kernel / kernel.sum(1, keepdim=True)
            column_sums.append(attention.sum(0).numpy())
    expected = _per_type_mean(np.array(column_sums), predicted, GENES)
    got = _scores(attention_top_genes(model, X, predicted, progress=False))
    np.testing.assert_allclose(got.loc[LABELS, GENES], expected.loc[LABELS, GENES], rtol=1e-4)


def test_attention_refuses_mlp_model() -> None:
    model = CellTypeAnnotator(GENES, LABELS, "mlp", {"out_dim": 4})
    with pytest.raises(ValueError, match="transformer"):
        attention_top_genes(model, _expression(3, len(GENES), 0), ["A"] * 3, progress=False)


def test_gradient_times_input_matches_autograd_per_cell_for_mlp() -> None:
    torch.manual_seed(5)
    model = CellTypeAnnotator(GENES, LABELS, "mlp", {"hidden_dims": [16], "out_dim": 8, "dropout": 0.5},
                              {"hidden_dims": [8], "dropout": 0.5})
    X = _expression(25, len(GENES), seed=6)
    predicted = np.random.default_rng(7).choice(LABELS, size=25)  # not the argmax: the named class's logit
    per_cell = []
    for row, label in zip(X, predicted):
        x = torch.from_numpy(row[None]).requires_grad_()
        logit = model.network(x)[0, LABELS.index(label)]
        (grad,) = torch.autograd.grad(logit, x)
        per_cell.append((grad * x).detach().numpy()[0])
    expected = _per_type_mean(np.array(per_cell), predicted, GENES)
    model.encoder.train()
    model.head.train()
    got = _scores(gradient_top_genes(model, X, predicted, batch_size=4, progress=False))
    assert all(_modes(model))
    np.testing.assert_allclose(got.loc[LABELS, GENES], expected.loc[LABELS, GENES], rtol=1e-4, atol=1e-6)


def test_gradient_for_transformer_is_bin_embedding_gradient_times_shift_from_bin0() -> None:
    model = _transformer(depth=2, heads=2, seed=8)
    X = _expression(1, len(GENES), seed=9)
    encoder = model.encoder
    bins = encoder.bins(torch.from_numpy(X))
    tokens = encoder.bin_embedding(bins).detach().requires_grad_()
    h = tokens + encoder.gene_embedding.weight
    for block in encoder.blocks:
        h = block(h)
    logit = model.head(encoder.norm(h).mean(1))[0, LABELS.index("B")]
    (grad,) = torch.autograd.grad(logit, tokens)
    expected = (grad * (tokens - encoder.bin_embedding.weight[0])).sum(-1).detach().numpy()[0]
    got = _scores(gradient_top_genes(model, X, ["B"], progress=False)).loc["B", GENES].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert np.all(got[X[0] == 0] == 0) and np.all(got[X[0] > 0] != 0)


def test_gradient_linear_model_equals_weight_times_mean_input_and_planted_gene_ranks_first() -> None:
    genes = GENES[:12]
    model = CellTypeAnnotator(genes, LABELS, "mlp", {"out_dim": 12}, {"hidden_dims": []})
    weights = np.zeros((3, 12), dtype=np.float32)
    weights[0, 1] = 3.0  # class A depends only on g1
    weights[1, 2:6] = 1.0  # class B on g2..g5, jointly stronger than A's g1 in B cells
    with torch.no_grad():
        model.encoder.net[0].weight.copy_(torch.eye(12))
        model.encoder.net[0].bias.zero_()
        model.head.net[0].weight.copy_(torch.from_numpy(weights))
        model.head.net[0].bias.copy_(torch.tensor([0.0, 0.0, 2.0]))
    X = _expression(60, 12, seed=10)
    X[:20, 1] += 3.0
    X[20:40, 2:6] += 2.0
    predicted, _ = model.predict(X)
    assert set(predicted) == set(LABELS)
    table = gradient_top_genes(model, X, predicted, progress=False)
    expected = np.vstack([weights[i] * X[predicted == label].mean(0) for i, label in enumerate(LABELS)])
    np.testing.assert_allclose(_scores(table).loc[LABELS, genes], expected, rtol=1e-5, atol=1e-6)
    assert table[(table.cell_type == "A") & (table["rank"] == 1)].gene.item() == "g1"


def test_gradient_planted_genes_rank_first_after_training() -> None:
    rng = np.random.default_rng(11)
    y = np.repeat(LABELS, 100)
    X = _expression(300, len(GENES), seed=12)
    X[y == "A", 1] += 2.0
    X[y == "B", 7] += 2.0
    order = rng.permutation(300)
    train, val = order[:200], order[200:]
    model = CellTypeAnnotator(GENES, LABELS, "mlp", {"hidden_dims": [32], "out_dim": 16})
    model.train(X[train], y[train], X[val], y[val], FinetuneSettings(epochs=15, batch_size=32, patience=15),
                device="cpu", progress=False)
    predicted, _ = model.predict(X)
    assert (predicted == y).mean() > 0.9
    table = gradient_top_genes(model, X, predicted, progress=False)
    top = table[table["rank"] == 1].set_index("cell_type").gene
    assert top["A"] == "g1" and top["B"] == "g7"


def _planted_logreg_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes; class B has gene g7 raised, class A gene g1, class C neither."""
    y = np.repeat(LABELS, 60)
    X = _expression(180, len(GENES), seed)
    X[y == "A", 1] += 1.5
    X[y == "B", 7] += 1.5
    return X, y


def test_coefficients_of_logreg_baseline_rank_planted_gene_first() -> None:
    X, y = _planted_logreg_data(13)
    pipeline = logistic_regression({}, seed=0).fit(sp.csr_matrix(X), y)
    table = coefficient_top_genes(pipeline, GENES, LABELS)
    top = table[table["rank"] == 1].set_index("cell_type").gene
    assert top["B"] == "g7" and top["A"] == "g1"


def test_coefficients_fold_max_abs_scaler_by_hand() -> None:
    X = np.array([[2.0, 0.0, 1.0], [0.0, 4.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.0, 2.0], [2.0, 1.0, 0.0],
                  [0.0, 3.0, 1.5]])
    y = np.array(["a", "b", "c", "a", "b", "c"])
    pipeline = make_pipeline(MaxAbsScaler(), LogisticRegression(C=10.0, max_iter=1000)).fit(X, y)
    coef = pipeline[-1].coef_
    by_hand = coef / np.array([2.0, 4.0, 2.0])  # column max |x|
    got = _scores(coefficient_top_genes(pipeline, ["x", "y", "z"], ["a", "b", "c"])).loc[["a", "b", "c"],
                                                                                       ["x", "y", "z"]]
    np.testing.assert_allclose(got, by_hand, rtol=1e-12)
    # folded coefficients act on unscaled expression exactly as the pipeline does on scaled expression
    np.testing.assert_allclose(X @ got.to_numpy().T + pipeline[-1].intercept_, pipeline.decision_function(X),
                               rtol=1e-10)


def test_coefficients_binary_array_and_refusals() -> None:
    table = coefficient_top_genes(np.array([[2.0, -1.0, 0.5]]), ["x", "y", "z"], ["neg", "pos"])
    scores = _scores(table)
    assert scores.loc["pos", ["x", "y", "z"]].tolist() == [2.0, -1.0, 0.5]
    assert scores.loc["neg", ["x", "y", "z"]].tolist() == [-2.0, 1.0, -0.5]
    assert table[(table.cell_type == "neg") & (table["rank"] == 1)].gene.item() == "y"
    X, y = _planted_logreg_data(14)
    pipeline = logistic_regression({}, seed=0).fit(X, y)
    with pytest.raises(ValueError, match="differ"):
        coefficient_top_genes(pipeline, GENES, ["B", "A", "C"])
    with pytest.raises(ValueError, match="MaxAbsScaler"):
        coefficient_top_genes(make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y), GENES, LABELS)
    with pytest.raises(ValueError, match="coef_"):
        coefficient_top_genes(KNeighborsClassifier().fit(X, y), GENES, LABELS)


def _ranking() -> pd.DataFrame:
    """Type T ranks g1..g10 in that order, type U the reverse; rows shuffled."""
    genes = [f"g{i}" for i in range(1, 11)]
    table = rank_table(np.vstack([np.arange(10, 0, -1), np.arange(1, 11)]), ["T", "U"], genes)
    return table.sample(frac=1.0, random_state=0)


def test_marker_recall_equals_hand_count() -> None:
    markers = {"T cells": {"g2", "g5", "g11"}, "Other": {"g1"}}
    curve = marker_recall_curve(_ranking(), markers, {"T": "T cells"}, ks=[1, 2, 5, 10])
    assert list(curve.columns) == list(RECALL_COLUMNS)
    assert curve.cell_type.unique().tolist() == ["T"]  # U is unmapped: skipped
    assert curve.marker_set.unique().tolist() == ["T cells"]
    assert curve.k.tolist() == [1, 2, 5, 10]
    assert curve.recovered.tolist() == [0, 1, 2, 2]
    assert curve.n_markers.tolist() == [3, 3, 3, 3]
    np.testing.assert_allclose(curve.recall, [0.0, 1 / 3, 2 / 3, 2 / 3])
    background = {f"g{i}" for i in range(1, 11)}  # g11 was never seen by the model
    curve = marker_recall_curve(_ranking(), markers, {"T": "T cells"}, ks=[1, 2, 5, 10], background=background)
    assert curve.n_markers.tolist() == [2, 2, 2, 2]
    np.testing.assert_allclose(curve.recall, [0.0, 0.5, 1.0, 1.0])
    curve = marker_recall_curve(_ranking(), markers, {"U": "T cells"}, ks=[5, 6])  # U ranks g10..g1
    assert curve.recovered.tolist() == [0, 1]


def test_marker_recall_refuses_unknown_marker_set_and_bad_k() -> None:
    with pytest.raises(ValueError, match="Typo cells"):
        marker_recall_curve(_ranking(), {"T cells": {"g2"}}, {"T": "Typo cells"}, ks=[1])
    with pytest.raises(ValueError, match="k must be"):
        marker_recall_curve(_ranking(), {"T cells": {"g2"}}, {"T": "T cells"}, ks=[0])


def test_load_panglaodb_markers_species_and_canonical(shared_data: Path) -> None:
    human = load_marker_table(shared_data / PANGLAO)
    mouse = load_marker_table(shared_data / PANGLAO, species="Mm")
    canonical = load_marker_table(shared_data / PANGLAO, canonical_only=True)
    assert {"CD19", "MS4A1", "CD79A", "PAX5"} <= human["B cells"]
    assert "H2-DMB2" in mouse["B cells"] and "H2-DMB2" not in human["B cells"]  # "Mm" only
    assert "FCER2" in human["B cells"] and "FCER2" not in mouse["B cells"]  # "Hs" only
    assert "FAM46C" not in human["B cells"] | mouse["B cells"]  # species "None"
    assert {"CD19", "MS4A1"} <= canonical["B cells"] and "CD69" not in canonical["B cells"]
    assert "CD69" in human["B cells"]
    assert canonical["B cells"] < human["B cells"]
    assert {"INS", "GCG"} <= human["Beta cells"] | human["Alpha cells"]


def test_load_marker_table_refuses_wrong_file_and_species(tmp_path: Path) -> None:
    path = tmp_path / "markers.tsv"
    path.write_text("species\tgene\tcell type\nHs\tCD19\tB cells\n")
    with pytest.raises(InputError, match="official gene symbol"):
        load_marker_table(path)
    with pytest.raises(ValueError, match="species"):
        load_marker_table(path, species="human")


# ---- the top-genes stage reads the combined matrix by rows (bounded per-type sample; baseline code for logreg) ----

@pytest.fixture(scope="module")
def symphony_store(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """pbmc_symphony as a cell store with its splits (the final split included)."""
    import anndata as ad

    from sclabel import splits, store

    folder = tmp_path_factory.mktemp("interpret_store")
    combined, splits_file = folder / "combined.h5ad", folder / "splits.tsv"
    store.write_store(ad.read_h5ad(shared_data / "pbmc_symphony.h5ad"), combined, chunk_cells=250)
    splits.split_stage(str(combined), {"scheme": "cv", "n_folds": 3, "val_fraction": 0.1, "seed": 0}, str(splits_file),
                       str(folder / "class_counts.tsv"))
    return combined, splits_file


@pytest.mark.shared_data
def test_labelled_sample_is_every_labelled_cell_below_the_cap_and_capped_per_type_above(symphony_store) -> None:
    from sclabel.explain import labelled_data, labelled_sample

    combined, _ = symphony_store
    full, labels = labelled_data(str(combined))
    sample, sample_labels = labelled_sample(str(combined), 10_000, seed=0)
    assert list(sample.obs_names) == list(full.obs_names) and sample_labels.equals(labels)
    np.testing.assert_array_equal(sample.X.toarray(), full.X.toarray())
    capped, capped_labels = labelled_sample(str(combined), 50, seed=0)
    counts = capped_labels.value_counts()
    assert counts.max() == 50 and (counts == np.minimum(labels.value_counts()[counts.index], 50)).all()
    assert list(capped.obs_names) == list(capped_labels.index)
    np.testing.assert_array_equal(capped.X.toarray(), full[capped_labels.index].X.toarray())
    again, _ = labelled_sample(str(combined), 50, seed=0)
    assert list(again.obs_names) == list(capped.obs_names)  # seeded


@pytest.mark.shared_data
def test_linear_top_genes_come_from_the_saved_final_model(symphony_store, tmp_path) -> None:
    from sclabel import splits
    from sclabel.baselines import build_baseline
    from sclabel.explain import TOP_GENE_COLUMNS, labelled_data, top_genes_stage
    from sclabel.method_stage import method_stage
    from sclabel.splits import read_split

    combined, splits_file = symphony_store
    adata, labels = labelled_data(str(combined))
    roles = read_split(str(splits_file), splits.FINAL)
    fit = roles.index[roles == splits.TRAIN]  # the stage fits the training cells; validation sets its threshold
    model = build_baseline("logreg", {"C": 1.0}, 0).fit(adata[fit].X, labels[fit])
    expected = coefficient_top_genes(model, list(adata.var_names), list(model.classes_))
    for settings in ({"C": 1.0}, {"C": 1.0, "max_nnz": 0}):  # one C: no grid chosen on validation cells
        folder = tmp_path / f"logreg_{len(settings)}"
        method_stage("logreg", settings, 0, str(combined), str(splits_file), splits.FINAL, str(folder))
        assert not list(tmp_path.glob("*.tsv"))  # a final model has no test cells to predict
        top_genes_stage("logreg", 0, str(combined), str(folder), str(tmp_path / "top.tsv"))
        table = pd.read_csv(tmp_path / "top.tsv", sep="\t")
        (tmp_path / "top.tsv").unlink()
        assert list(table.columns) == TOP_GENE_COLUMNS and set(table["attribution"]) == {"coefficient"}
        if "max_nnz" not in settings:
            pd.testing.assert_frame_equal(table.drop(columns=["method", "attribution"]), expected,
                                          check_dtype=False)
        top = table[table["rank"] <= 20]
        assert "MS4A1" in set(top.loc[top["cell_type"] == "B", "gene"])  # SGD coefficients find the B-cell marker too
