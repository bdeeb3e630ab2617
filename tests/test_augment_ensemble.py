"""Training augmentation (same-type mixing + noise) and deep ensembles (finetune.n_seeds) on real Symphony PBMCs."""

from __future__ import annotations

import json
from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from sclabel import io, registry, splits, training
from sclabel.annotator import MANIFEST, load_annotator
from sclabel.evaluation import selection_row
from sclabel.model import CellTypeAnnotator
from sclabel.nn import novelty
from sclabel.nn.encoders import MLPEncoder, predict_batches
from sclabel.nn.finetune import (ClassifierHead, FinetuneSettings, augment_batch, augment_generator, fit_classifier,
                                 same_type_partners)
from sclabel.store import write_store

SETTINGS = FinetuneSettings(epochs=3, batch_size=64, patience=3)
ENCODER = {"hidden_dims": [], "out_dim": 16}
HEAD = {"hidden_dims": [32], "dropout": 0.1}


@pytest.fixture(scope="module")
def cells(shared_data):
    """600 Symphony PBMCs of its 7 types with 20+ cells, on their 400 first genes, split 60/20/20 stratified by cell
    type (dense log1p CP10k)."""
    adata = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    y = adata.obs["cell_type"].astype(str).to_numpy()
    common = np.flatnonzero(adata.obs["cell_type"].map(adata.obs["cell_type"].value_counts()).to_numpy() >= 20)
    rows, _ = train_test_split(common, train_size=600, stratify=y[common], random_state=0)
    X = np.asarray(adata.X[rows][:, :400].todense(), dtype=np.float32)
    y = y[rows]
    train, rest = train_test_split(np.arange(600), test_size=0.4, stratify=y, random_state=0)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=0)
    return {"genes": list(adata.var_names[:400]), "labels": sorted(set(y)),
            **{name: (X[part], y[part]) for name, part in (("train", train), ("val", val), ("test", test))}}


