"""Fine-tuning, checkpoint resume, save/load and gene alignment on the real Symphony PBMC data."""

from __future__ import annotations

import logging
from dataclasses import replace

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from sclabel.errors import InputError
from sclabel.qc import align_genes
from sclabel.model import UNASSIGNED, CellTypeAnnotator
from sclabel.nn.encoders import time_left
from sclabel.nn.finetune import FinetuneSettings, class_weights, epoch_order

SETTINGS = FinetuneSettings(epochs=20, batch_size=64, patience=3)


class Interrupted(Exception):
    """Raised from the epoch callback to stop a run the way a crash would."""


@pytest.fixture(scope="module")
def pbmc(shared_data):
    """Symphony PBMCs (already log1p CP10k) split 60/15/25 stratified by cell type."""
    adata = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    y = adata.obs["cell_type"].astype(str).to_numpy()
    rows = np.arange(adata.n_obs)
    train, test = train_test_split(rows, test_size=0.25, stratify=y, random_state=0)
    train, val = train_test_split(train, test_size=0.2, stratify=y[train], random_state=0)
    return {"adata": adata, "labels": sorted(set(y)),
            **{name: (adata.X[part], y[part]) for name, part in (("train", train), ("val", val), ("test", test))}}


def _new_model(pbmc, **kwargs) -> CellTypeAnnotator:
    """Default MLP annotator over all Symphony genes."""
    return CellTypeAnnotator(list(pbmc["adata"].var_names), pbmc["labels"], "mlp", {}, {},
                             {"normalize": "log1p_cp10k"}, {"test": True}, **kwargs)


def _fit(pbmc, settings: FinetuneSettings = SETTINGS, seed: int = 0, **kwargs):
    """Fit a fresh annotator on the train split; returns (model, history)."""
    model = _new_model(pbmc)
    history = model.train(*pbmc["train"], *pbmc["val"], settings, seed=seed, device="cpu", progress=False, **kwargs)
    return model, history


