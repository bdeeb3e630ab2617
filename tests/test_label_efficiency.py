"""The label-fraction sweep (split.label_fractions): nested stratified draws, pretraining once per base split on every
non-test cell, the label-efficiency curves and a small sweep run end to end."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sclabel import metrics, registry, split_names, splits, training
from workflow_helpers import absolute_paths, load_config, planned_jobs, snakemake, write_config

FRACTIONS = [0.01, 0.05, 0.25, 1.0]


@pytest.fixture(scope="module")
def zheng_labels(shared_data) -> pd.Series:
    """The 2,140 FACS-sorted Zheng PBMCs' labels (9 populations, 43 to 769 cells)."""
    obs = ad.read_h5ad(shared_data / "pbmc_zheng_sorted.h5ad", backed="r").obs
    return obs["cell_type"].astype(str)


@pytest.fixture(scope="module")
def sweep(zheng_labels) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(base 3-fold splits, their label-fraction splits: two draws of each fraction)."""
    base = splits.stratified_cv(zheng_labels.index, zheng_labels, 3, 0.1, seed=0)
    return base, splits.label_fraction_splits(base, zheng_labels, FRACTIONS, 2, 0.1, seed=0)


def labelled(roles: pd.Series) -> pd.Index:
    """The cells a split labels: its training and validation cells."""
    return roles.index[roles.isin([splits.TRAIN, splits.VAL])]


def test_fraction_splits_are_named_per_base_fraction_and_draw(sweep):
    base, fractions = sweep
    assert list(fractions.columns) == [f"cv{k}_f{f}_d{d}" for k in (1, 2, 3) for f in (0.01, 0.05, 0.25)
                                       for d in (1, 2)]
    assert split_names.sweep_split_names(list(base.columns), FRACTIONS, 2) == [
        name for k in (1, 2, 3) for name in [*fractions.columns[(k - 1) * 6:k * 6], f"cv{k}"]]
    assert split_names.parse_split("lodo_3pv1_f0.05_d2") == ("lodo_3pv1", 0.05, 2)
    assert split_names.parse_split("cv3") == ("cv3", 1.0, 1)


def test_draws_are_stratified_nested_and_keep_every_class(sweep, zheng_labels):
    base, fractions = sweep
    for name in fractions.columns:
        split, fraction, draw = split_names.parse_split(name)
        pool = zheng_labels[labelled(base[split])].value_counts()
        chosen = zheng_labels[labelled(fractions[name])].value_counts()
        expected = np.minimum(pool, np.maximum(1, np.round(fraction * pool))).astype(int)
        pd.testing.assert_series_equal(chosen.sort_index(), expected.sort_index(), check_names=False)
        smaller = [f for f in FRACTIONS if f < fraction]
        if smaller:
            assert set(labelled(fractions[split_names.fraction_split_name(split, smaller[-1], draw)])) < set(
                labelled(fractions[name]))
        assert set(labelled(fractions[name])) <= set(labelled(base[split]))
    assert not fractions["cv1_f0.25_d1"].equals(fractions["cv1_f0.25_d2"])
    again = splits.label_fraction_splits(base, zheng_labels, FRACTIONS, 2, 0.1, seed=0)
    pd.testing.assert_frame_equal(again, fractions)


def test_test_cells_are_the_base_splits_and_validation_comes_from_the_labelled_cells(sweep, zheng_labels):
    base, fractions = sweep
    for name in fractions.columns:
        roles, split = fractions[name], split_names.base_split(name)
        assert roles.index[roles == splits.TEST].equals(base[split].index[base[split] == splits.TEST])
        assert set(roles.unique()) == {splits.TRAIN, splits.VAL, splits.TEST, splits.UNLABELLED}
        per_class = pd.crosstab(zheng_labels, roles)
        # every class with two labelled cells has one for validation, and keeps one for training
        has_two = per_class[splits.TRAIN] + per_class[splits.VAL] >= 2
        assert (per_class.loc[has_two, splits.VAL] >= 1).all() and (per_class[splits.TRAIN] >= 1).all()


def test_pretraining_reads_every_cell_a_fraction_hides_and_the_unlabelled_dataset(sweep, shared_data):
    base, fractions = sweep
    donor = ad.read_h5ad(shared_data / "pbmc_donorA_unlabelled.h5ad", backed="r").obs_names
    cell_ids = [*base.index, *donor]
    obs = pd.DataFrame({"dataset": pd.Categorical(["zheng"] * len(base) + ["donorA"] * len(donor))}, index=cell_ids)
    combined = ad.AnnData(obs=obs)
    cells = training.pretraining_cells(combined, base["cv1"], {"use_test_cells": False, "datasets": None})
    read = set(combined.obs_names[np.concatenate(list(cells.values()))])
    hidden = fractions.index[fractions["cv1_f0.01_d1"] == splits.UNLABELLED]
    assert set(hidden) < read and set(donor) < read
    assert read.isdisjoint(base.index[base["cv1"] == splits.TEST])


def test_curves_and_pretraining_effect_match_a_hand_computation():
    kappa = {("mlp", "cv1_f0.1_d1"): 0.50, ("mlp", "cv1_f0.1_d2"): 0.40, ("mlp", "cv2_f0.1_d1"): 0.55,
             ("kmeans+mlp", "cv1_f0.1_d1"): 0.60, ("kmeans+mlp", "cv1_f0.1_d2"): 0.48,
             ("kmeans+mlp", "cv2_f0.1_d1"): 0.58, ("mlp", "cv1"): 0.8, ("kmeans+mlp", "cv1"): 0.79,
             ("logreg", "cv1_f0.1_d1"): 0.7}
    long = pd.DataFrame([{"method": m, "split": s, "metric": "known_kappa", "value": v} for (m, s), v in kappa.items()])
    long = long.assign(scheme="cv", label_fraction=long["split"].map(split_names.label_fraction))
    pairs = registry.pretraining_pairs(["logreg", "mlp", "kmeans+mlp"])
    curves = metrics.label_efficiency(long, pairs).set_index(["label_fraction", "method"])
    mlp = np.array([0.50, 0.40, 0.55])
    pretrained = np.array([0.60, 0.48, 0.58])
    row = curves.loc[(0.1, "mlp")]
    assert (row["n"], row["mean"], row["sd"]) == (3, pytest.approx(mlp.mean()), pytest.approx(mlp.std(ddof=1)))
    effect = curves.loc[(0.1, "kmeans+mlp")]
    difference = pretrained - mlp
    low, high = stats.t.interval(0.95, 2, loc=difference.mean(), scale=stats.sem(difference))
    assert effect["counterpart"] == "mlp" and effect["n_pairs"] == 3
    assert effect[["difference", "difference_low", "difference_high"]].tolist() == pytest.approx(
        [difference.mean(), low, high])
    one_pair = curves.loc[(1.0, "kmeans+mlp")]
    assert one_pair["difference"] == pytest.approx(-0.01) and np.isnan(one_pair["difference_low"])
    assert curves.loc[(0.1, "logreg"), "counterpart"] == "" and curves.loc[(0.1, "logreg"), "n"] == 1
    summary = metrics.summarise(long).set_index(["method", "label_fraction"])
    assert summary.loc[("mlp", 0.1), "mean"] == pytest.approx(mlp.mean())
    assert list(metrics.paired_effects(long, pairs).columns[:2]) == ["scheme", "label_fraction"]


def test_shipped_config_pretrains_once_per_base_split(shared_data, tmp_path):
    config = absolute_paths(load_config("bench_label_efficiency.yaml"))
    config["split"]["n_folds"] = 2  # a smaller plan to read
    planned = planned_jobs(tmp_path, write_config(tmp_path, config))
    n_splits = config["split"]["n_folds"] * (1 + 4 * config["split"]["label_draws"])  # 4 fractions below 1
    assert planned["pretrain"] == config["split"]["n_folds"] * 2  # K-means and masked bins, per base split
    assert (planned["finetune"], planned["peer"], planned["baseline"]) == (4 * n_splits, n_splits, n_splits)


@pytest.mark.workflow
def test_a_two_fraction_sweep_runs_and_draws_its_curves(tmp_path):
    config = load_config()
    config.update(methods=["logreg"], smoke=True, interpret={"enabled": False})
    config["split"].update(n_folds=2, label_fractions=[0.5, 1.0])
    snakemake(tmp_path, write_config(tmp_path, config), "results/report/label_efficiency.png")
    curves = pd.read_csv(tmp_path / "results/benchmark/label_efficiency.tsv", sep="\t")
    assert sorted(curves["label_fraction"].unique()) == [0.5, 1.0] and set(curves["n"]) == {2}
    assert (tmp_path / "results/report/label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    summary = pd.read_csv(tmp_path / "results/benchmark/summary.tsv", sep="\t")
    assert list(summary.columns[:4]) == ["method", "scheme", "label_fraction", "metric"]
    kappa = summary.set_index(["label_fraction", "metric"]).loc[(0.5, "known_kappa")]
    assert kappa["mean"] == pytest.approx(curves.set_index(["label_fraction", "metric"]).loc[(0.5, "known_kappa"),
                                                                                            "mean"])
    roles = pd.read_csv(tmp_path / "results/splits/splits.tsv", sep="\t", index_col="cell_id")["cv1_f0.5_d1"]
    validation = pd.read_csv(tmp_path / "results/validation/logreg/cv1_f0.5_d1.tsv", sep="\t")
    assert set(validation["cell_id"]) == set(roles.index[roles == splits.VAL])
