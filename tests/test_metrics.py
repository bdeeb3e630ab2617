"""Metrics equal scikit-learn's on known inputs."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn import metrics as skm

from sclabel import evaluation, metrics, registry


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    labels = np.array(["B", "T", "NK", "Mono"])
    y_true = rng.choice(labels, size=300, p=[0.4, 0.3, 0.2, 0.1])
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.choice(np.append(labels, "DC"), size=300))
    return y_true, y_pred


def test_headline_scores_match_sklearn_over_the_true_classes(predictions):
    y_true, y_pred = predictions
    scores = metrics.headline_scores(y_true, y_pred)
    assert scores["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert scores["kappa"] == pytest.approx(skm.cohen_kappa_score(y_true, y_pred))
    test_classes = sorted(set(y_true))  # DC is only ever predicted: it does not enter the average
    assert scores["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=test_classes, average="macro",
                                                            zero_division=0))
    assert scores["macro_f1"] > skm.f1_score(y_true, y_pred, average="macro", zero_division=0)


def test_per_class_and_confusion_match_sklearn(predictions):
    y_true, y_pred = predictions
    labels = metrics.label_order(y_true, y_pred)
    matrix = metrics.confusion(y_true, y_pred, labels)
    np.testing.assert_array_equal(matrix, skm.confusion_matrix(y_true, y_pred, labels=labels))
    table = metrics.per_class_scores(matrix, labels)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                                         zero_division=0)
    np.testing.assert_allclose(table["precision"], precision)
    np.testing.assert_allclose(table["recall"], recall)
    np.testing.assert_allclose(table["f1"], f1)
    np.testing.assert_array_equal(table["support"], support)


def test_hand_computed_kappa():
    # 2x2 table [[20, 5], [10, 15]]: po = 0.7, pe = (25*30 + 25*20) / 50^2 = 0.5 -> kappa 0.4
    y_true = ["a"] * 25 + ["b"] * 25
    y_pred = ["a"] * 20 + ["b"] * 5 + ["a"] * 10 + ["b"] * 15
    assert metrics.headline_scores(y_true, y_pred)["kappa"] == pytest.approx(0.4)


def test_abstention_falls_back_to_confidence_without_the_contract_columns():
    table = pd.DataFrame({"true": ["a", "b", "n"], "predicted": ["a", "b", "a"], "confidence": [0.9, 0.3, 0.5]})
    rejection, abstained = metrics.abstention(table, 0.5)
    np.testing.assert_allclose(rejection, [0.1, 0.7, 0.5])
    assert abstained.tolist() == [False, True, False]
    true, predicted = metrics.scored_labels(table, ["a", "b"], 0.5)
    assert true.tolist() == ["a", "b", metrics.UNASSIGNED]  # n is novel: its truth is unassigned
    assert predicted.tolist() == ["a", metrics.UNASSIGNED, "a"]
    table[metrics.REJECTION], table[metrics.ABSTAINED] = [0.2, 0.1, 0.9], [0, 0, 1]  # the method's own rule wins
    rejection, abstained = metrics.abstention(table, 0.5)
    np.testing.assert_allclose(rejection, [0.2, 0.1, 0.9])
    assert abstained.tolist() == [False, False, True]
    assert metrics.scored_labels(table, ["a", "b"], 0.5)[1].tolist() == ["a", "b", metrics.UNASSIGNED]


def test_summary_mean_and_sd_over_splits():
    long = pd.DataFrame({"method": ["m"] * 3, "split": ["cv1", "cv2", "cv3"], "metric": ["accuracy"] * 3,
                         "value": [0.8, 0.9, 1.0]})
    row = metrics.summarise(long).iloc[0]
    assert row["mean"] == pytest.approx(0.9)
    assert row["sd"] == pytest.approx(0.1)
    assert row["n_splits"] == 3


# Training set for the benchmark cases: A 50 %, B 46 %, R 4 % (rare below 5 %).
TRAIN = ["A"] * 50 + ["B"] * 46 + ["R"] * 4
# the contract's own rejection columns, deliberately unlike 1 - confidence and confidence < 0.5
OWN_REJECTION = [0.1, 0.2, 0.6, 0.1, 0.9, 0.3, 0.4, 0.6, 0.8, 0.2, 0.6, 0.7]
OWN_ABSTAINED = [0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1]


@pytest.fixture(params=["fallback", "contract"])
def benchmark_table(request) -> pd.DataFrame:
    # 12 cells: 7 known (A, B, R), 5 of the types N and M absent from training. Without the contract columns,
    # threshold 0.5 abstains on the 0.2, 0.3, 0.1 and 0.4 cells; with them, the method's own rule decides.
    table = pd.DataFrame({
        "true":       ["A", "A", "A", "B", "B", "R", "R", "N", "N", "N", "M", "M"],
        "predicted":  ["A", "A", "B", "B", "B", "R", "A", "A", "B", "A", "A", "B"],
        "confidence": [0.9, 0.8, 0.9, 0.9, 0.2, 0.9, 0.7, 0.3, 0.1, 0.9, 0.4, 0.8],
    })
    if request.param == "contract":
        table[metrics.REJECTION], table[metrics.ABSTAINED] = OWN_REJECTION, OWN_ABSTAINED
    return table


def sklearn_scores(table: pd.DataFrame, train: list[str], abstained: np.ndarray, rejection: np.ndarray) -> dict:
    """The headline metrics recomputed with scikit-learn: abstentions are a wrong ``unassigned`` on known cells."""
    known = table["true"].isin(train).to_numpy()
    y_true = table["true"][known]
    y_pred = table["predicted"].where(~abstained, metrics.UNASSIGNED)[known]
    return {"known_accuracy": skm.accuracy_score(y_true, y_pred),
            "known_kappa": skm.cohen_kappa_score(y_true, y_pred),
            "called_kappa": skm.cohen_kappa_score(y_true, table["predicted"][known]),
            "known_macro_f1": skm.f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro",
                                           zero_division=0),
            "known_abstention": abstained[known].mean(), "novel_recall": abstained[~known].mean(),
            "novel_auroc": skm.roc_auc_score(~known, rejection), "novel_fraction": (~known).mean()}


def expected_abstention(table: pd.DataFrame, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The contract's columns when present, else 1 - confidence and confidence < threshold (written out here)."""
    if metrics.ABSTAINED in table:
        return table[metrics.ABSTAINED].to_numpy() == 1, table[metrics.REJECTION].to_numpy()
    return table["confidence"].to_numpy() < threshold, 1 - table["confidence"].to_numpy()


