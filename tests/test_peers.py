"""Peer annotators (CellTypist, SingleR): agreement with the packages, the prediction contract, saving without pickle,
the not-run record."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from sklearn.metrics import cohen_kappa_score

from sclabel import baselines, evaluation, metrics, peers, predictions, registry, splits, store
from sclabel.annotator import MANIFEST, LabelledCells, RunContext, load_annotator
from sclabel.errors import InputError
from sclabel.method_stage import method_stage
from workflow_helpers import REPO_ROOT, absolute_paths, load_config, planned_jobs, snakemake, write_config

HOLDOUT = "3pv1"  # Symphony's 10x 3' v1 cells, predicted from the 3' v2 and 5' cells


def need(package: str) -> None:
    """Skip the test when a peer's package is not importable here."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install -e '.[peers]' installs the peers)")


@pytest.fixture(scope="module")
def symphony(shared_data):
    """pbmc_symphony (natural-log CP10k over 1,767 kept genes): train on two protocols, test on 3' v1."""
    adata = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    held_out = (adata.obs["protocol"] == HOLDOUT).to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    return {"X_train": adata.X[~held_out], "y_train": labels[~held_out], "X_test": adata.X[held_out],
            "y_test": labels[held_out], "genes": adata.var_names}


ANNOTATOR = {"celltypist": peers.CelltypistAnnotator, "singler": peers.SinglerAnnotator}


def fit_peer(peer, symphony, settings=None):
    """The peer's annotator fitted on Symphony's training protocols."""
    annotator = ANNOTATOR[peer](peer, settings, 0, symphony["genes"])
    return annotator.fit(LabelledCells(symphony["X_train"], symphony["y_train"]))


@pytest.fixture(scope="module")
def fitted(symphony):
    """peer -> its annotator fitted on the Symphony split, each peer fitted once (skipped when not installed)."""
    cache = {}

    def run(peer):
        need(peer)
        if peer not in cache:
            cache[peer] = fit_peer(peer, symphony)
        return cache[peer]

    return run


@pytest.fixture(scope="module")
def predicted(symphony, fitted):
    """peer -> (probabilities of the held-out protocol's cells, classes)."""
    return lambda peer: (fitted(peer).predict_proba(symphony["X_test"]), fitted(peer).classes)


@pytest.mark.shared_data
@pytest.mark.parametrize("peer", peers.PEERS)
def test_probabilities_follow_the_prediction_contract(symphony, predicted, peer):
    probabilities, classes = predicted(peer)
    assert list(classes) == sorted(set(symphony["y_train"]))
    assert probabilities.shape == (len(symphony["y_test"]), len(classes))
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    rejection = 1 - probabilities.max(axis=1)
    table = predictions.predictions_table(np.arange(len(probabilities)).astype(str), symphony["y_test"],
                                          probabilities, classes, rejection, rejection > 0.5)
    assert metrics.probability_columns(table) == [f"proba:{c}" for c in classes]
    assert np.isfinite(metrics.ranking_scores(table)["macro_auroc"])


@pytest.mark.shared_data
@pytest.mark.parametrize(("peer", "min_kappa"), [("celltypist", 0.7), ("singler", 0.75)])
def test_peers_annotate_a_held_out_protocol_well(symphony, predicted, peer, min_kappa):
    probabilities, classes = predicted(peer)
    kappa = cohen_kappa_score(symphony["y_test"], classes[probabilities.argmax(axis=1)])
    assert min_kappa < kappa < 1.0


def celltypist_by_hand(symphony, **train_args):
    """CellTypist trained and run on the Symphony split by hand ('prob match' at p_thres 0.5) with ``train_args``."""
    import celltypist

    train = peers.cp10k_log1p(symphony["X_train"]).toarray()
    test = peers.cp10k_log1p(symphony["X_test"]).toarray()
    assert np.allclose(np.expm1(train).sum(axis=1), 10_000)  # CellTypist's input: each cell sums to 10,000
    model = celltypist.train(train, labels=symphony["y_train"], genes=np.asarray(symphony["genes"]), **train_args)
    query = ad.AnnData(test)
    query.var_names = np.asarray(symphony["genes"])
    return model, celltypist.annotate(query, model=model, mode="prob match", p_thres=0.5)


