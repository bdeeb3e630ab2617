"""The method registry is the one source of method names; saved annotators load safely through it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from sclabel import annotator, registry
from sclabel.errors import InputError
from sclabel.model import CellTypeAnnotator
from workflow_helpers import load_config, write_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_readme_methods_table_is_the_registry_table():
    assert registry.markdown_table() in (REPO_ROOT / "README.md").read_text()


def test_every_registered_method_has_an_env_file_and_a_settings_block_in_the_schema():
    schema = (REPO_ROOT / "workflow/schemas/config.schema.yaml").read_text()
    for method in registry.METHODS.values():
        assert (REPO_ROOT / "envs" / f"{method.env}.yaml").is_file(), method.name
        assert method.family in registry.FAMILIES
        assert f"{method.settings.split('.')[0]}:" in schema, method.settings


def test_neural_methods_are_every_allowed_pretraining_and_encoder_pair():
    pairs = {(m.pretrain, m.encoder) for m in registry.METHODS.values() if m.family == "neural"}
    assert pairs == {(None, "mlp"), (None, "transformer"), (None, "tabnet"), ("kmeans", "mlp"),
                     ("kmeans", "transformer"), ("kmeans", "tabnet"), ("masked_bins", "transformer")}


def test_every_neural_method_has_an_ens_variant_with_its_base_settings_and_ensemble_n_seeds():
    plain = [name for name in registry.names("neural") if registry.get(name).variant is None]
    ens = {m.base: m for m in registry.METHODS.values() if m.variant == registry.ENSEMBLE}
    assert sorted(ens) == sorted(plain) and all(m.name == f"{base}@ens" for base, m in ens.items())
    for base, m in ens.items():
        assert registry.base_name(m.name) == base and not registry.on_selected_genes(m.name)
        assert replace(m, name=base, base=None, variant=None, description=registry.get(base).description) == (
            registry.get(base))  # the same family, class, env, settings, encoder, pretraining and rejection
    assert registry.on_selected_genes("mlp@top") and registry.get("mlp@top").variant == registry.SELECTED
    assert not any(name.count("@") > 1 for name in registry.METHODS)  # no @top@ens
    row = registry.method_rows(["mlp@ens"], {})[0]
    assert row["variant"] == "ens" and row["base"] == "mlp" and "~n_seeds x its base" in row["description"]
    finetune = {"epochs": 50, "n_seeds": 1, "rejection": "centroid_distance", "ensemble": {"n_seeds": 5},
                "overrides": {"tabnet": {"lr": 0.02, "n_seeds": 1}, "tabnet@ens": {"rejection": "ensemble_mi"}}}
    assert registry.finetune_block(finetune, "tabnet@ens") == {"epochs": 50, "n_seeds": 5, "rejection": "ensemble_mi",
                                                               "lr": 0.02}
    assert registry.finetune_block(finetune, "tabnet") == {"epochs": 50, "n_seeds": 1,
                                                           "rejection": "centroid_distance", "lr": 0.02}
    assert registry.finetune_block(finetune, "mlp@ens")["n_seeds"] == 5
    assert registry.variant_pairs(["mlp", "mlp@ens", "tabnet@ens", "logreg@top", "logreg"]) == [
        ("mlp@ens", "mlp"), ("logreg@top", "logreg")]
    assert registry.pretraining_pairs(["mlp@ens", "kmeans+mlp@ens", "mlp", "kmeans+mlp"]) == [("kmeans+mlp", "mlp")]


def test_unknown_method_is_one_line_with_the_known_names():
    with pytest.raises(registry.UnknownMethod, match=r"unknown method 'bert'\. Fix: use one of logreg, "):
        registry.get("bert")


def name_runs(text: str, quote: str = "[\"']") -> list[str]:
    """Sequences of two or more (quoted) registered method names: a list, tuple or alternation of names."""
    name = "|".join(re.escape(n) for n in sorted(registry.METHODS, key=len, reverse=True))
    one = rf"(?<![\w+-]){quote}(?:{name}){quote}(?![\w+-])"
    return re.findall(rf"{one}(?:\s*[,|]\s*{one})+", text)


def test_no_list_of_method_names_outside_the_registry():
    code = [REPO_ROOT / "Snakefile", *(REPO_ROOT / "workflow").rglob("*.smk"), *(REPO_ROOT / "scripts").rglob("*.py")]
    found = {str(path.relative_to(REPO_ROOT)): runs for path in code
             if path.name != "registry.py" and (runs := name_runs(path.read_text()))}
    found.update({str(path.relative_to(REPO_ROOT)): runs for path in (REPO_ROOT / "workflow/schemas").glob("*.yaml")
                  if (runs := name_runs(path.read_text(), quote="[\"']?"))})
    assert found == {}
    assert name_runs('X = ("logreg", "mlp")') and not name_runs('"logreg" if x else "mlp"')
    assert name_runs("enum: [logreg, mlp]", quote="[\"']?") and not name_runs("kmeans+mlp, x", quote="[\"']?")


def test_methods_table_rows_carry_the_configured_settings():
    rows = registry.method_rows(["logreg", "celltypist"], {"baseline": {"logreg": {"C": 0.5}}, "peers": {}})
    assert [row["name"] for row in rows] == ["logreg", "celltypist"]
    assert json.loads(rows[0]["configured_settings"]) == {"C": 0.5}
    assert json.loads(rows[1]["configured_settings"]) == {}
    assert rows[1]["at_scale"].startswith("CellTypist's large-data mode")



def test_methods_table_rows_name_the_package_the_fitted_cells_and_the_rejection_rule():
    rows = {row["name"]: row for row in registry.method_rows(registry.names(), {})}
    assert {row["package"] for row in rows.values()} == {"scikit-learn", "torch", "celltypist", "singler", "numpy"}
    assert rows["mlp"]["package"] == "torch" and rows["celltypist"]["package"] == "celltypist"
    assert all(row["fit_cells"] == "train" for name, row in rows.items() if name != "consensus")
    assert "validation" in rows["consensus"]["fit_cells"]
    assert {rows[name]["rejection_rule"] for name in registry.names("control")} == {registry.NEVER_ABSTAINS}
    assert rows["logreg"]["rejection_rule"] == registry.THRESHOLD_REJECTION
    assert rows["mlp"]["rejection_rule"].endswith(registry.THRESHOLD_REJECTION[16:])
    assert "p_thres" in rows["celltypist"]["rejection_rule"] and "pruneScores" in rows["singler"]["rejection_rule"]
    assert "rejection" not in rows["logreg"]


def test_package_version_is_the_installed_one_else_the_env_files_pin(tmp_path):
    envs = REPO_ROOT / "envs"
    for name in ("logreg", "mlp"):
        method = registry.get(name)
        assert registry.package_version(method, envs) == importlib.metadata.version(method.package)
        assert re.fullmatch(r"\d+\.\d+\.\d+", registry.pinned_version(method.package, envs / f"{method.env}.yaml"))
    (tmp_path / "absent.yaml").write_text("dependencies:\n  - numpy=2.3.5\n  - pip:\n      - not-a-package==0.3.1  # x\n")
    missing = registry.Method("m", "peer", "x:Y", "absent", "peers.m", "", package="not-a-package")
    assert registry.package_version(missing, tmp_path) == "0.3.1 (envs/absent.yaml)"
    unpinned = registry.Method("m", "peer", "x:Y", "absent", "peers.m", "", package="not-installed-either")
    assert registry.package_version(unpinned, tmp_path) == "absent"


@pytest.fixture
def saved_mlp(tmp_path: Path) -> tuple[CellTypeAnnotator, Path]:
    genes = [f"g{i}" for i in range(6)]
    model = CellTypeAnnotator(genes, ["B", "T"], "mlp", {"hidden_dims": [8], "out_dim": 4},
                              config={"method": "mlp"})
    model.save(tmp_path / "model")
    return model, tmp_path / "model"


def test_neural_model_loads_through_the_registry_with_identical_probabilities(saved_mlp):
    model, folder = saved_mlp
    X = np.random.default_rng(0).random((5, 6)).astype(np.float32)
    loaded = annotator.load_annotator(folder)
    assert isinstance(loaded, CellTypeAnnotator) and loaded.method == "mlp"
    assert loaded.classes.tolist() == ["B", "T"] and loaded.genes == model.genes
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X), rtol=1e-6)
    np.testing.assert_allclose(loaded.rejection_score(X, "max_softmax"), 1 - model.predict_proba(X).max(axis=1),
                               rtol=1e-6)
    assert not list(folder.glob("*.pkl"))


def edit_manifest(folder: Path, **changes) -> None:
    path = folder / annotator.MANIFEST
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        target = manifest
        *parents, leaf = key.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    path.write_text(json.dumps(manifest))


def test_model_saved_by_another_torch_minor_version_is_refused_in_one_line(saved_mlp):
    _, folder = saved_mlp
    edit_manifest(folder, versions__torch="1.13.1")
    with pytest.raises(InputError, match=r"annotator\.json: versions\.torch: saved with torch 1\.13\.1") as error:
        annotator.load_annotator(folder)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("changes", "field"), [({"method": "bert"}, "method"), ({"format": 99}, "format")])
def test_unknown_method_or_layout_is_refused(saved_mlp, changes, field):
    _, folder = saved_mlp
    edit_manifest(folder, **changes)
    with pytest.raises(InputError, match=f": {field}: "):
        annotator.load_annotator(folder)


def test_missing_folder_and_not_run_models_are_refused(tmp_path):
    with pytest.raises(InputError, match="no saved annotator here"):
        annotator.load_annotator(tmp_path)
    annotator.save_not_run(tmp_path / "m", "singler", "package singler is not installed")
    with pytest.raises(InputError, match="singler could not be trained: package singler is not installed"):
        annotator.load_annotator(tmp_path / "m")


TOY_MODULE = '''"""A toy method: nearest class centroid, probabilities from a softmax of negative distances."""

import numpy as np

from sclabel.annotator import Annotator
from sclabel.store import in_memory


def dense(X):
    X = in_memory(X)
    return np.asarray(X.todense() if hasattr(X, "todense") else X, dtype=float)


class CentroidAnnotator(Annotator):
    def fit(self, train, validation=None):
        X, y = dense(train.X), np.asarray(train.labels).astype(str)
        self.classes = np.unique(y)
        self.centroids = np.stack([X[y == label].mean(axis=0) for label in self.classes])
        return self

    def predict_proba(self, X):
        distance = np.linalg.norm(dense(X)[:, None, :] - self.centroids[None], axis=2)
        weights = np.exp(-(distance - distance.min(axis=1, keepdims=True)))
        return weights / weights.sum(axis=1, keepdims=True)

    def save_arrays(self, folder):
        np.savez(folder / "centroids.npz", centroids=self.centroids)
        return {}

    def load_arrays(self, folder, meta):
        self.centroids = np.load(folder / "centroids.npz", allow_pickle=False)["centroids"]
'''
TOY_ENTRY = '''
METHODS["toy_centroid"] = Method("toy_centroid", "baseline", "sclabel.toy_centroid:CentroidAnnotator", "sklearn",
                                 "baseline.toy_centroid", "nearest class centroid (a toy)")
'''


def test_a_method_added_through_the_registry_alone_runs_end_to_end(tmp_path):
    """One module, one registry entry, no other file touched: the workflow benchmarks, saves and annotates with it."""
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".snakemake")
    for part in ("workflow", "scripts", "envs", "config"):
        shutil.copytree(REPO_ROOT / part, repo / part, ignore=ignore)
    shutil.copy(REPO_ROOT / "Snakefile", repo / "Snakefile")
    (repo / "scripts/sclabel/toy_centroid.py").write_text(TOY_MODULE)
    registry_file = repo / "scripts/sclabel/registry.py"
    text = registry_file.read_text()
    main = text.index('\nif __name__ == "__main__":')
    registry_file.write_text(text[:main] + TOY_ENTRY + text[main:])
    config = load_config()
    config["methods"] = ["toy_centroid", "majority"]
    config["split"]["n_folds"] = 2
    config["interpret"] = {"enabled": False}
    config["annotate"] = {"method": "toy_centroid",
                          "queries": {"query": {"source": "builtin:pbmc68k_reduced", "values": "log1p"}}}
    workdir = tmp_path / "run"
    configfile = write_config(workdir, config)
    # all but the query's summary page (its UMAP is tested in test_annotation_summary.py and test_training.py)
    command = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(configfile), "--cores", "2", "--omit-from", "annotation_summary"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "PYTHONPATH": str(repo / "scripts")})
    assert result.returncode == 0, result.stderr[-4000:]
    summary = pd.read_csv(workdir / "results/benchmark/summary.tsv", sep="\t")
    kappa = summary[summary["metric"] == "known_kappa"].set_index("method")["mean"]
    assert kappa["toy_centroid"] > kappa["majority"] + 0.3  # centroids beat the majority control on real PBMCs
    methods = pd.read_csv(workdir / "results/benchmark/methods.tsv", sep="\t").set_index("name")
    assert methods.loc["toy_centroid", "description"] == "nearest class centroid (a toy)"
    assert (workdir / "results/models/toy_centroid/cv1/centroids.npz").is_file()
    annotated = ad.read_h5ad(workdir / "results/annotate/query.h5ad")
    assert annotated.uns["sclabel_annotation"]["method"] == "toy_centroid"
    assert annotated.obs["predicted_cell_type"].notna().all() and "X_sclabel" not in annotated.obsm