def test_benchmark_scores_match_sklearn_with_novel_cells_and_abstentions(benchmark_table):
    scores = metrics.benchmark_scores(benchmark_table, TRAIN, threshold=0.5, rare_fraction=0.05)
    expected = sklearn_scores(benchmark_table, TRAIN, *expected_abstention(benchmark_table, 0.5))
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value), name


def test_benchmark_known_novel_and_rare_by_hand(benchmark_table):
    scores = metrics.benchmark_scores(benchmark_table, TRAIN, threshold=0.5, rare_fraction=0.05)
    assert scores["novel_fraction"] == pytest.approx(5 / 12)
    if metrics.ABSTAINED in benchmark_table:
        # known cells scored: A A unassigned B unassigned R A -> A, A, B, R right
        assert scores["known_accuracy"] == pytest.approx(4 / 7)
        assert scores["known_abstention"] == pytest.approx(2 / 7)
        assert scores["novel_recall"] == pytest.approx(3 / 5)  # N, N, M of N N N M M
        # novel scores 0.6 0.8 0.2 0.6 0.7 against known 0.1 0.2 0.6 0.1 0.9 0.3 0.4: 25.5 of 35 pairs won (ties 1/2)
        assert scores["novel_auroc"] == pytest.approx(25.5 / 35)
        # A: precision 2/3, recall 2/3; B: 1, 1/2 -> 2/3; R: 1, 1/2 -> 2/3 (unassigned is not averaged)
        assert scores["known_macro_f1"] == pytest.approx(2 / 3)
    else:
        # known cells scored: A A B B unassigned R A -> A, A, B, R right
        assert scores["known_accuracy"] == pytest.approx(4 / 7)
        assert scores["known_abstention"] == pytest.approx(1 / 7)
        assert scores["novel_recall"] == pytest.approx(3 / 5)  # confidences 0.3 0.1 0.4 of 0.3 0.1 0.9 0.4 0.8
        # A: precision 2/3, recall 2/3; B: 1/2, 1/2; R: 1, 1/2 -> 2/3
        assert scores["known_macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert scores["rare_accuracy"] == pytest.approx(1 / 2)
    assert scores["rare_f1"] == pytest.approx(2 / 3)  # R: precision 1, recall 1/2
    assert np.isnan(scores["macro_auroc"]) and np.isnan(scores["macro_auprc"])  # no proba columns


@pytest.mark.parametrize("contract", [False, True])
def test_benchmark_scores_match_sklearn_on_random_predictions(predictions, contract):
    y_true, y_pred = predictions  # DC is predicted but never true; Mono is absent from training: novel
    rng = np.random.default_rng(5)
    train = ["B"] * 60 + ["T"] * 30 + ["NK"] * 10
    table = pd.DataFrame({"true": y_true, "predicted": y_pred, "confidence": rng.random(y_true.size).round(1)})
    if contract:
        table[metrics.REJECTION] = (rng.random(y_true.size) + (y_true == "Mono") * 0.5).round(1)
        table[metrics.ABSTAINED] = (table[metrics.REJECTION] > 0.9).astype(int)
    scores = metrics.benchmark_scores(table, train, threshold=0.3, rare_fraction=0.05)
    expected = sklearn_scores(table, train, *expected_abstention(table, 0.3))
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value), name
    assert 0 < scores["known_abstention"] < 1 and 0 < scores["novel_recall"] < 1


