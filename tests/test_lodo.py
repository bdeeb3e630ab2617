"""Leave-one-dataset-out sweeps on real data: held-out cells never reach training, metrics equal scikit-learn's."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm

from workflow_helpers import absolute_paths, load_config, planned_jobs, snakemake, write_config

pytestmark = [pytest.mark.workflow]
PROTOCOLS = ["3pv1", "3pv2", "5p"]
QUICK_METHODS = ["logreg", "majority", "knn_embedding", "mlp", "kmeans+mlp"]


@pytest.fixture(scope="module")
def symphony_lodo(shared_data, tmp_path_factory):
    """The Symphony leave-one-protocol-out sweep with the quick methods."""
    workdir = tmp_path_factory.mktemp("symphony_lodo")
    config = absolute_paths(load_config("bench_symphony_lodo.yaml"))
    config["methods"] = QUICK_METHODS
    config["interpret"] = {"enabled": False}
    # one training per neural method and split: the shipped loss-mode and augmentation ablations quadruple training
    # (both unit-tested instead), and one round of K-means pretraining instead of two
    config["finetune"].update(augment=0, imbalance="sampler")
    config["pretrain"]["kmeans"] = {**config["pretrain"].get("kmeans", {}), "rounds": 1}
    configfile = write_config(workdir, config)
    snakemake(workdir, configfile)
    return workdir, configfile, ad.read_h5ad(workdir / "results/data/combined.h5ad", backed="r").obs


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_held_out_cells_never_reach_training_or_early_stopping(symphony_lodo, protocol):
    workdir, _, obs = symphony_lodo
    held_out = set(obs.index[obs["batch"] == protocol])
    split = f"lodo_{protocol}"
    for method in QUICK_METHODS:
        tested = set(pd.read_csv(workdir / f"results/predictions/{method}/{split}.tsv", sep="\t")["cell_id"])
        assert tested == held_out
    for method in ("mlp", "kmeans+mlp"):
        cells = json.loads((workdir / f"results/models/{method}/{split}/model.json").read_text())["config"]["cells"]
        assert cells["train"] and cells["val"]
        assert held_out.isdisjoint(cells["train"]) and held_out.isdisjoint(cells["val"])
    pretrained = json.loads((workdir / f"results/pretrain/kmeans+mlp/{split}/history.json").read_text())["cells"]
    assert set(pretrained) == {"pbmc_symphony", "pbmc_donorA"}  # unlabelled donor A feeds pretraining
    assert held_out.isdisjoint(pretrained["pbmc_symphony"])
    assert len(pretrained["pbmc_symphony"]) == (obs["dataset"] == "pbmc_symphony").sum() - len(held_out)


def test_metrics_equal_sklearn_on_the_same_predictions(symphony_lodo):
    workdir, configfile, _ = symphony_lodo
    threshold = yaml.safe_load(configfile.read_text()).get("evaluate", {}).get("unassigned_threshold", 0.0)
    table = pd.read_csv(workdir / "results/benchmark/metrics.tsv", sep="\t").set_index(["method", "split", "metric"])
    counts = pd.read_csv(workdir / "results/splits/class_counts.tsv", sep="\t", dtype={"cell_type": str})
    for method in QUICK_METHODS:
        for protocol in PROTOCOLS:
            split = f"lodo_{protocol}"
            trained = counts.loc[(counts["split"] == split) & (counts["train"] + counts["val"] > 0), "cell_type"]
            predictions = pd.read_csv(workdir / f"results/predictions/{method}/{split}.tsv", sep="\t",
                                      dtype={"true": str, "predicted": str})
            abstained = (predictions["abstained"] == 1 if "abstained" in predictions
                         else predictions["confidence"] < threshold)
            known = predictions["true"].isin(trained)
            y_true = predictions["true"][known]
            y_pred = predictions["predicted"].where(~abstained, "unassigned")[known]
            assert table.loc[(method, split, "known_accuracy"), "value"] == pytest.approx(
                skm.accuracy_score(y_true, y_pred))
            assert table.loc[(method, split, "known_kappa"), "value"] == pytest.approx(
                skm.cohen_kappa_score(y_true, y_pred))
            assert table.loc[(method, split, "known_macro_f1"), "value"] == pytest.approx(
                skm.f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0))


def test_summary_is_per_method_and_scheme_with_spread(symphony_lodo):
    workdir, _, _ = symphony_lodo
    summary = pd.read_csv(workdir / "results/benchmark/summary.tsv", sep="\t")
    kappa = summary[summary["metric"] == "known_kappa"].set_index("method")
    assert set(kappa["scheme"]) == {"lodo"} and (kappa["n_splits"] == 3).all()
    assert kappa.loc["majority", "mean"] == pytest.approx(0.0)
    assert kappa.loc["logreg", "mean"] > 0.8 and kappa.loc["kmeans+mlp", "mean"] > 0.8
    for figure in ("kappa.png", "per_class_f1.png"):
        assert (workdir / "results/report" / figure).read_bytes()[:4] == b"\x89PNG"


def test_finetune_change_reruns_finetune_evaluate_report_only(symphony_lodo, tmp_path):
    workdir, configfile, _ = symphony_lodo
    config = yaml.safe_load(configfile.read_text())
    config["finetune"]["patience"] = 5
    assert planned_jobs(workdir, write_config(tmp_path, config)) == {  # interpretation is off in this sweep
        "finetune": 6, "evaluate": 1, "report_figures": 1, "report_pages": 1, "methods_table": 1, "selections": 1,
        "all": 1}
    config["qc"]["min_genes"] = 150
    jobs = planned_jobs(workdir, write_config(tmp_path, config))
    assert jobs["qc"] == 2 and jobs["harmonise"] == 1 and jobs["split"] == 1 and "download" not in jobs
    assert jobs["finetune"] == 6 and jobs["pretrain"] == 3 and jobs["baseline"] == 6


def test_pancreas_novel_types_are_counted_not_dropped(shared_data, tmp_path):
    config = absolute_paths(load_config("bench_pancreas_lodo.yaml"))
    config["methods"] = ["logreg", "majority"]
    config["interpret"] = {"enabled": False}
    snakemake(tmp_path, write_config(tmp_path, config))
    metrics = pd.read_csv(tmp_path / "results/benchmark/metrics.tsv", sep="\t").set_index(["method", "split", "metric"])
    # Baron's 35 human macrophages have no counterpart in Xin or Wang: novel in that split
    assert metrics.loc[("logreg", "lodo_pancreas_baron", "novel_fraction"), "value"] == pytest.approx(35 / 175)
    # Wang's ductal (96) and acinar (5) cells: ductal is in Baron? no; acinar only in Wang -> novel when held out
    predictions = pd.read_csv(tmp_path / "results/predictions/logreg/lodo_pancreas_baron.tsv", sep="\t")
    assert len(predictions) == 175 and (predictions["true"] == "macrophage").sum() == 35
    assert ("logreg", "lodo_pancreas_xin", "novel_recall") not in metrics.index  # Xin has no novel type
    assert ("logreg", "lodo_pancreas_xin", "novel_auroc") not in metrics.index
    for metric in ("known_kappa", "known_macro_f1", "known_abstention", "novel_auroc", "novel_recall"):
        assert ("logreg", "lodo_pancreas_baron", metric) in metrics.index, metric