@pytest.mark.shared_data
def test_celltypist_at_its_defaults_agrees_with_calling_celltypist_by_hand(symphony, fitted, predicted):
    need("celltypist")
    annotator = fitted("celltypist")
    probabilities, classes = predicted("celltypist")
    model, direct = celltypist_by_hand(symphony)  # celltypist.train's own defaults: no solver, SGD or seed given
    assert type(model.classifier).__name__ == type(annotator.model.classifier).__name__ == "LogisticRegression"
    assert annotator.model.classifier.get_params() == {**model.classifier.get_params(), "n_jobs": 1,
                                                       "random_state": 0}  # lbfgs uses neither
    raw = direct.probability_matrix[list(classes)].to_numpy()  # expit of CellTypist's scores
    scores = direct.decision_matrix[list(classes)].to_numpy()
    np.testing.assert_array_equal(classes[probabilities.argmax(axis=1)], classes[scores.argmax(axis=1)])
    np.testing.assert_allclose(probabilities, raw / raw.sum(axis=1, keepdims=True), rtol=1e-6, atol=1e-12)
    # confidence and abstention are CellTypist's own: its largest expit probability and its 'prob match' rule
    rejection = annotator.rejection_score(symphony["X_test"])
    np.testing.assert_allclose(rejection, 1.0 - raw.max(axis=1), rtol=1e-6, atol=1e-9)
    unassigned = direct.predicted_labels["predicted_labels"].astype(str).to_numpy() == "Unassigned"
    abstained = annotator.own_abstention(rejection, classes[probabilities.argmax(axis=1)])
    np.testing.assert_array_equal(abstained, unassigned)
    assert 0 < unassigned.sum() < 0.2 * len(unassigned)


@pytest.mark.shared_data
def test_celltypist_sgd_is_opt_in_and_agrees_with_calling_celltypist_by_hand(symphony, caplog):
    need("celltypist")
    caplog.set_level("INFO", logger="sclabel")
    annotator = fit_peer("celltypist", symphony, {"use_SGD": True})
    assert "CellTypist classifier: SGDClassifier (loss log_loss)" in caplog.text
    probabilities, classes = annotator.predict_proba(symphony["X_test"]), annotator.classes
    _, direct = celltypist_by_hand(symphony, use_SGD=True, random_state=0)
    scores = direct.decision_matrix[list(classes)].to_numpy()
    np.testing.assert_array_equal(probabilities.argmax(axis=1), scores.argmax(axis=1))
    # expit(score) shares per cell; direct.probability_matrix holds expit(score), which underflows to 0 for every
    # class of some cells (SGD scores reach -3,000), so the shares are compared where it does not
    raw = direct.probability_matrix[list(classes)].to_numpy()
    finite = raw.sum(axis=1) > 0
    assert finite.mean() > 0.5
    np.testing.assert_allclose(probabilities[finite], raw[finite] / raw[finite].sum(axis=1, keepdims=True),
                               rtol=1e-6, atol=1e-12)


@pytest.mark.shared_data
def test_singler_agrees_with_calling_singler_directly(symphony, predicted):
    need("singler")
    import singler

    probabilities, classes = predicted("singler")
    genes = list(symphony["genes"])
    reference = singler.train_single(symphony["X_train"].toarray().T, list(symphony["y_train"]), genes)
    direct = singler.classify_single(symphony["X_test"].toarray().T, reference)
    # the predicted class is SingleR's fine-tuned label, even where it is not the top first-pass score
    np.testing.assert_array_equal(classes[probabilities.argmax(axis=1)], np.asarray(direct.get_column("best")))
    scores = np.column_stack([direct.get_column("scores").get_column(c) for c in classes])
    fine_tuned = scores.argmax(axis=1) != probabilities.argmax(axis=1)
    assert 0 < fine_tuned.mean() < 0.2