def test_probability_columns_keeps_only_proba_prefix_in_order():
    table = pd.DataFrame(columns=["cell_id", "true", "proba:T", "predicted", "proba:B", "confidence", "probaX"])
    assert metrics.probability_columns(table) == ["proba:T", "proba:B"]


def test_rare_classes_are_strictly_below_the_fraction():
    train = ["A"] * 50 + ["B"] * 40 + ["C"] * 5 + ["D"] * 4 + ["E"] * 1
    assert metrics.rare_classes(train) == ["D", "E"]  # C is exactly 5 %, not fewer
    assert metrics.rare_classes(train, rare_fraction=0.1) == ["C", "D", "E"]
    assert metrics.rare_classes(train, rare_fraction=0.01) == []


def test_rare_scores_match_sklearn_on_random_predictions(predictions):
    y_true, y_pred = predictions
    train = ["B"] * 60 + ["T"] * 30 + ["NK"] * 7 + ["Mono"] * 3  # Mono rare at 5 %, NK and Mono at 10 %
    table = pd.DataFrame({"true": y_true, "predicted": y_pred, "confidence": 1.0})
    scores = metrics.benchmark_scores(table, train, threshold=0.5, rare_fraction=0.1)
    rare = np.isin(y_true, ["Mono", "NK"])
    assert scores["rare_accuracy"] == pytest.approx(skm.accuracy_score(y_true[rare], y_pred[rare]))
    rare_f1 = skm.f1_score(y_true, y_pred, labels=["Mono", "NK"], average=None, zero_division=0).mean()
    assert scores["rare_f1"] == pytest.approx(rare_f1)