def _fit_network(cells, settings: FinetuneSettings, seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of an MLP + head fitted by the shared training loop."""
    codes = {label: i for i, label in enumerate(cells["labels"])}
    (X_train, y_train), (X_val, y_val) = cells["train"], cells["val"]
    torch.manual_seed(seed)
    encoder, head = MLPEncoder(X_train.shape[1], **ENCODER), ClassifierHead(16, len(codes), **HEAD)
    fit_classifier(encoder, head, X_train, np.array([codes[v] for v in y_train]), X_val,
                   np.array([codes[v] for v in y_val]), settings, seed, "cpu", progress=False)
    return {key: value.clone() for key, value in torch.nn.Sequential(encoder, head).state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_augmentation_off_trains_exactly_as_without_it_and_on_is_seeded(cells):
    plain = _fit_network(cells, SETTINGS)
    assert _equal(plain, _fit_network(cells, replace(SETTINGS, augment=0.0, augment_noise=0.7)))
    augmented = _fit_network(cells, replace(SETTINGS, augment=0.5))
    assert _equal(augmented, _fit_network(cells, replace(SETTINGS, augment=0.5)))  # same seed, same weights
    assert not _equal(augmented, plain)
    assert not _equal(augmented, _fit_network(cells, replace(SETTINGS, augment=0.5), seed=1))
    with pytest.raises(ValueError, match="augment must be a probability"):
        FinetuneSettings(augment=1.5)


def test_partners_are_other_cells_of_the_same_type_drawn_uniformly():
    codes = torch.tensor([0, 1, 0, 2, 1, 0, 3, 0])  # type 2 and type 3 have one cell each
    generator = torch.Generator().manual_seed(0)
    drawn = torch.stack([same_type_partners(codes, generator) for _ in range(400)])
    assert torch.equal(codes[drawn], codes.expand_as(drawn))
    for cell in range(len(codes)):
        mates = set(np.flatnonzero(codes.numpy() == codes[cell].item()).tolist()) - {cell}
        assert set(drawn[:, cell].tolist()) == (mates or {cell})  # every mate drawn; a lone cell is its own
    counts = np.bincount(drawn[:, 0].numpy(), minlength=len(codes))[[2, 5, 7]]
    assert counts.min() > 100  # about 133 each


def test_mixing_stays_within_the_cell_type_and_leaves_unchosen_cells_alone(cells):
    X_train, y_train = cells["train"]
    codes = torch.from_numpy(np.unique(y_train, return_inverse=True)[1][:128])
    x = torch.from_numpy(X_train[:128])
    mixed = augment_batch(x, codes, 1.0, 0.0, augment_generator(0))
    for cell in range(len(codes)):  # noise 0: (1 - w) * cell + w * a partner of the same type, w in [0, 0.5]
        shift = mixed[cell] - x[cell]
        fits = []
        for mate in np.flatnonzero((codes == codes[cell]).numpy()):
            direction = x[mate] - x[cell]
            weight = float(direction @ shift / direction.dot(direction)) if direction.any() else 0.0
            fits.append((float(torch.linalg.norm(shift - weight * direction)), weight))
        residual, weight = min(fits)
        assert residual < 1e-4 and -1e-6 <= weight <= 0.5 + 1e-6
    half = augment_batch(x, codes, 0.5, 0.1, augment_generator(0))
    untouched = (half == x).all(dim=1)
    assert 0.3 < untouched.float().mean() < 0.7 and (half >= 0).all()
    for cell in np.flatnonzero(~untouched.numpy()):  # noise on detected genes only: no gene its type never shows
        detected_in_type = (x[codes == codes[cell]] > 0).any(dim=0)
        assert not (half[cell] > 0)[~detected_in_type].any()
    assert torch.equal(half, augment_batch(x, codes, 0.5, 0.1, augment_generator(0)))
    assert torch.equal(augment_batch(x, codes, 0.0, 0.1, augment_generator(0)), x)


def _model(cells, n_seeds: int, rejection: str = "centroid_distance") -> CellTypeAnnotator:
    return CellTypeAnnotator(cells["genes"], cells["labels"], "mlp", ENCODER, HEAD,
                             config={"finetune": {"n_seeds": n_seeds, "rejection": rejection}})


def _train(cells, model: CellTypeAnnotator, seed: int, **options) -> CellTypeAnnotator:
    model.train(*cells["train"], *cells["val"], SETTINGS, seed=seed, device="cpu", progress=False, **options)
    return model


@pytest.fixture(scope="module")
def ensemble(cells, tmp_path_factory):
    """An ensemble of 2 (seeds 3 and 4) trained with checkpoints, and its checkpoint folder."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return _train(cells, _model(cells, 2, "ensemble_mi"), 3, checkpoint_dir=folder), folder


def test_ensemble_probabilities_are_the_mean_of_its_independently_trained_members(cells, ensemble):
    model, _ = ensemble
    X_test, _ = cells["test"]
    singles = [_train(cells, _model(cells, 1), seed) for seed in (3, 4)]
    expected = np.mean([single.predict_proba(X_test) for single in singles], axis=0)
    np.testing.assert_allclose(model.predict_proba(X_test), expected, rtol=1e-6, atol=1e-7)
    for member, single in zip(model.members, singles):
        assert member.temperature == single.temperature
        direct = novelty.softmax(predict_batches(member.network, X_test, 64), member.temperature)
        assert np.array_equal(direct, single.predict_proba(X_test))
    assert [record["seed"] for record in model.training["members"]] == [3, 4]
    assert all(record["seconds"] > 0 for record in model.training["members"])
    np.testing.assert_allclose(np.linalg.norm(model.embed(X_test), axis=1), 1.0, rtol=1e-5)


def test_mutual_information_is_nonnegative_and_higher_off_distribution(cells, ensemble):
    model, _ = ensemble
    X_test, _ = cells["test"]
    shuffled = X_test[:, np.random.default_rng(0).permutation(X_test.shape[1])]  # genes scrambled
    known, novel = model.rejection_score(X_test), model.rejection_score(shuffled)
    assert model.rejection == "ensemble_mi" and (known >= 0).all() and (novel >= 0).all()
    auroc = roc_auc_score(np.r_[np.zeros(len(known)), np.ones(len(novel))], np.r_[known, novel])
    assert auroc > 0.8 and np.median(novel) > 2 * np.median(known), auroc
    probabilities = model.member_probabilities(X_test)
    by_hand = [novelty.entropy(p.mean(axis=0)) - np.mean([novelty.entropy(q) for q in p]) for p in probabilities]
    np.testing.assert_allclose(known, np.maximum(by_hand, 0), atol=1e-9)
    with pytest.raises(ValueError, match="set finetune.n_seeds to 2 or more"):
        _model(cells, 1, "ensemble_mi")


def test_ensemble_round_trips_through_save_load_and_resumes_from_member_checkpoints(cells, ensemble, tmp_path):
    model, folder = ensemble
    X_test, _ = cells["test"]
    model.save(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / MANIFEST).read_text())
    assert meta["meta"]["n_seeds"] == 2 and meta["settings"]["n_seeds"] == 2
    loaded = CellTypeAnnotator.load(tmp_path / "model")
    assert len(loaded.members) == 2
    assert np.array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))
    for option in model.rejection_options:
        assert np.array_equal(loaded.rejection_score(X_test, option), model.rejection_score(X_test, option)), option
    assert (folder / "last.pt").is_file() and (folder / "member1" / "last.pt").is_file()
    resumed = _train(cells, _model(cells, 2, "ensemble_mi"), 3, checkpoint_dir=folder)  # both members finished
    assert [record["start_epoch"] for record in resumed.training["members"]] == [SETTINGS.epochs + 1] * 2
    assert np.array_equal(resumed.predict_proba(X_test), model.predict_proba(X_test))