@pytest.mark.shared_data
def test_singler_abstains_where_pruneScores_prunes_its_own_result(symphony, fitted, predicted):
    need("singler")
    import singler

    annotator = fitted("singler")
    probabilities, classes = predicted("singler")
    genes = list(symphony["genes"])
    reference = singler.train_single(symphony["X_train"].toarray().T, list(symphony["y_train"]), genes)
    direct = singler.classify_single(symphony["X_test"].toarray().T, reference)
    table = direct.get_column("scores")
    scores = pd.DataFrame({c: np.asarray(table.get_column(c), dtype=float) for c in classes})
    best = pd.Series(np.asarray(direct.get_column("best")).astype(str))
    # SingleR's pruneScores at its defaults (nmads 3, min.diff.med 0), written out with pandas
    delta = pd.Series([scores.at[i, label] for i, label in best.items()]) - scores.median(axis=1)
    kept = delta >= 0
    median = delta[kept].groupby(best[kept]).transform("median")
    mad = (delta[kept] - median).abs().groupby(best[kept]).transform("median") * 1.4826
    kept[kept] = delta[kept] >= median - 3 * mad
    rejection = annotator.rejection_score(symphony["X_test"])
    np.testing.assert_allclose(rejection, (2 - delta.to_numpy()) / 4, atol=1e-12)  # higher: less like its label
    abstained = annotator.own_abstention(rejection, classes[probabilities.argmax(axis=1)])
    np.testing.assert_array_equal(abstained, ~kept.to_numpy())
    assert 0 < abstained.sum() < 0.2 * len(abstained)


def test_prune_scores_follows_singlers_own_examples():
    # SingleR's test-prune.R: a delta below min.diff.med is pruned; one cell per label is never an outlier
    scores = np.array([[0, 0, 0, 0, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], float)
    chosen = np.array([4, 4, 4, 4, 4])
    delta = peers.delta_from_median(scores, chosen)
    labels = np.array(["E"] * 5)
    assert peers.prune_scores(delta, labels, min_diff_med=0.05).tolist() == [False, False, True, True, True]
    assert peers.prune_scores(delta, labels, min_diff_med=2).all()
    # within a label, a delta more than 3 MADs below the label's median is pruned; the other label is unaffected
    delta = np.array([0.50, 0.52, 0.48, 0.51, 0.49, 0.20, 0.05, 0.9])
    labels = np.array(["a"] * 6 + ["b"] * 2)
    assert peers.prune_scores(delta, labels).tolist() == [False] * 5 + [True] + [False] * 2


def test_softmax_with_label_moves_the_top_probability_to_the_chosen_label():
    scores = np.array([[0.50, 0.48, 0.30], [0.20, 0.60, 0.59]])
    probabilities = peers.softmax_with_label(scores, np.array([1, 1]), temperature=0.01)
    assert probabilities.argmax(axis=1).tolist() == [1, 1]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    plain = np.exp((scores - scores.max(axis=1, keepdims=True)) / 0.01)
    plain /= plain.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities[0], plain[0][[1, 0, 2]])  # swapped: a permutation of the softmax
    np.testing.assert_allclose(probabilities[1], plain[1])


def test_renormalisation_gives_log1p_cp10k_over_the_genes_present():
    counts = sp.csr_matrix(np.array([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [5.0, 0.0, 5.0]]))
    subset_cp10k = sp.csr_matrix(np.log1p(counts.toarray() / 2.0))  # normalised elsewhere: sums fall short of 1e4
    renormalised = peers.cp10k_log1p(subset_cp10k).toarray()
    np.testing.assert_allclose(np.expm1(renormalised).sum(axis=1), [10_000, 0, 10_000])
    np.testing.assert_allclose(renormalised[0], np.log1p([7_500, 2_500, 0]))
    assert peers.cp10k_log1p(subset_cp10k, renormalise=False).toarray() == pytest.approx(subset_cp10k.toarray())


@pytest.mark.parametrize(("values", "reason"), [(18.5, r"reaches 18\.50 > log1p\(10000\) = 9\.21"),
                                                (-0.5, "negative values")])
def test_values_that_are_not_natural_log_cp10k_make_celltypist_not_runnable(values, reason):
    X = sp.csr_matrix(np.array([[values, 1.0], [2.0, 0.0]]))
    with pytest.raises(peers.PeerNotRunnable, match=reason):
        peers.CelltypistAnnotator("celltypist", {}, 0, ["g1", "g2"]).fit(LabelledCells(X, np.array(["a", "b"])))


def test_a_missing_package_makes_the_peer_not_runnable():
    with pytest.raises(peers.PeerNotRunnable, match=r"not installed .*pip install -e '\.\[peers\]'"):
        peers.import_peer("sclabel_no_such_peer_package")


def test_unknown_peer_settings_are_refused():
    with pytest.raises(InputError, match="peers.singler.n_genes"):
        peers.resolve_settings("singler", {"n_genes": 10})