def test_macro_auroc_and_auprc_match_sklearn_one_vs_rest_on_known_cells():
    rng = np.random.default_rng(7)
    trained = ["A", "B", "C", "D", "E"]  # E is never in the test set, so it is skipped
    true = rng.choice(["A", "B", "C", "D", "N"], size=400, p=[0.3, 0.3, 0.2, 0.1, 0.1])
    proba = rng.dirichlet(np.ones(len(trained)), size=true.size).round(1)  # rounding makes ties
    table = pd.DataFrame({"true": true, "predicted": np.asarray(trained)[proba.argmax(axis=1)],
                          "confidence": proba.max(axis=1)})
    for label, column in zip(trained, proba.T):
        table[metrics.PROBA_PREFIX + label] = column
    scores = metrics.benchmark_scores(table, trained, threshold=0.0, rare_fraction=0.05)
    known = true != "N"
    aurocs = [skm.roc_auc_score(true[known] == c, table.loc[known, f"proba:{c}"]) for c in "ABCD"]
    auprcs = [skm.average_precision_score(true[known] == c, table.loc[known, f"proba:{c}"]) for c in "ABCD"]
    assert scores["macro_auroc"] == pytest.approx(np.mean(aurocs))
    assert scores["macro_auprc"] == pytest.approx(np.mean(auprcs))


def test_auroc_and_auprc_match_sklearn_with_ties():
    rng = np.random.default_rng(11)
    positive = rng.random(200) < 0.3
    score = (rng.random(200) + positive * 0.3).round(1)
    assert metrics.auroc(positive, score) == pytest.approx(skm.roc_auc_score(positive, score))
    assert metrics.auprc(positive, score) == pytest.approx(skm.average_precision_score(positive, score))


def test_benchmark_nan_without_novel_rare_or_proba_cells():
    table = pd.DataFrame({"true": ["A", "B", "A"], "predicted": ["A", "A", "A"], "confidence": [0.9, 0.9, 0.9]})
    scores = metrics.benchmark_scores(table, TRAIN, threshold=0.5, rare_fraction=0.05)
    assert scores["known_accuracy"] == pytest.approx(2 / 3)
    assert scores["novel_fraction"] == 0.0
    for name in ["novel_recall", "novel_auroc", "rare_accuracy", "rare_f1", "macro_auroc", "macro_auprc"]:
        assert np.isnan(scores[name]), name


def test_known_scores_undefined_when_every_test_cell_is_novel():
    table = pd.DataFrame({"true": ["N", "M"], "predicted": ["A", "B"], "confidence": [0.9, 0.2]})
    scores = metrics.benchmark_scores(table, TRAIN, threshold=0.5, rare_fraction=0.05)
    assert scores["novel_recall"] == 0.5 and scores["novel_fraction"] == 1.0
    for name in [*metrics.HEADLINE_METRICS, "novel_auroc"]:
        assert np.isnan(scores[name]), name


def test_auroc_skips_classes_without_negatives_among_known_cells():
    # Only A among the known cells: no one-vs-rest split exists, so AUROC is undefined.
    table = pd.DataFrame({"true": ["A", "A", "N"], "predicted": ["A", "A", "A"], "confidence": [0.9, 0.8, 0.7],
                          "proba:A": [0.9, 0.8, 0.7], "proba:B": [0.1, 0.2, 0.3]})
    scores = metrics.benchmark_scores(table, ["A", "B"], threshold=0.5, rare_fraction=0.05)
    assert np.isnan(scores["macro_auroc"]) and np.isnan(scores["macro_auprc"])


