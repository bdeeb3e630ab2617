"""Config names below the top level are checked against what exists: one line naming the key, before any job."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from snakemake.utils import validate

from sclabel.config_check import check_config, check_names
from sclabel.errors import InputError
from workflow_helpers import REPO_ROOT, load_config, snakemake, write_config

SCHEMA_FILE = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_FILE.read_text())


def validated(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as the Snakefile sees it: checked against the schema, defaults filled in."""
    validate(config, str(SCHEMA_FILE))
    return config


def overrides(value: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A config change setting finetune.overrides to ``value``."""
    return lambda config: config["finetune"].update({"overrides": value})


TYPOS = {  # config change -> (key the error names, problem it states)
    "misspelt baseline block": (lambda c: c["baseline"].update({"logerg": {"C": 1.0}}),
                                ("baseline:", "unknown baseline settings block 'logerg'")),
    "misspelt override method": (overrides({"mpl": {"epochs": 3}}),
                                 ("finetune.overrides:", "unknown finetuned method 'mpl'")),
    "misspelt override key": (overrides({"mlp": {"epoch": 3}}), ("finetune.overrides.mlp:", "'epoch' was unexpected")),
    "override of the wrong type": (overrides({"mlp": {"epochs": "ten"}}),
                                   ("finetune.overrides.mlp.epochs:", "not of type 'integer'")),
    "override out of range": (overrides({"mlp": {"lr": -1}}), ("finetune.overrides.mlp.lr:", "minimum of 0")),
    "unknown interpret method": (lambda c: c["interpret"].update({"methods": ["lgoreg"]}),
                                 ("interpret.methods:", "'lgoreg'")),
    "unknown pretraining dataset": (lambda c: c["pretrain"].update({"datasets": ["pbmc86k"]}),
                                    ("pretrain.datasets:", "unknown dataset 'pbmc86k'", "pbmc68k")),
    "query named like a training dataset": (
        lambda c: c["annotate"]["queries"].update({"pbmc68k": {"source": "query.h5ad", "values": "counts"}}),
        ("annotate.queries.pbmc68k:", "name of a training dataset")),
}


@pytest.mark.parametrize("case", TYPOS)
def test_config_names_that_exist_nowhere_are_refused_naming_the_key(case):
    change, parts = TYPOS[case]
    config = validated(load_config())
    change(config)
    with pytest.raises(InputError) as err:
        check_names(config, SCHEMA)
    message = str(err.value)
    assert "\n" not in message and message.startswith("config: ") and "Fix:" in message
    assert all(part in message for part in parts), message


@pytest.mark.parametrize("name", sorted(path.name for path in (REPO_ROOT / "config").glob("*.yaml")))
def test_shipped_configs_pass_the_name_checks(name):
    check_names(validated(load_config(name)), SCHEMA)


def test_snakemake_refuses_a_misspelt_override_before_any_job(tmp_path):
    config = copy.deepcopy(load_config())
    config["finetune"] = {"overrides": {"kmeans+mpl": {"epochs": 3}}}
    result = snakemake(tmp_path, write_config(tmp_path, config), "--dry-run", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "finetune.overrides: unknown finetuned method 'kmeans+mpl'" in output
    assert [line for line in output.splitlines() if "profile" not in line] == [output.strip().splitlines()[-1]]
    assert not (tmp_path / "results").exists()


SCHEMA_TYPOS = {  # config change -> the one line's start and what it offers
    "misspelt key, any depth": (lambda c: c.setdefault("finetune", {}).update({"epochz": 3}),
                                "config: finetune: Additional properties are not allowed ('epochz' was unexpected)",
                                "use one of epochs, batch_size"),
    "wrong type": (lambda c: c.setdefault("finetune", {}).update({"epochs": "ten"}),
                   "config: finetune.epochs: 'ten' is not of type 'integer'", "config/README.md"),
    "value outside an enum": (lambda c: c["datasets"]["pbmc68k"].update({"values": "log2"}),
                              "config: datasets.pbmc68k.values: 'log2' is not one of", "use one of counts, log1p"),
    "unknown method": (lambda c: c.update({"methods": ["logreg", "mlpp"]}), "config: methods: unknown method 'mlpp'",
                       "kmeans+mlp"),
}


@pytest.mark.parametrize("case", SCHEMA_TYPOS)
def test_config_errors_at_any_depth_end_the_run_in_one_line(case):
    change, start, offer = SCHEMA_TYPOS[case]
    config = copy.deepcopy(load_config())
    change(config)
    with pytest.raises(SystemExit) as stop:
        check_config(config, SCHEMA_FILE)
    message = str(stop.value.code)
    assert "\n" not in message and message.startswith(start) and offer in message, message


def test_a_named_run_makes_the_configs_input_paths_absolute():
    from sclabel.run_folder import with_absolute_inputs

    config = {"datasets": {"a": {"source": "data/a.h5ad", "labels": "data/a.tsv", "label_key": "cell_type"},
                           "b": {"source": "builtin:pbmc68k_reduced"}, "c": {"source": "https://x.org/c.h5ad"},
                           "d": {"source": "/abs/d.h5ad", "ontology_map": "config/ontology/d.tsv"}},
              "annotate": {"queries": {"q": {"source": "../shared/q.h5ad"}}},
              "interpret": {"libraries": {"GO": "sets/go.gmt"}, "marker_table": None},
              "encoder": {"transformer": {"gene_embedding_init": "vectors.txt", "dim": 8}}}
    fixed = with_absolute_inputs(config, "/work/project")
    assert fixed["datasets"]["a"] == {"source": "/work/project/data/a.h5ad", "labels": "/work/project/data/a.tsv",
                                      "label_key": "cell_type"}
    assert [fixed["datasets"][n]["source"] for n in "bcd"] == ["builtin:pbmc68k_reduced", "https://x.org/c.h5ad",
                                                                "/abs/d.h5ad"]
    assert fixed["datasets"]["d"]["ontology_map"] == "/work/project/config/ontology/d.tsv"
    assert fixed["annotate"]["queries"]["q"]["source"] == "/work/shared/q.h5ad"
    assert fixed["interpret"] == {"libraries": {"GO": "/work/project/sets/go.gmt"}, "marker_table": None}
    assert fixed["encoder"]["transformer"] == {"gene_embedding_init": "/work/project/vectors.txt", "dim": 8}
    assert config["datasets"]["a"]["source"] == "data/a.h5ad"  # the given config is left as it was