def test_schema_defaults_and_workflow_names_match_the_library():
    schema = yaml.safe_load((REPO_ROOT / "workflow/schemas/config.schema.yaml").read_text())
    block = schema["properties"]["peers"]["properties"]
    for peer, defaults in peers.DEFAULTS.items():
        assert {key: spec["default"] for key, spec in block[peer]["properties"].items()} == defaults
    assert registry.names("peer") == list(peers.PEERS)


def test_partly_run_methods_keep_their_scores_with_the_reason():
    long = pd.DataFrame({"method": ["m", "m", "p", "p"], "split": ["cv1", "cv2", "cv1", "cv1"],
                         "metric": ["accuracy", "accuracy", "accuracy", "cohen_kappa"], "value": [0.8, 0.9, 0.7, 0.6]})
    summary = metrics.summarise(long.assign(scheme="cv"))
    not_run = pd.DataFrame({"method": ["p", "q", "q"], "split": ["cv2", "cv1", "cv2"], "scheme": "cv",
                            "reason": ["too few genes", "r1", "r2"]})
    marked = metrics.add_not_run(summary, not_run).set_index(["method", "metric"])
    assert marked.loc[("p", "accuracy"), "mean_sd"] == "0.700 ± 0.000 (not run on cv2: too few genes)"
    assert marked.loc[("m", "accuracy"), "mean_sd"] == "0.850 ± 0.071"
    q = marked.loc["q"]
    assert sorted(q.index) == ["accuracy", "cohen_kappa"] and (q["n_splits"] == 0).all() and q["mean"].isna().all()
    assert (q["mean_sd"] == "not run: cv1: r1; cv2: r2").all()


@pytest.mark.shared_data
def test_not_runnable_peer_writes_the_record_and_the_summary_shows_it(shared_data, tmp_path):
    # pancreas_xin holds log values up to 18.5 (not natural-log CP10k): CellTypist cannot run, logreg can
    adata = ad.read_h5ad(shared_data / "pancreas_xin.h5ad")
    combined = tmp_path / "combined.h5ad"
    adata.write_h5ad(combined)
    splits_file, class_counts = tmp_path / "splits.tsv", tmp_path / "class_counts.tsv"
    splits.split_stage(str(combined), {"scheme": "cv", "n_folds": 2, "val_fraction": 0.1, "seed": 0},
                       str(splits_file), str(class_counts))
    files = []
    for split in ("cv1", "cv2"):
        files.append(tmp_path / f"predictions/logreg/{split}.tsv")
        method_stage("logreg", {}, 0, str(combined), str(splits_file), split, str(tmp_path / f"models/logreg/{split}"),
                     str(files[-1]))
        files.append(tmp_path / f"predictions/celltypist/{split}.tsv")
        method_stage("celltypist", {}, 0, str(combined), str(splits_file), split, str(tmp_path / f"models/{split}"),
                     str(files[-1]))
    record = pd.read_csv(files[-1], sep="\t")
    assert list(record.columns) == [metrics.NOT_RUN]
    assert re.search(r"reaches 18\.\d\d > log1p\(10000\)", record.iloc[0, 0])  # the largest training value
    with pytest.raises(InputError, match="celltypist could not be trained: CellTypist needs natural-log1p"):
        load_annotator(tmp_path / "models/cv2")
    out = {name: tmp_path / f"{name}.tsv" for name in ("metrics", "summary", "per_class", "confusion", "paired")}
    evaluation.evaluate_stage([str(f) for f in files], str(class_counts), {"unassigned_threshold": 0.0,
                                                                       "rare_fraction": 0.05}, *map(str, out.values()))
    assert set(pd.read_csv(out["metrics"], sep="\t")["method"]) == {"logreg"}
    summary = pd.read_csv(out["summary"], sep="\t").set_index(["method", "metric"])
    assert summary.loc[("logreg", "known_kappa"), "mean"] > 0.8
    assert pd.read_csv(out["paired"], sep="\t").empty  # the only peer ran on no split
    celltypist = summary.loc["celltypist"]
    assert set(celltypist.index) == set(summary.loc["logreg"].index)  # every metric row says why it is missing
    reason = "CellTypist needs natural-log1p CP10k expression"  # each split's reason names its own largest value
    assert celltypist["mean_sd"].str.fullmatch(f"not run: cv1: {reason}.*; cv2: {reason}.*").all()
    assert (celltypist["n_splits"] == 0).all()


