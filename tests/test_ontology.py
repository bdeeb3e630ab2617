"""Cell Ontology maps, label harmonisation through them, and scTab's ontology-aware metrics (checked with sklearn)."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from sclabel import evaluation, metrics, ontology, qc
from sclabel.errors import InputError
from sclabel.store import CellStore

REPO_ROOT = Path(__file__).resolve().parents[1]
MAPS = REPO_ROOT / "config" / "ontology"
# shipped map -> the shared data files whose labels it covers
SHIPPED = {"pbmc_zheng_sorted.tsv": ["pbmc_zheng_sorted.h5ad"], "pbmc_symphony.tsv": ["pbmc_symphony.h5ad"],
           "pancreas.tsv": ["pancreas_xin.h5ad", "pancreas_wang.h5ad", "pancreas_cepo.h5ad",
                            "pancreas_baron_toy.h5ad"], "tm_immune_mouse.tsv": ["tm_immune_mouse.h5ad"]}
CD4, MEMORY_CD4, CD8, B = "CD4 T", "memory CD4 T", "CD8 T", "B"


@pytest.fixture(scope="module")
def parser():
    pytest.importorskip("cellxgene_ontology_guide", reason="pip install cellxgene-ontology-guide==1.11.1")
    return ontology.cell_ontology()


def sklearn_ontology(y_true: np.ndarray, y_pred: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro F1 (over the true classes) by scikit-learn, the ``right`` cells' predictions set to truth."""
    corrected = np.where(right, y_true, y_pred)
    return (skm.accuracy_score(y_true, corrected),
            skm.f1_score(y_true, corrected, labels=sorted(set(y_true)), average="macro", zero_division=0))