def test_listed_settings_are_every_combination_and_selections_name_them(tmp_path):
    varied, candidates = training.candidate_settings({"imbalance": ["sampler", "weighted_loss"], "augment": [0, 0.5]})
    assert varied == ["imbalance", "augment"] and len(candidates) == 4
    assert [training.candidate_label(c, varied) for c in candidates] == [
        "sampler/0", "sampler/0.5", "weighted_loss/0", "weighted_loss/0.5"]
    assert training.candidate_settings({"imbalance": "none", "augment": 0.5}) == (
        ["imbalance"], [{"imbalance": "none", "augment": 0.5}])
    assert training.candidate_settings({"augment": [0, 0.5]})[0] == ["augment"]
    folder = tmp_path / "mlp" / "cv1"
    folder.mkdir(parents=True)
    selection = {"imbalance": "sampler", "augment": 0.5, "scores": {"sampler/0": 0.8, "sampler/0.5": 0.9}}
    (folder / MANIFEST).write_text(json.dumps({"method": "mlp", "meta": {"selection": selection}}))
    row = selection_row(folder)
    assert (row["setting"], row["chosen"]) == ("imbalance/augment", "sampler/0.5")


def test_an_ens_variant_trains_through_the_finetune_stage_as_its_base_with_n_seeds_members(cells, tmp_path):
    parts = ("train", "val", "test")
    y = np.concatenate([cells[part][1] for part in parts])
    ids = [f"c{i}" for i in range(len(y))]
    adata = ad.AnnData(sp.csr_matrix(np.vstack([cells[part][0] for part in parts])),
                       obs=pd.DataFrame({"cell_type": pd.Categorical(y)}, index=ids),
                       var=pd.DataFrame(index=cells["genes"]))
    write_store(adata, tmp_path / "cells.h5ad")
    roles = np.repeat([splits.TRAIN, splits.VAL, splits.TEST], [len(cells[part][1]) for part in parts])
    io.write_tsv(pd.DataFrame({"cell_id": ids, "cv1": roles}), tmp_path / "splits.tsv")
    finetune = {"epochs": 3, "batch_size": 64, "patience": 3, "head_hidden_dims": [32], "dropout": 0.1, "seed": 3,
                "device": "cpu", "n_seeds": 1, "rejection": "centroid_distance", "ensemble": {"n_seeds": 3},
                "overrides": {"mlp": {"lr": 0.002}, "mlp@ens": {"rejection": "ensemble_mi"}}}
    settings = registry.finetune_block(finetune, "mlp@ens")
    training.finetune_stage("mlp@ens", ENCODER, settings, {"normalisation": "log1p_cp10k"}, str(tmp_path / "cells.h5ad"),
                            str(tmp_path / "splits.tsv"), "cv1", None, str(tmp_path / "checkpoints"),
                            str(tmp_path / "model"), str(tmp_path / "test.tsv"))
    model = load_annotator(tmp_path / "model")
    assert model.method == "mlp@ens" and len(model.members) == 3 and model.rejection == "ensemble_mi"
    assert model.settings["lr"] == 0.002 and "ensemble" not in model.settings  # the base's override, no variant block
    assert [record["seed"] for record in model.training["members"]] == [3, 4, 5]
    X_test, y_test = cells["test"]
    table = pd.read_csv(tmp_path / "test.tsv", sep="\t")
    assert (table["predicted"] == y_test).mean() > 0.7
    np.testing.assert_allclose(table["rejection_score"], model.rejection_score(X_test), rtol=1e-4, atol=1e-6)