@pytest.fixture(scope="module")
def peer_run(shared_data, tmp_path_factory):
    """The workflow on Symphony with logreg and both peers, one leave-one-protocol-out split."""
    need("celltypist")
    need("singler")
    workdir = tmp_path_factory.mktemp("peers")
    config = absolute_paths(load_config("pbmc_symphony.yaml"))
    config.update({"methods": ["logreg", "celltypist", "singler"], "interpret": {"enabled": False},
                   "split": {"scheme": "lodo", "lodo_key": "batch", "holdout": [HOLDOUT], "val_fraction": 0.1}})
    configfile = write_config(workdir, config)
    snakemake(workdir, configfile)
    return workdir, config


@pytest.mark.workflow
@pytest.mark.shared_data
def test_workflow_scores_the_peers_on_the_same_split(peer_run):
    workdir, _ = peer_run
    split = f"lodo_{HOLDOUT}"
    tables = {m: pd.read_csv(workdir / f"results/predictions/{m}/{split}.tsv", sep="\t")
              for m in ("logreg", "celltypist", "singler")}
    for method, table in tables.items():
        assert table["cell_id"].tolist() == tables["logreg"]["cell_id"].tolist()  # the same test cells
        assert list(table.columns)[:4] == ["cell_id", "true", "predicted", "confidence"]
        np.testing.assert_allclose(table[metrics.probability_columns(table)].sum(axis=1), 1.0, rtol=1e-5)
    summary = pd.read_csv(workdir / "results/benchmark/summary.tsv", sep="\t").set_index(["method", "metric"])
    for peer in ("celltypist", "singler"):
        assert summary.loc[(peer, "known_kappa"), "mean"] > 0.7
        assert summary.loc[(peer, "macro_auroc"), "mean"] > 0.85
        assert (workdir / f"results/benchmarks/peers/{peer}/{split}.tsv").is_file()
        saved = load_annotator(workdir / f"results/models/{peer}/{split}")
        assert [f"proba:{c}" for c in saved.classes] == metrics.probability_columns(tables[peer])
        assert (workdir / f"results/report/confusion/{peer}.png").read_bytes()[:4] == b"\x89PNG"
    methods = pd.read_csv(workdir / "results/benchmark/methods.tsv", sep="\t").set_index("name")
    for method in ("logreg", "celltypist", "singler"):
        assert methods.loc[method, "version"] == importlib.metadata.version(methods.loc[method, "package"])
    assert (methods["fit_cells"] == "train").all()
    assert methods.loc["celltypist", "package"] == "celltypist" and "p_thres" in methods.loc["celltypist",
                                                                                             "rejection_rule"]
    assert json.loads(methods.loc["celltypist", "configured_settings"])["use_SGD"] is False
    assert "pruneScores" in methods.loc["singler", "rejection_rule"]


@pytest.mark.workflow
@pytest.mark.shared_data
def test_workflow_reports_a_peer_that_cannot_run(peer_run, tmp_path):
    workdir, config = peer_run
    config = copy.deepcopy(config)
    config["peers"] = {"celltypist": {"renormalise": False}}  # Symphony's cells sum to < 10,000: CellTypist refuses
    configfile = write_config(tmp_path, config)
    # methods.tsv lists the settings the config gives each method, so it follows a peer's settings too
    assert planned_jobs(workdir, configfile) == {"peer": 1, "evaluate": 1, "report_figures": 1, "report_pages": 1,
                                                 "methods_table": 1, "selections": 1, "all": 1}
    snakemake(workdir, configfile)
    summary = pd.read_csv(workdir / "results/benchmark/summary.tsv", sep="\t").set_index(["method", "metric"])
    assert summary.loc[("celltypist", "known_kappa"), "mean_sd"] == (
        "not run: CellTypist's input check failed: Invalid expression matrix, expect log1p normalized expression "
        "to 10000 counts per cell")
    assert summary.loc[("singler", "known_kappa"), "mean"] > 0.7
    assert "not run" in (workdir / f"results/logs/peers/celltypist/lodo_{HOLDOUT}.log").read_text()


# ---- at scale: the peers' large-data modes (thresholds set low here) and the stage reading a cell store ----