def _states_equal(a: dict, b: dict) -> bool:
    """Whether two state dicts hold identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def trained(pbmc):
    return _fit(pbmc)


def test_beats_majority_class_and_keeps_best_epoch(pbmc, trained):
    model, history = trained
    X_test, y_test = pbmc["test"]
    majority = np.full(len(y_test), max(set(pbmc["train"][1]), key=list(pbmc["train"][1]).count))
    predicted, _ = model.predict(X_test)
    assert not any(module.training for module in model.network.modules())  # predicting leaves the model in eval mode
    assert f1_score(y_test, predicted, average="macro") > f1_score(y_test, majority, average="macro") + 0.5
    assert accuracy_score(y_test, predicted) > accuracy_score(y_test, majority) + 0.4
    assert history["best_val_macro_f1"] == max(history["val_macro_f1"])
    assert history["val_macro_f1"][history["best_epoch"] - 1] == history["best_val_macro_f1"]
    X_val, y_val = pbmc["val"]
    val_pred, _ = model.predict(X_val)
    assert f1_score(y_val, val_pred, average="macro") == pytest.approx(history["best_val_macro_f1"])
    assert history["stopped_early"] and history["epoch"][-1] == history["best_epoch"] + SETTINGS.patience
    tied = [e for e, f1 in zip(history["epoch"], history["val_macro_f1"]) if round(f1, 6) == round(max(
        history["val_macro_f1"]), 6)]
    losses = dict(zip(history["epoch"], history["val_loss"]))
    assert history["best_epoch"] == min(tied, key=lambda e: (losses[e], e))  # ties at the top go to the lower loss


def test_save_load_gives_identical_predictions(pbmc, trained, tmp_path):
    model, _ = trained
    X_test, _ = pbmc["test"]
    folder = tmp_path / "model"
    model.save(folder)
    model.save(folder)  # overwriting an existing model folder works
    loaded = CellTypeAnnotator.load(folder)
    assert loaded.genes == model.genes and loaded.labels == model.labels
    assert loaded.config == {"test": True} and loaded.preprocessing == {"normalize": "log1p_cp10k"}
    assert loaded.training["history"]["best_epoch"] == model.training["history"]["best_epoch"]
    assert np.array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))
    assert np.array_equal(loaded.embed(X_test), model.embed(X_test))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "no temporary folders left behind"


def test_interrupted_run_resumes_from_checkpoint_and_matches_uninterrupted(pbmc, tmp_path):
    settings = replace(SETTINGS, epochs=4, patience=10)
    full, full_history = _fit(pbmc, settings, checkpoint_dir=tmp_path / "full")

    def stop_after_first(epoch: int, history: dict) -> None:
        raise Interrupted(epoch)

    with pytest.raises(Interrupted):
        _fit(pbmc, settings, checkpoint_dir=tmp_path / "resumed", on_epoch_end=stop_after_first)
    assert (tmp_path / "resumed" / "last.pt").is_file()
    epochs_run = []
    resumed, resumed_history = _fit(pbmc, settings, checkpoint_dir=tmp_path / "resumed",
                                    on_epoch_end=lambda epoch, history: epochs_run.append(epoch))
    assert epochs_run == [2, 3, 4] and resumed_history["start_epoch"] == 2
    assert {**resumed_history, "start_epoch": 1} == full_history
    assert _states_equal(resumed.network.state_dict(), full.network.state_dict())
    last = {name: torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("full", "resumed")}
    for part in ("encoder", "head"):
        assert _states_equal(last["full"][part], last["resumed"][part]), f"last-epoch {part} weights differ"


def test_truncated_checkpoint_is_discarded_with_a_warning_and_training_restarts(pbmc, tmp_path, caplog):
    settings = replace(SETTINGS, epochs=2, patience=10)
    full, full_history = _fit(pbmc, settings)
    with pytest.raises(Interrupted):
        _fit(pbmc, settings, checkpoint_dir=tmp_path, on_epoch_end=lambda epoch, history: _raise(Interrupted(epoch)))
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:last.stat().st_size // 2])  # a disk filled up or a copy cut short
    epochs_run = []
    restarted, history = _fit(pbmc, settings, checkpoint_dir=tmp_path,
                              on_epoch_end=lambda epoch, history: epochs_run.append(epoch))
    assert epochs_run == [1, 2] and history == full_history
    assert _states_equal(restarted.network.state_dict(), full.network.state_dict())
    assert f"{last}: unreadable checkpoint discarded" in caplog.text and "restarts from epoch 1" in caplog.text
    assert torch.load(last, weights_only=True)["epoch"] == 2  # overwritten by the restarted run


def _raise(err: Exception) -> None:
    """Raise ``err`` (from a lambda)."""
    raise err


def test_checkpoint_of_other_settings_is_refused(pbmc, tmp_path):
    settings = replace(SETTINGS, epochs=1)
    _fit(pbmc, settings, checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="last.pt: settings") as err:
        _fit(pbmc, settings, seed=1, checkpoint_dir=tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("imbalance", ["weighted_loss", "none"])
def test_other_imbalance_modes_train(pbmc, imbalance):
    _, history = _fit(pbmc, replace(SETTINGS, epochs=5, imbalance=imbalance, grad_accum_steps=2))
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["best_val_macro_f1"] > 0.5


def test_bf16_training_keeps_float32_weights_and_lands_near_fp32(pbmc, trained):
    model, history = _fit(pbmc, replace(SETTINGS, precision="bf16"))
    assert all(p.dtype == torch.float32 for p in model.network.parameters())
    X_test, y_test = pbmc["test"]
    exact = f1_score(y_test, trained[0].predict(X_test)[0], average="macro")
    assert f1_score(y_test, model.predict(X_test)[0], average="macro") == pytest.approx(exact, abs=0.05)
    assert history["train_loss"][-1] < history["train_loss"][0]
    with pytest.raises(ValueError, match="precision 'fp16' is not one of fp32, bf16"):
        FinetuneSettings(precision="fp16")


def test_sampler_balances_classes_and_weights_invert_counts(pbmc):
    y = _new_model(pbmc).encode_labels(pbmc["train"][1])
    n_classes = len(pbmc["labels"])
    counts = np.bincount(y, minlength=n_classes)
    drawn = epoch_order(y, n_classes, "sampler", torch.Generator().manual_seed(0))
    assert len(drawn) == len(y)
    share = np.bincount(y[drawn], minlength=n_classes) / len(y)
    assert np.all(np.abs(share - 1 / n_classes) < 0.05), share
    shuffled = epoch_order(y, n_classes, "none", torch.Generator().manual_seed(0))
    assert sorted(shuffled) == list(range(len(y)))
    weighted_totals = class_weights(y, n_classes).numpy() * counts
    assert np.allclose(weighted_totals, weighted_totals[0])


def test_frozen_encoder_keeps_pretrained_weights(pbmc):
    pretrained = {key: torch.randn_like(value) for key, value in _new_model(pbmc).encoder.state_dict().items()}
    model, _ = _fit(pbmc, replace(SETTINGS, epochs=2, freeze_encoder=True), pretrained_encoder_state=pretrained)
    assert _states_equal(model.encoder.state_dict(), pretrained)


def test_threshold_marks_low_confidence_cells_unassigned(pbmc, trained):
    model, _ = trained
    X_test, _ = pbmc["test"]
    labels, confidence = model.predict(X_test)
    assert UNASSIGNED not in labels
    cut = float(np.median(confidence))
    thresholded, _ = model.predict(X_test, threshold=cut)
    low = confidence < cut
    assert low.any() and np.all(thresholded[low] == UNASSIGNED)
    assert np.array_equal(thresholded[~low], labels[~low])
    assert set(model.predict(X_test, threshold=1.01)[0]) == {UNASSIGNED}


def test_align_genes_zero_fills_and_refuses_low_overlap(pbmc):
    adata = pbmc["adata"][:50]
    model_genes = [*adata.var_names[10:0:-1], "NOT_A_GENE_1", "NOT_A_GENE_2"]
    aligned, overlap = align_genes(adata, model_genes, source="query.h5ad")
    assert sp.issparse(aligned) and aligned.dtype == np.float32 and aligned.shape == (50, 12)
    assert overlap == pytest.approx(10 / 12)
    assert np.array_equal(aligned[:, :10].toarray(), adata[:, model_genes[:10]].X.toarray())
    assert aligned[:, 10:].nnz == 0
    dense, _ = align_genes((adata.X.toarray(), list(adata.var_names)), model_genes)
    assert np.array_equal(dense, aligned.toarray())
    with pytest.raises(InputError) as err:
        align_genes(adata, [*model_genes[:2], *(f"MISSING{i}" for i in range(8))], source="query.h5ad")
    message = str(err.value)
    assert message.startswith("query.h5ad: genes:") and "2 of 10" in message and "\n" not in message


def test_every_epoch_logs_its_scores_speed_and_time_left(pbmc, caplog):
    with caplog.at_level(logging.INFO, logger="sclabel.nn.finetune"):
        _fit(pbmc, replace(SETTINGS, epochs=3, patience=3))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("val macro F1" in line and "left" in line and line.endswith("training cells/s") for line in lines)
    assert lines[-1].split("at most ")[1].startswith("0s left")


def test_time_left_is_the_mean_epoch_time_times_the_epochs_left():
    assert time_left([2.0, 4.0], 10) == "30s"
    assert time_left([61.0], 2) == "2m 02s"
    assert time_left([400.0], 20) == "2h 13m"
