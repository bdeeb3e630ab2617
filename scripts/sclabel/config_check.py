"""Config names below the top level checked against what exists (the schema cannot list them): each a one-line error.

The Snakefile validates the config against its schema, then ``workflow/rules/common.smk`` calls ``check_names``.
Imports only the standard library, jsonschema and the registry, so the Snakefile runs it without any rule env.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sclabel import registry
from sclabel.errors import InputError

CONFIG = "config"
# keys of the baseline block that are settings of the block itself, not of one baseline
BASELINE_BLOCK_KEYS = ("seed", "embedding")


def refuse_unknown(key: str, given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Refuse the first name of ``given`` that ``known`` lacks, naming the config ``key`` and the known names."""
    known = list(dict.fromkeys(known))
    unknown = [name for name in given if name not in known]
    if unknown:
        raise InputError(CONFIG, key, f"unknown {what} '{unknown[0]}'", f"use one of {', '.join(known) or 'none'}")


def baseline_blocks() -> list[str]:
    """The names a per-baseline settings block under ``baseline`` may have (the registry's ``baseline.<name>``)."""
    return [m.settings.split(".", 1)[1] for m in registry.METHODS.values() if m.settings.startswith("baseline.")]


def check_baseline_blocks(config: Mapping[str, Any]) -> None:
    """Refuse a settings block under ``baseline`` named after no baseline (a typo would run with defaults)."""
    blocks = [key for key in config["baseline"] if key not in BASELINE_BLOCK_KEYS]
    refuse_unknown("baseline", blocks, [*BASELINE_BLOCK_KEYS, *baseline_blocks()], "baseline settings block")


def override_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema of one ``finetune.overrides`` entry: any finetune setting but ``overrides``, typed and bounded."""
    finetune = schema["properties"]["finetune"]
    properties = {k: v for k, v in finetune["properties"].items() if k != "overrides"}
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "$defs": schema.get("$defs", {})}


def check_overrides(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Refuse an override for no finetuned (neural) method, and override settings that are unknown, mistyped or out
    of range."""
    import jsonschema

    overrides = config["finetune"]["overrides"]
    refuse_unknown("finetune.overrides", overrides, registry.names("neural"), "finetuned method")
    validator = jsonschema.Draft202012Validator(override_schema(schema))
    for method, settings in overrides.items():
        for error in sorted(validator.iter_errors(settings), key=lambda e: list(e.absolute_path)):
            where = ".".join(["finetune.overrides", method, *map(str, error.absolute_path)])
            raise InputError(CONFIG, where, error.message,
                             "use the name, type and range of the finetune setting (see config/README.md)")


def check_interpret_methods(config: Mapping[str, Any]) -> None:
    """Refuse an explained method that is unregistered or ranks no genes (it would be skipped silently)."""
    explaining = [name for name in registry.names() if registry.get(name).explains]
    refuse_unknown("interpret.methods", config["interpret"]["methods"] or [], [*explaining, "wilcoxon"],
                   "method that ranks genes")


def check_pretrain_datasets(config: Mapping[str, Any]) -> None:
    """Refuse a pretraining dataset that is not a configured dataset."""
    refuse_unknown("pretrain.datasets", config["pretrain"]["datasets"] or [], config["datasets"], "dataset")


def check_queries(config: Mapping[str, Any]) -> None:
    """Refuse an annotation query named like a training dataset (its files would be the training data's)."""
    clashing = [name for name in config["annotate"]["queries"] if name in config["datasets"]]
    if clashing:
        raise InputError(CONFIG, f"annotate.queries.{clashing[0]}", "has the name of a training dataset, whose "
                         "files it would share", "rename the query")


def check_names(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Every config name below the top level that the schema cannot check: baseline blocks, finetune overrides,
    explained methods, pretraining datasets and query names."""
    check_baseline_blocks(config)
    check_overrides(config, schema)
    check_interpret_methods(config)
    check_pretrain_datasets(config)
    check_queries(config)