@pytest.mark.shared_data
def test_celltypist_large_data_mode_trains_on_a_bounded_sample(symphony, caplog):
    need("celltypist")
    caplog.set_level("INFO", logger="sclabel")
    settings = {"large_data_cells": 0, "max_nnz": 60_000, "batch_size": 100, "batch_number": 5}
    annotator = fit_peer("celltypist", symphony, settings)
    probabilities, classes = annotator.predict_proba(symphony["X_test"]), annotator.classes
    n_train = len(symphony["y_train"])
    used = int(re.search(r"with_mean False\) on (\d+) of (\d+) training cells", caplog.text).group(1))
    assert "large-data mode (use_SGD True, mini_batch True" in caplog.text
    assert used < n_train * 60_000 / symphony["X_train"].nnz + baselines.MIN_PER_CLASS * len(classes)
    assert probabilities.shape == (len(symphony["y_test"]), len(classes))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert cohen_kappa_score(symphony["y_test"], classes[probabilities.argmax(axis=1)]) > 0.6


@pytest.mark.shared_data
@pytest.mark.parametrize("power", [0.0, 0.5])
def test_singler_aggregated_reference_annotates_well(symphony, predicted, power, caplog):
    need("singler")
    if power > 0:
        need("scranpy")  # SingleR clusters each label with scranpy
    caplog.set_level("INFO", logger="sclabel")
    settings = {"aggregate_cells": 0, "aggregate_power": power}
    annotator = fit_peer("singler", symphony, settings)
    probabilities, classes = annotator.predict_proba(symphony["X_test"]), annotator.classes
    assert f"aggregated (power {power})" in caplog.text
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert cohen_kappa_score(symphony["y_test"], classes[probabilities.argmax(axis=1)]) > 0.7
    full, _ = predicted("singler")
    assert not np.allclose(probabilities, full)  # another reference than the full one


def test_aggregation_rank_keeps_every_clustered_label_on_pcs():
    labels = np.array(["a"] * 500 + ["b"] * 9 + ["c"] * 2)  # b: 3 clusters of 9 cells; c: its mean only
    assert peers.aggregation_rank(labels, 0.5) == 8
    assert peers.aggregation_rank(labels[:500], 0.5) == peers.SINGLER_AGGREGATION_RANK
    assert peers.aggregation_rank(labels, 0.0) == peers.SINGLER_AGGREGATION_RANK  # means only: no clustering


@pytest.mark.shared_data
@pytest.mark.parametrize("peer", peers.PEERS)
def test_method_stage_reads_a_cell_store_by_rows_and_predicts_in_chunks(shared_data, tmp_path, peer):
    need(peer)
    adata = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    combined, splits_file = tmp_path / "combined.h5ad", tmp_path / "splits.tsv"
    store.write_store(adata, combined, chunk_cells=250)
    splits.split_stage(str(combined), {"scheme": "cv", "n_folds": 3, "val_fraction": 0.1, "seed": 0}, str(splits_file),
                       str(tmp_path / "class_counts.tsv"))
    method_stage(peer, {}, 0, str(combined), str(splits_file), "cv2", str(tmp_path / "model"), str(tmp_path / "p.tsv"),
                 RunContext(chunk_cells=70))
    table = pd.read_csv(tmp_path / "p.tsv", sep="\t", dtype={"cell_id": str})
    roles = splits.read_split(str(splits_file), "cv2")
    fit, test = roles.index[roles == "train"], roles.index[roles == "test"]  # validation cells: not fitted on
    rows = pd.Series(np.arange(adata.n_obs), index=adata.obs_names)
    labels = adata.obs["cell_type"].astype(str)
    annotator = ANNOTATOR[peer](peer, {}, 0, adata.var_names).fit(LabelledCells(adata.X[rows[fit]],
                                                                                 labels[fit].to_numpy()))
    probabilities, classes = annotator.predict_proba(adata.X[rows[test]]), annotator.classes
    assert table["cell_id"].tolist() == list(test)
    np.testing.assert_allclose(table[[f"proba:{c}" for c in classes]].to_numpy(), probabilities, rtol=1e-9)
    method_stage(peer, {}, 0, str(combined), str(splits_file), "final", str(tmp_path / "final"))  # every cell, no test
    assert load_annotator(tmp_path / "final").predict_proba(adata.X[:5]).shape == (5, len(classes))


# ---- saved models: no pickle, reloaded to predict exactly as fitted, refused when unreadable ----

@pytest.mark.shared_data
@pytest.mark.parametrize(("peer", "settings"), [("celltypist", {}), ("singler", {}),
                                                ("singler", {"aggregate_cells": 0, "aggregate_power": 0.5})])