def test_paired_comparison_with_the_best_peer_and_its_sign_test():
    kappa = {"celltypist": [0.80, 0.82, 0.84, 0.86, 0.88],  # mean 0.84: the best peer
             "singler": [0.70, 0.90, 0.70, 0.70, 0.70],
             "mlp": [0.85, 0.83, 0.84, 0.90, 0.95],  # wins 4, ties 1 (cv3)
             "logreg": [0.70, 0.71, np.nan, 0.72, 0.73]}  # did not run on cv3: paired on 4 splits
    long = pd.DataFrame([{"method": m, "split": f"cv{i + 1}", "scheme": "cv", "metric": "known_kappa", "value": v}
                         for m, values in kappa.items() for i, v in enumerate(values) if np.isfinite(v)])
    long = pd.concat([long, long.assign(metric="known_accuracy", value=1.0),  # other metrics do not count
                      pd.DataFrame({"method": ["mlp"], "split": ["lodo_a"], "scheme": ["lodo"],
                                    "metric": ["known_kappa"], "value": [0.9]})], ignore_index=True)
    paired = metrics.paired_against_best_peer(long, ["singler", "celltypist"])
    assert list(paired.columns) == metrics.PAIRED_COLUMNS
    paired = paired.set_index("method")
    assert set(paired.index) == {"singler", "mlp", "logreg"} and (paired["scheme"] == "cv").all()  # no peer in lodo
    assert (paired["best_peer"] == "celltypist").all()
    mlp = paired.loc["mlp"]
    difference = np.subtract(kappa["mlp"], kappa["celltypist"])
    assert mlp["mean_difference"] == pytest.approx(difference.mean())
    assert mlp["sd_difference"] == pytest.approx(difference.std(ddof=1))
    assert (mlp["n_splits"], mlp["wins"], mlp["losses"], mlp["ties"]) == (5, 4, 0, 1)
    assert mlp["sign_test_p"] == pytest.approx(binomtest(4, 4, 0.5, alternative="two-sided").pvalue)
    assert mlp["sign_test_p"] == pytest.approx(0.125)
    logreg = paired.loc["logreg"]
    assert (logreg["n_splits"], logreg["wins"], logreg["losses"]) == (4, 0, 4)
    assert logreg["sign_test_p"] == pytest.approx(binomtest(0, 4).pvalue)
    singler = paired.loc["singler"]
    assert (singler["wins"], singler["losses"]) == (1, 4)
    assert singler["sign_test_p"] == pytest.approx(binomtest(1, 5).pvalue)


def test_the_pretraining_effect_pairs_each_pretrained_method_with_its_encoder_alone():
    rng = np.random.default_rng(5)
    splits = {"cv": [f"cv{i}" for i in range(1, 6)], "lodo": ["lodo_a", "lodo_b", "lodo_c"]}
    ran = {"cv": ["logreg", "mlp", "kmeans+mlp", "celltypist"],  # no transformer counterpart in cv
           "lodo": ["mlp", "kmeans+mlp", "transformer", "masked_bins+transformer", "kmeans+transformer"]}
    long = pd.DataFrame([{"method": method, "split": split, "scheme": scheme, "metric": metric,
                          "value": rng.uniform(0.5, 0.95)}
                         for scheme, methods in ran.items() for method in methods for split in splits[scheme]
                         for metric in ("known_kappa", "known_macro_f1", "known_accuracy")])
    long = long.drop(long.index[(long["method"] == "mlp") & (long["split"] == "cv3")])  # mlp did not run on cv3
    long.loc[(long["method"] == "kmeans+mlp") & (long["split"] == "lodo_a"), "value"] = (
        long.loc[(long["method"] == "mlp") & (long["split"] == "lodo_a"), "value"].to_numpy())  # a tie
    effect = evaluation.ablation_effect(long, registry.pretraining_pairs)
    assert list(effect.columns) == metrics.EFFECT_COLUMNS
    assert sorted(map(tuple, effect[["scheme", "method", "counterpart"]].drop_duplicates().values.tolist())) == [
        ("cv", "kmeans+mlp", "mlp"), ("lodo", "kmeans+mlp", "mlp"), ("lodo", "kmeans+transformer", "transformer"),
        ("lodo", "masked_bins+transformer", "transformer")]
    assert set(effect["metric"]) == {"known_kappa", "known_macro_f1"}
    for row in effect.itertuples():
        wide = long[(long["scheme"] == row.scheme) & (long["metric"] == row.metric)].pivot(
            index="split", columns="method", values="value")
        difference = (wide[row.method] - wide[row.counterpart]).dropna().to_numpy()
        wins, losses = int((difference > 1e-12).sum()), int((difference < -1e-12).sum())
        assert row.n_splits == len(difference) == (4 if row.scheme == "cv" else 3)
        assert row.mean_difference == pytest.approx(np.mean(difference))
        assert row.sd_difference == pytest.approx(np.std(difference, ddof=1))
        assert (row.wins, row.losses, row.ties) == (wins, losses, len(difference) - wins - losses)
        assert row.sign_test_p == pytest.approx(binomtest(wins, wins + losses).pvalue)
    tied = effect[(effect["method"] == "kmeans+mlp") & (effect["scheme"] == "lodo")]
    assert (tied["ties"] == 1).all()
    assert evaluation.ablation_effect(long[long["method"] != "mlp"], registry.pretraining_pairs).query(
        "counterpart == 'mlp'").empty


