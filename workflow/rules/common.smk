# Names and paths shared by the rules; config values reach rules only through params.
import re

from sclabel import registry  # the method registry: every method name, family, env and resource comes from it
from sclabel import split_names as names_of_splits  # split names, label-fraction splits included

EMBEDDING_BASELINES = registry.names("embedding_baseline")
PLAIN_BASELINES = registry.names("baseline", "control")
PEERS = registry.names("peer")
# every method a consensus may combine: all but the ensembles
MEMBER_METHODS = registry.names("baseline", "control", "embedding_baseline", "neural", "peer")


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    split=rf"{names_of_splits.SCORED_SPLIT}|final",
    method=r"[A-Za-z0-9][A-Za-z0-9_+.@-]*",


SMOKE_CAPS = {"epochs": 2, "rounds": 1, "batch_size": 32, "max_cells": 300}
SMOKE_CPU = {"gpu": False, "device": "cpu"}


def smoke_sized(settings):
    """A stage's settings with SMOKE_CAPS applied at every level, on the CPU."""
    capped = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            capped[key] = smoke_sized(value)
        elif key in SMOKE_CAPS:
            capped[key] = SMOKE_CAPS[key] if value is None else min(value, SMOKE_CAPS[key])
        elif key in SMOKE_CPU:
            capped[key] = SMOKE_CPU[key]
        else:
            capped[key] = value
    return capped


if config["smoke"]:
    config["pretrain"] = smoke_sized(config["pretrain"])
    config["finetune"] = smoke_sized(config["finetune"])


DATASETS = list(config["datasets"])
# dataset -> its label -> Cell Ontology id map (config/ontology/*.tsv), for the datasets that have one
ONTOLOGY_MAPS = {name: spec["ontology_map"] for name, spec in config["datasets"].items() if spec.get("ontology_map")}
QUERIES = list(config["annotate"]["queries"])
METHODS = list(config["methods"])
NEURAL_METHODS = [m for m in METHODS if registry.METHODS.get(m) and registry.get(m).family == "neural"]
# by default every benchmarked method but the controls, the ensembles and the variants (ablations of another member)
CONSENSUS_MEMBERS = config["consensus"]["members"] or [
    m
    for m in METHODS
    if registry.METHODS.get(m) and registry.get(m).family not in ("control", "ensemble") and not registry.get(m).variant
]
bad_members = [m for m in CONSENSUS_MEMBERS if registry.METHODS.get(m) is None or registry.get(m).family == "ensemble"]
if bad_members or ("consensus" in METHODS and not set(CONSENSUS_MEMBERS) <= set(METHODS)):
    raise ValueError(
        f"config: consensus.members: {', '.join(sorted(set(bad_members) | (set(CONSENSUS_MEMBERS) - set(METHODS))))} "
        "cannot be combined. Fix: list registered, benchmarked methods (see methods), or leave it empty for all"
    )
# methods whose jobs save a model and validation predictions (the consensus saves only its weights)
TRAINED_METHODS = [m for m in METHODS if registry.METHODS.get(m) and registry.get(m).family != "ensemble"]
ANNOTATE_METHOD = config["annotate"]["method"]
if QUERIES and ANNOTATE_METHOD not in registry.METHODS:
    raise ValueError(
        f"config: annotate.method: '{ANNOTATE_METHOD}' is not a registered method. "
        f"Fix: use one of {', '.join(registry.METHODS)}"
    )


INTERPRET_METHODS = [
    m for m in (config["interpret"]["methods"] or METHODS) if registry.METHODS.get(m) and registry.get(m).explains
] + ["wilcoxon"]
ATTRIBUTIONS = config["interpret"]["attribution"]
unknown_attributions = sorted(set(ATTRIBUTIONS) - set(registry.ATTRIBUTIONS))
if unknown_attributions:
    raise ValueError(
        f"config: interpret.attribution: unknown attribution(s) {', '.join(unknown_attributions)}. "
        f"Fix: use {' or '.join(registry.ATTRIBUTIONS)}"
    )
# the explained methods SHAP ranks (every one with a model: all but wilcoxon)
SHAP_METHODS = [m for m in INTERPRET_METHODS if m in registry.METHODS] if "shap" in ATTRIBUTIONS else []
# every gene ranking written: results/interpret/top_genes/{ranking}.tsv, {method} native (wilcoxon always), {method}.shap
RANKINGS = (INTERPRET_METHODS if "native" in ATTRIBUTIONS else ["wilcoxon"]) + [f"{m}.shap" for m in SHAP_METHODS]


def method_env(method):
    """The conda env file of a registered method (relative to workflow/rules)."""
    return f"../../envs/{registry.get(method).env}.yaml"


