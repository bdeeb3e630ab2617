"""SHAP attributions: real shap explainers on tiny real models, their per-type rankings and their config."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from sclabel import shap_attribution
from sclabel.annotator import LabelledCells
from sclabel.baselines import BaselineAnnotator
from sclabel.model import CellTypeAnnotator
from sclabel.ranking import linear_coefficients

from workflow_helpers import load_config, snakemake, write_config

GENES = [f"g{i}" for i in range(30)]
LABELS = ["A", "B", "C"]


def _planted(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """log1p Poisson expression of three types; A has gene g1 raised, B gene g7, C neither."""
    y = np.repeat(LABELS, 60)
    X = np.log1p(np.random.default_rng(seed).poisson(0.8, size=(len(y), len(GENES)))).astype(np.float32)
    X[y == "A", 1] += 1.5
    X[y == "B", 7] += 1.5
    return X, y


def test_linear_shap_ranks_planted_markers_first_and_is_coefficients_times_centred_input() -> None:
    X, y = _planted(13)
    annotator = BaselineAnnotator("logreg", {"C": 1.0}, seed=0, genes=GENES).fit(LabelledCells(sp.csr_matrix(X), y))
    background = X[::3]
    table = shap_attribution.linear_shap_top_genes(annotator, sp.csr_matrix(X), background)
    top = table[table["rank"] == 1].set_index("cell_type")["gene"]
    assert top["A"] == "g1" and top["B"] == "g7"
    # by hand: coef[predicted class] * (x - background mean), averaged over each predicted type
    coefs = linear_coefficients(annotator.model, LABELS)
    predicted = annotator.predict_proba(sp.csr_matrix(X)).argmax(axis=1)
    per_cell = coefs[predicted] * (X - background.mean(axis=0))
    expected = pd.DataFrame(per_cell, columns=GENES).groupby(np.asarray(LABELS)[predicted]).mean()
    scores = table.pivot(index="cell_type", columns="gene", values="score").loc[expected.index, GENES]
    np.testing.assert_allclose(scores.to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder", ["mlp", "transformer"])
def test_neural_shap_gives_one_finite_ranking_per_predicted_type(encoder: str) -> None:
    X, _ = _planted(5)
    torch.manual_seed(0)
    hparams = {"dim": 8, "depth": 1, "heads": 2, "nb_features": 8} if encoder == "transformer" else {}
    model = CellTypeAnnotator(GENES, LABELS, encoder, hparams, {"hidden_dims": [8]})
    cells = X[::15]  # 12 cells, 4 of each type
    table = shap_attribution.neural_shap_top_genes(model, cells, X[1::9], seed=0, samples=50)
    predicted = np.asarray(model.labels)[model.logits(cells).argmax(axis=1)]
    assert set(table["cell_type"]) == set(predicted)
    assert (table.groupby("cell_type")["gene"].nunique() == len(GENES)).all()
    assert np.isfinite(table["score"]).all() and (table["score"] != 0).any()


def test_unknown_attribution_is_refused_in_one_line(tmp_path: Path) -> None:
    config = load_config()
    config["interpret"] = {**config.get("interpret", {}), "attribution": ["native", "lime"]}
    result = snakemake(tmp_path, write_config(tmp_path, config), "--dry-run", check=False)
    assert result.returncode != 0
    line = "config: interpret.attribution: unknown attribution(s) lime. Fix: use native or shap"
    assert line in (result.stdout + result.stderr).splitlines()


def test_marker_recall_labels_native_and_shap_rankings(tmp_path: Path) -> None:
    from sclabel.explain import marker_recall_stage
    from sclabel.store import write_store

    write_store(ad.AnnData(sp.csr_matrix(np.ones((4, len(GENES)), dtype=np.float32)),
                           var=pd.DataFrame(index=GENES)), tmp_path / "combined.h5ad")
    markers = pd.DataFrame({"species": "Hs", "official gene symbol": ["g1", "g2"], "cell type": "A cells",
                            "canonical marker": "1"})
    markers.to_csv(tmp_path / "markers.tsv", sep="\t", index=False)
    files = []
    for attribution, genes in (("coefficient", ["g1", "g3", "g2"]), ("shap", ["g1", "g2", "g3"])):
        ranking = pd.DataFrame({"method": "logreg", "attribution": attribution, "cell_type": "A", "gene": genes,
                                "score": [3.0, 2.0, 1.0], "rank": [1, 2, 3]})
        files.append(tmp_path / f"{attribution}.tsv")
        ranking.to_csv(files[-1], sep="\t", index=False)
    settings = {"marker_table": str(tmp_path / "markers.tsv"), "marker_species": "Hs",
                "cell_type_map": {"A": "A cells"}, "recall_ks": [2]}
    marker_recall_stage([str(f) for f in files], str(tmp_path / "combined.h5ad"), settings,
                        str(tmp_path / "recall.tsv"), str(tmp_path / "recall.png"))
    recall = pd.read_csv(tmp_path / "recall.tsv", sep="\t").set_index("method")
    assert recall.loc["logreg", "attribution"] == "coefficient" and recall.loc["logreg", "recall"] == 0.5
    assert recall.loc["logreg (shap)", "attribution"] == "shap" and recall.loc["logreg (shap)", "recall"] == 1.0