def test_without_finer_predictions_the_ontology_scores_are_the_exact_ones():
    rng = np.random.default_rng(0)
    y_true = pd.Series(rng.choice([CD4, CD8, B], size=200))
    y_pred = pd.Series(np.where(rng.random(200) < 0.7, y_true, rng.choice([CD4, CD8, B, MEMORY_CD4], size=200)))
    finer = {CD4: {MEMORY_CD4}, CD8: set(), B: set()}
    y_pred[(y_true == CD4) & (y_pred == MEMORY_CD4)] = CD8  # no prediction is finer than its truth
    scores = metrics.ontology_scores(y_true, y_pred, finer)
    exact = metrics.headline_scores(y_true, y_pred)
    assert scores == {"ontology_accuracy": exact["accuracy"], "ontology_macro_f1": exact["macro_f1"]}
    assert scores["ontology_accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))


def test_a_finer_prediction_counts_as_right_and_a_coarser_one_does_not():
    y_true = pd.Series([CD4, CD4, CD4, MEMORY_CD4, CD8, B])
    y_pred = pd.Series([CD4, MEMORY_CD4, CD8, CD4, CD8, B])  # cell 1 finer (right), cell 3 coarser (wrong)
    finer = {CD4: {MEMORY_CD4}, MEMORY_CD4: set(), CD8: set(), B: set()}
    scores = metrics.ontology_scores(y_true, y_pred, finer)
    accuracy, macro_f1 = sklearn_ontology(y_true.to_numpy(), y_pred.to_numpy(), np.arange(6) == 1)
    assert scores["ontology_accuracy"] == pytest.approx(accuracy) == pytest.approx(4 / 6)
    assert scores["ontology_macro_f1"] == pytest.approx(macro_f1)
    assert metrics.headline_scores(y_true, y_pred)["accuracy"] == pytest.approx(3 / 6)


def test_benchmark_scores_add_ontology_rows_on_known_cells_only():
    table = pd.DataFrame({"true": [CD4, CD4, CD4, CD8, "DC"], "predicted": [MEMORY_CD4, MEMORY_CD4, CD4, CD8, CD4],
                          "confidence": 0.9, metrics.REJECTION: 0.1, metrics.ABSTAINED: [0, 1, 0, 0, 0]})
    train = [CD4, MEMORY_CD4, CD8]
    finer = {CD4: {MEMORY_CD4}, MEMORY_CD4: set(), CD8: set()}
    scores = metrics.benchmark_scores(table, train, threshold=0.0, rare_fraction=0.05, finer=finer)
    # known cells: CD4 (finer: right), CD4 (abstained: wrong), CD4, CD8; DC is novel and not scored here
    accuracy, macro_f1 = sklearn_ontology(np.array([CD4, CD4, CD4, CD8]),
                                          np.array([MEMORY_CD4, metrics.UNASSIGNED, CD4, CD8]),
                                          np.array([True, False, False, False]))
    assert scores["ontology_accuracy"] == pytest.approx(accuracy) == pytest.approx(3 / 4)
    assert scores["ontology_macro_f1"] == pytest.approx(macro_f1)
    assert scores["known_accuracy"] == pytest.approx(2 / 4)
    assert "ontology_accuracy" not in metrics.benchmark_scores(table, train, 0.0, 0.05)


def test_evaluate_stage_reports_ontology_rows_next_to_the_exact_ones(tmp_path):
    counts = pd.DataFrame({"split": "lodo_a", "cell_type": [CD4, MEMORY_CD4, CD8], "total": 10, "train": [4, 4, 4],
                           "val": 1, "test": [4, 0, 2]})
    counts.to_csv(tmp_path / "class_counts.tsv", sep="\t", index=False)
    file = tmp_path / "predictions/logreg/lodo_a.tsv"
    file.parent.mkdir(parents=True)
    pd.DataFrame({"cell_id": list("abcdef"), "true": [CD4] * 4 + [CD8] * 2,
                  "predicted": [MEMORY_CD4, MEMORY_CD4, CD4, CD8, CD8, CD8], "confidence": 0.9}).to_csv(
        file, sep="\t", index=False)
    out = [str(tmp_path / f"{name}.tsv") for name in ("metrics", "summary", "per_class", "confusion", "paired")]
    evaluation.evaluate_stage([str(file)], str(tmp_path / "class_counts.tsv"),
                              {"unassigned_threshold": 0.0, "rare_fraction": 0.05}, *out,
                              finer={CD4: {MEMORY_CD4}, MEMORY_CD4: set(), CD8: set()})
    summary = pd.read_csv(out[1], sep="\t").set_index("metric")["mean"]
    assert summary["known_accuracy"] == pytest.approx(3 / 6) and summary["ontology_accuracy"] == pytest.approx(5 / 6)


def test_finer_labels_follow_cl_descendants_and_shared_ids(parser):
    table = pd.DataFrame({"cell_type": ["thelper", "T_CD4", "memoryt", "T_CD8", "Mono_CD14", "Mono_CD16"],
                          "ontology_id": ["CL:0000624", "CL:0000624", "CL:0000897", "CL:0000625", "CL:0001054",
                                          "CL:0002396"]})
    finer = ontology.finer_labels(table, parser)
    assert finer["T_CD4"] == {"thelper", "memoryt"} and finer["thelper"] == {"T_CD4", "memoryt"}
    assert finer["memoryt"] == set() and finer["T_CD8"] == set()  # coarser or unrelated terms never count
    assert finer["Mono_CD14"] == {"Mono_CD16"}  # CL files the CD16+ monocyte under the CD14+ one


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_maps_give_every_label_of_their_datasets_a_current_cl_id(parser, shared_data, name):
    table = ontology.read_map(MAPS / name)
    ontology.check_terms(table, MAPS / name, parser)
    for file in SHIPPED[name]:
        with CellStore(shared_data / file) as store:
            assert set(store.obs["cell_type"].astype(str)) <= set(table["label"]), file


def write_map(path: Path, rows: list[tuple[str, str]]) -> str:
    pd.DataFrame(rows, columns=["label", "ontology_id"]).to_csv(path, sep="\t", index=False)
    return str(path)


@pytest.mark.parametrize(("rows", "labels", "message"), [
    ([("T_CD4", "CL:0000624")], ["T_CD4", "B"], "label 'B': dataset d's label has no ontology_id"),
    ([("T_CD4", "CL:9999999")], ["T_CD4"], "'CL:9999999' is not a Cell Ontology term"),
    ([("T_CD4", "CL:0000624"), ("T_CD4", "CL:0000625")], ["T_CD4"], "label 'T_CD4': listed twice"),
])
def test_bad_maps_are_refused_in_one_line(parser, tmp_path, rows, labels, message):
    maps = {"d": write_map(tmp_path / "d.tsv", rows)}
    with pytest.raises(InputError, match=message) as error:
        ontology.ontology_table({"d": labels}, maps, "author", parser)
    assert "\n" not in str(error.value) and str(error.value).startswith(maps["d"])


def test_ontology_labels_need_a_map_for_every_labelled_dataset(parser, tmp_path):
    maps = {"a": write_map(tmp_path / "a.tsv", [("x", "CL:0000236")])}
    with pytest.raises(InputError, match=r"datasets.b.ontology_map: harmonise.labels: ontology needs a map"):
        ontology.ontology_table({"a": ["x"], "b": ["y"]}, maps, "ontology", parser)
    ontology.ontology_table({"a": ["x"], "b": ["y"]}, maps, "author", parser)  # author labels: maps are optional


def test_author_labels_refuse_one_label_with_two_ids(parser, tmp_path):
    maps = {"a": write_map(tmp_path / "a.tsv", [("T", "CL:0000624")]),
            "b": write_map(tmp_path / "b.tsv", [("T", "CL:0000625")])}
    with pytest.raises(InputError, match="mapped to CL:0000625 here but to CL:0000624 by dataset a's map"):
        ontology.ontology_table({"a": ["T"], "b": ["T"]}, maps, "author", parser)
    table = ontology.ontology_table({"a": ["T"], "b": ["T"]}, maps, "ontology", parser)
    assert table["cell_type"].tolist() == ["CD4-positive, alpha-beta T cell", "CD8-positive, alpha-beta T cell"]


def test_harmonise_puts_two_pbmc_studies_on_cl_term_labels(parser, shared_data, tmp_path):
    names, inputs = ["zheng", "symphony"], []
    for name, file in zip(names, ["pbmc_zheng_sorted.h5ad", "pbmc_symphony.h5ad"]):
        adata = ad.read_h5ad(shared_data / file)[::20]  # 107 and 60 cells
        adata.obs = adata.obs[["cell_type"]].assign(dataset=name, batch=name)
        inputs.append(str(tmp_path / f"{name}.h5ad"))
        adata.write_h5ad(inputs[-1])
    maps = {"zheng": str(MAPS / "pbmc_zheng_sorted.tsv"), "symphony": str(MAPS / "pbmc_symphony.tsv")}
    settings = {"gene_join": "inner", "case": "keep", "renormalise": False}
    relabel = ontology.label_stage(inputs, names, maps, "ontology", str(tmp_path / "ontology.tsv"))
    qc.harmonise_stage(inputs, names, settings, 1e4, str(tmp_path / "combined.h5ad"), str(tmp_path / "genes.tsv"),
                       relabel=relabel)
    obs = ad.read_h5ad(tmp_path / "combined.h5ad").obs
    pairs = set(zip(obs["author_cell_type"], obs["cell_type"]))
    assert {("thelper", "CD4-positive, alpha-beta T cell"), ("T_CD4", "CD4-positive, alpha-beta T cell"),
            ("monocytes", "CD14-positive monocyte"), ("Mono_CD14", "CD14-positive monocyte")} <= pairs
    table = pd.read_csv(tmp_path / "ontology.tsv", sep="\t")
    assert set(obs["cell_type"]) == set(table["cell_type"]) and (table["cl_version"] == "v2026-03-26").all()
    assert ontology.label_stage(inputs, names, {}, "author", str(tmp_path / "none.tsv")) is None
    assert ontology.finer_from_file(str(tmp_path / "none.tsv")) is None