def interpretation_outputs():
    """What the interpretation stage adds to the default target, given the config."""
    settings = config["interpret"]
    if not settings["enabled"]:
        return []
    outputs = expand("results/interpret/top_genes/{ranking}.tsv", ranking=RANKINGS)
    if settings["libraries"]:
        outputs += expand("results/interpret/enrichment/{ranking}", ranking=RANKINGS)
    if settings["marker_table"]:
        outputs.append("results/interpret/marker_recall.png")
    if settings["de"]["sample_key"] and settings["de"]["condition_key"]:
        outputs.append("results/interpret/pseudobulk_volcano.png")
    return outputs


def model_for_interpretation(wildcards):
    """The model trained on all labelled cells whose genes are ranked (none for wilcoxon, which ranks the data)."""
    if wildcards.method in registry.METHODS:
        return f"results/models/{wildcards.method}/final"
    return []


def split_names():
    """cv1..cvK, or lodo_<group> for each held-out group."""
    settings = config["split"]
    if settings["scheme"] == "cv":
        return [f"cv{i}" for i in range(1, settings["n_folds"] + 1)]
    if settings["holdout"]:
        return [f"lodo_{group}" for group in settings["holdout"]]
    if settings["lodo_key"] != "dataset":
        raise ValueError(
            "config: split.holdout: leave-one-out by batch needs the batches to hold out. "
            "Fix: list them, e.g. holdout: [3pv1, 3pv2, 5p]"
        )
    return [f"lodo_{name}" for name, spec in config["datasets"].items() if spec.get("label_key")]


# a split.label_fractions sweep: every base split at each label fraction and draw (the base split at fraction 1)
LABEL_SWEEP = bool(config["split"]["label_fractions"])
SPLITS = names_of_splits.sweep_split_names(
    split_names(), config["split"]["label_fractions"], config["split"]["label_draws"]
)


def one_of(names):
    """A wildcard regex matching exactly the given names (never empty)."""
    return "|".join(re.escape(name) for name in names) or "^$"


def dataset_spec(name):
    """A training dataset's or an annotation query's config entry."""
    return config["datasets"].get(name) or config["annotate"]["queries"][name]


def prediction_files(wildcards):
    """Every method's predictions on every split."""
    return expand("results/predictions/{method}/{split}.tsv", method=METHODS, split=SPLITS)


def pretrained_encoder(wildcards):
    """The pretrained encoder a neural method starts from (none without pretraining)."""
    method = registry.get(wildcards.method)
    if method.pretrain is None:
        return []
    return pretrained_file(f"{method.pretrain}+{method.encoder}")(wildcards)


def pretrained_file(pretraining):
    """The encoder a ``{pretrain}+{encoder}`` pretraining wrote for the job's split: its base split's, pretrained once
    for all its label fractions on every cell but its test cells."""

    def encoder(wildcards):
        split = names_of_splits.base_split(wildcards.get("split", "final"))
        return f"results/pretrain/{pretraining}/{split}/encoder.pt"

    return encoder


def encoder_settings(wildcards):
    """The encoder block of the method's encoder architecture."""
    return config["encoder"][registry.get(wildcards.method).encoder]


def finetune_settings(method):
    """The finetune block for the method (registry.finetune_block: a variant's base's overrides, an @ens variant's
    ensemble.n_seeds, its own overrides), on the stage's device."""
    return {**registry.finetune_block(config["finetune"], method), "device": torch_device("finetune")}


def method_matrix(wildcards):
    """The matrix a method trains and predicts on: its split's selected genes for a @top variant, else all genes."""
    if registry.on_selected_genes(wildcards.method):
        return f"results/features/{wildcards.get('split', 'final')}.h5ad"
    return "results/data/combined.h5ad"


def gpu_resource(stage):
    """1 GPU for the stage when its config asks for one, else 0 (for --resources gpu=N and SLURM)."""
    return int(config[stage]["gpu"])


def torch_device(stage):
    """Device a torch stage runs on: cuda when the config asks for a GPU, else its device setting."""
    return "cuda" if config[stage]["gpu"] else config[stage]["device"]


def env_of_method(wildcards):
    """The conda env file of the job's method, for a rule run by several methods."""
    return method_env(wildcards.method)


def consensus_inputs(folder):
    """The members' files under ``folder`` (validation, predictions or models) for the job's split."""

    def inputs(wildcards):
        split = wildcards.get("split", "final")
        suffix = "" if folder == "models" else ".tsv"
        return expand(f"results/{folder}/{{method}}/{split}{suffix}", method=CONSENSUS_MEMBERS)

    return inputs


def annotate_member_tables(wildcards):
    """Per query, the consensus members' predictions on it (only when the consensus annotates)."""
    if ANNOTATE_METHOD != "consensus":
        return []
    return [f"results/annotate/members/{method}/{query}.tsv" for query in QUERIES for method in CONSENSUS_MEMBERS]