def test_the_variants_effect_pairs_each_variant_with_its_base_split_by_split():
    splits = ["lodo_a", "lodo_b", "lodo_c"]
    kappa = {"mlp": [0.80, 0.70, 0.90], "mlp@ens": [0.85, 0.70, 0.95], "kmeans+mlp": [0.6, 0.6, 0.6],
             "logreg@top": [0.5, 0.6, 0.7], "logreg": [0.6, 0.7, 0.6], "tabnet@ens": [0.9, 0.9, 0.9]}  # no tabnet
    long = pd.DataFrame([{"method": method, "split": split, "scheme": "lodo", "metric": metric,
                          "value": value + (0.01 if metric == "known_macro_f1" else 0.0)}
                         for method, values in kappa.items() for split, value in zip(splits, values)
                         for metric in ("known_kappa", "known_macro_f1")])
    effect = evaluation.ablation_effect(long, registry.variant_pairs).set_index(["method", "metric"])
    assert sorted(set(effect.index)) == [(m, k) for m in ("logreg@top", "mlp@ens")
                                         for k in ("known_kappa", "known_macro_f1")]
    assert set(effect["counterpart"]) == {"logreg", "mlp"}
    ens = effect.loc[("mlp@ens", "known_kappa")]  # differences 0.05, 0, 0.05
    assert ens["mean_difference"] == pytest.approx(0.1 / 3)
    assert ens["sd_difference"] == pytest.approx(np.std([0.05, 0.0, 0.05], ddof=1))
    assert (ens["n_splits"], ens["wins"], ens["losses"], ens["ties"]) == (3, 2, 0, 1)
    assert ens["sign_test_p"] == pytest.approx(binomtest(2, 2).pvalue)
    top = effect.loc[("logreg@top", "known_macro_f1")]  # differences -0.1, -0.1, 0.1
    assert top["mean_difference"] == pytest.approx(-0.1 / 3) and (top["wins"], top["losses"]) == (1, 2)


def test_no_paired_rows_without_a_peer():
    long = pd.DataFrame({"method": ["mlp"], "split": ["cv1"], "scheme": ["cv"], "metric": ["known_kappa"],
                         "value": [0.9]})
    assert metrics.paired_against_best_peer(long, ["celltypist"]).empty