def test_a_saved_peer_reloads_to_identical_probabilities(symphony, fitted, tmp_path, peer, settings):
    need(peer)
    if settings.get("aggregate_power"):
        need("scranpy")
    annotator = fit_peer(peer, symphony, settings) if settings else fitted(peer)
    annotator.save(tmp_path / "model")
    files = {path.name for path in (tmp_path / "model").iterdir()}
    assert files == {MANIFEST, "genes.txt", *({"classifier.skops", "scaler.skops"} if peer == "celltypist"
                                               else {"reference.npz"})}
    loaded = load_annotator(tmp_path / "model")
    assert type(loaded) is type(annotator) and list(loaded.classes) == list(annotator.classes)
    np.testing.assert_array_equal(loaded.predict_proba(symphony["X_test"]), annotator.predict_proba(symphony["X_test"]))


@pytest.mark.shared_data
def test_a_celltypist_model_saved_by_another_scikit_learn_is_refused(fitted, tmp_path):
    fitted("celltypist").save(tmp_path / "model")
    manifest_file = tmp_path / "model" / MANIFEST
    manifest = json.loads(manifest_file.read_text())
    assert manifest["version_bound"] == ["scikit-learn", "celltypist"]
    manifest["versions"]["scikit-learn"] = "0.99.0"
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"versions\.scikit-learn.*saved with scikit-learn 0\.99\.0"):
        load_annotator(tmp_path / "model")


@pytest.mark.shared_data
@pytest.mark.parametrize(("content", "reason"), [
    ("scaler", r"holds a sklearn\.preprocessing\._data\.StandardScaler, expected sklearn\.linear_model\._logistic\."
               r"LogisticRegression or"),
    ("function", r"types: Untrusted types found in the file: \['posix\.getcwd'\]\. Fix"),
])
def test_a_skops_file_holding_another_type_is_refused(fitted, tmp_path, content, reason):
    import os

    import skops.io
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    fitted("celltypist").save(tmp_path / "model")
    # a trusted type that is not a classifier, or a function skops does not trust
    other = StandardScaler() if content == "scaler" else FunctionTransformer(func=os.getcwd)
    skops.io.dump(other, tmp_path / "model" / "classifier.skops")
    with pytest.raises(InputError, match=reason):
        load_annotator(tmp_path / "model")


@pytest.mark.shared_data
def test_celltypist_top_genes_are_its_own_markers(fitted, tmp_path):
    annotator = fitted("celltypist")
    annotator.save(tmp_path / "model")
    table = load_annotator(tmp_path / "model").top_genes()
    assert list(table.columns) == ["cell_type", "gene", "score", "rank"]
    assert set(table["cell_type"]) == set(annotator.classes)
    for cell_type in annotator.classes:
        top = table[(table["cell_type"] == cell_type) & (table["rank"] <= 10)]["gene"].tolist()
        assert top == list(annotator.model.extract_top_markers(cell_type, 10))
    assert {"MS4A1", "CD79A"} <= set(table[(table["cell_type"] == "B") & (table["rank"] <= 5)]["gene"])


@pytest.mark.shared_data
def test_test_cells_on_another_scale_leave_the_model_and_a_not_run_record(shared_data, tmp_path):
    need("celltypist")
    adata = ad.read_h5ad(shared_data / "pbmc_symphony.h5ad")
    held_out = (adata.obs["protocol"] == HOLDOUT).to_numpy()
    adata.X = sp.csr_matrix(adata.X)
    adata.X[held_out] = adata.X[held_out] * 3.0  # log1p values tripled: far above log1p(10,000) = 9.21
    combined, splits_file = tmp_path / "combined.h5ad", tmp_path / "splits.tsv"
    adata.write_h5ad(combined)
    settings = {"scheme": "lodo", "lodo_key": "protocol", "holdout": [HOLDOUT], "val_fraction": 0.1, "seed": 0,
                "n_folds": 1}
    splits.split_stage(str(combined), settings, str(splits_file), str(tmp_path / "class_counts.tsv"))
    split = f"lodo_{HOLDOUT}"
    method_stage("celltypist", {}, 0, str(combined), str(splits_file), split, str(tmp_path / "model"),
                 str(tmp_path / "p.tsv"))
    record = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    assert list(record.columns) == [metrics.NOT_RUN] and "CellTypist needs natural-log1p" in record.iloc[0, 0]
    assert set(load_annotator(tmp_path / "model").classes) == set(adata.obs["cell_type"][~held_out])
