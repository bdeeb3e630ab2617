"""The config checked before any job: its schema, then the names below the top level against what exists (the schema
cannot list them). Every problem is one line naming the key; ``check_config`` ends the run with it (exit status 1).

The Snakefile calls ``check_config``. Imports only the standard library, jsonschema, yaml, the registry and (in
``check_config``) Snakemake's validator, so the Snakefile runs it without any rule env.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from sclabel import registry
from sclabel.errors import InputError

CONFIG = "config"
MAX_PROBLEM_CHARS = 300  # a schema message quoting a large value is cut to this
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


def check_methods(config: Mapping[str, Any]) -> None:
    """Refuse an unregistered method, and an embedding baseline encoder that is no pretrained neural method."""
    refuse_unknown("methods", config["methods"], registry.METHODS, "method")
    pretrained = [name for name in registry.names("neural") if registry.get(name).pretrain
                  and not registry.get(name).variant]
    refuse_unknown("baseline.embedding", [config["baseline"]["embedding"]], pretrained, "pretrained neural method")


def check_names(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Every config name below the top level that the schema cannot check: methods, baseline blocks, finetune
    overrides, explained methods, pretraining datasets and query names."""
    check_methods(config)
    check_baseline_blocks(config)
    check_overrides(config, schema)
    check_interpret_methods(config)
    check_pretrain_datasets(config)
    check_queries(config)


def schema_error_line(error: Any) -> str:
    """A jsonschema ValidationError as one line: the dotted key, what is wrong with its value, and what is allowed."""
    import jsonschema

    best = jsonschema.exceptions.best_match([error])  # descends into oneOf/anyOf to the error that matters
    where = ".".join(map(str, best.absolute_path)) or "(top level)"
    problem = best.message if len(best.message) <= MAX_PROBLEM_CHARS else best.message[:MAX_PROBLEM_CHARS] + "..."
    if best.validator == "additionalProperties":
        allowed = f"use one of {', '.join(best.schema.get('properties', {})) or 'no keys'}"
    elif best.validator == "enum":
        allowed = f"use one of {', '.join(map(str, best.validator_value))}"
    else:
        allowed = f"give {where} the type and range config/README.md lists for it"
    return str(InputError(CONFIG, where, problem, allowed))


def check_config(config: dict[str, Any], schema_file: str | Path) -> None:
    """Validate ``config`` against the schema (filling in defaults), then check its names; the first problem ends
    the run with its one line on stderr and exit status 1, instead of a schema dump or a traceback."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(schema_file))
        check_names(config, yaml.safe_load(Path(schema_file).read_text()))
    except WorkflowError as error:
        if not isinstance(error.__context__, jsonschema.ValidationError):  # Snakemake wraps the schema's error
            raise
        sys.exit(schema_error_line(error.__context__))
    except InputError as error:
        sys.exit(str(error))