def test_evaluate_stage_scores_every_table_on_one_truth(tmp_path):
    # split lodo_x trained on A and B; its test cells hold the novel type N. The peer abstains by its own rule,
    # logreg's file predates the rejection columns (fallback at the 0.5 threshold).
    counts = pd.DataFrame({"split": "lodo_x", "cell_type": ["A", "B", "N"], "total": [60, 40, 2], "train": [50, 30, 0],
                           "val": [5, 5, 0], "test": [5, 5, 2]})
    counts.to_csv(tmp_path / "class_counts.tsv", sep="\t", index=False)
    true = ["A"] * 5 + ["B"] * 5 + ["N"] * 2
    tables = {"logreg": pd.DataFrame({"cell_id": [f"c{i}" for i in range(12)], "true": true,
                                      "predicted": ["A"] * 4 + ["B"] * 6 + ["A", "B"],
                                      "confidence": [0.9] * 9 + [0.4, 0.3, 0.9]}),
              "celltypist": pd.DataFrame({"cell_id": [f"c{i}" for i in range(12)], "true": true,
                                          "predicted": ["A"] * 5 + ["B"] * 5 + ["A", "A"], "confidence": 0.9,
                                          metrics.REJECTION: [0.1] * 10 + [0.8, 0.2],
                                          metrics.ABSTAINED: [0] * 10 + [1, 0]})}
    files = []
    for method, table in tables.items():
        files.append(tmp_path / f"predictions/{method}/lodo_x.tsv")
        files[-1].parent.mkdir(parents=True)
        table.to_csv(files[-1], sep="\t", index=False)
    out = {name: tmp_path / f"{name}.tsv" for name in ("metrics", "summary", "per_class", "confusion", "paired")}
    evaluation.evaluate_stage([str(f) for f in files], str(tmp_path / "class_counts.tsv"),
                              {"unassigned_threshold": 0.5, "rare_fraction": 0.05}, *map(str, out.values()))
    scores = pd.read_csv(out["metrics"], sep="\t").set_index(["method", "metric"])["value"]
    for method, table in tables.items():
        expected = sklearn_scores(table.drop(columns="cell_id"), ["A", "B"], *expected_abstention(table, 0.5))
        for name, value in expected.items():
            assert scores[(method, name)] == pytest.approx(value), (method, name)
    assert scores[("logreg", "known_accuracy")] == pytest.approx(8 / 10)  # c4 wrong, c9 abstained
    assert scores[("celltypist", "novel_recall")] == 0.5 and scores[("celltypist", "novel_auroc")] == 1.0
    confusion = pd.read_csv(out["confusion"], sep="\t")
    logreg = confusion[confusion["method"] == "logreg"].set_index(["true", "predicted"])["count"]
    assert logreg.to_dict() == {("A", "A"): 4, ("A", "B"): 1, ("B", "B"): 4, ("B", "unassigned"): 1,
                                ("unassigned", "B"): 1, ("unassigned", "unassigned"): 1}
    per_class = pd.read_csv(out["per_class"], sep="\t").set_index(["method", "cell_type"])
    y_true = pd.Series(true).where(pd.Series(true) != "N", metrics.UNASSIGNED)
    y_pred = tables["celltypist"]["predicted"].where(tables["celltypist"][metrics.ABSTAINED] == 0, metrics.UNASSIGNED)
    labels = sorted(set(y_true) | set(y_pred))
    f1 = skm.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    np.testing.assert_allclose(per_class.loc["celltypist"].loc[labels, "f1"], f1)
    summary = pd.read_csv(out["summary"], sep="\t").set_index(["method", "metric"])
    assert summary.loc[("logreg", "known_kappa"), "mean"] == pytest.approx(scores[("logreg", "known_kappa")])
    paired = pd.read_csv(out["paired"], sep="\t")
    assert paired[["scheme", "method", "best_peer", "n_splits"]].values.tolist() == [["lodo", "logreg", "celltypist",
                                                                                       1]]


def test_per_class_figure_labels_each_type_with_its_test_cells_over_all_splits():
    from sclabel.plots import per_class_f1_figure

    per_class = pd.DataFrame([
        {"cell_type": t, "f1": 0.5, "support": n, "method": m, "split": s}
        for m in ("logreg", "mlp") for s, counts in (("cv1", {"B": 3, "T": 5, "NK": 0}), ("cv2", {"B": 4, "T": 6, "NK": 0}))
        for t, n in counts.items()])
    figure = per_class_f1_figure(per_class)
    labels = [tick.get_text() for tick in figure.axes[0].get_xticklabels()]
    assert labels == ["B (n=7)", "T (n=11)"]  # NK was never tested: not shown
