"""The method registry: the one place that names every annotation method and what the workflow needs to run it.

Rules, config checks, the README's methods table and ``methods.tsv`` read it; adding a method is a module with an
``Annotator`` class, one entry here and, when it needs packages no env has, an env file under ``envs/``. This module
imports nothing beyond the standard library, so the Snakefile reads it without any rule env.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

# What each family runs as in the workflow (workflow/rules/*.smk): the rule that trains it on a split
FAMILIES = {
    "baseline": "a classical classifier on the normalised matrix (rule baseline)",
    "control": "a chance-level control (rule baseline)",
    "ensemble": "a combination of other methods' predictions (rule consensus)",
    "embedding_baseline": "a classical classifier on a pretrained encoder's embedding (rule embedding_baseline)",
    "neural": "an encoder + classifier head, optionally pretrained (rules pretrain, finetune)",
    "peer": "a published annotator in its own env (rule peer)",
}
PRETRAINING_TEXT = {
    None: "no pretraining",
    "kmeans": "encoder first pretrained scPretrain-style: K-means pseudo-labels at 3 granularities per dataset, one "
              "head per dataset x granularity, re-clustered on the learned embedding each round (randomized PCA of a "
              "bounded sample and mini-batch K-means on large data)",
    "masked_bins": "encoder first pretrained by masked expression-bin reconstruction (15% of detected genes)",
}
ENCODER_TEXT = {
    "mlp": "scBalance-style classifier (batch norm, ELU, dropout 0.5) on a genes -> 200-d encoder",
    "transformer": "scBERT-style transformer over genes (expression bins + gene-identity embedding, FAVOR+ linear "
                   "attention)",
    "tabnet": "TabNet-style encoder (sequential sparsemax attention masks over genes, shared + step GLU feature "
              "transformers, mask-sparsity penalty) + scBalance-style head",
}
# how each encoder ranks genes per cell type (interpret.py); encoders not listed: gradient x input
ENCODER_EXPLAINS = {"transformer": "attention", "tabnet": "attention_masks"}
# how each method leaves a cell unassigned (methods.tsv's rejection_rule); the peers' own rules are in their entries
THRESHOLD_REJECTION = ("rejection score above the threshold that leaves at most abstention.known_rate (5%) "
                       "of validation cells unassigned")
NEVER_ABSTAINS = "never abstains"
# interpret.attribution: how top genes are ranked; native = each method's own ``explains``, shap = mean SHAP value
ATTRIBUTIONS = ("native", "shap")
PRETRAINING = tuple(p for p in PRETRAINING_TEXT if p)
ENCODERS = tuple(ENCODER_TEXT)


@dataclass(frozen=True)
class Method:
    """One annotation method: its family, the class that implements it and how the workflow runs it."""

    name: str
    family: str
    annotator: str  # "module:Class" of an sclabel.annotator.Annotator subclass
    env: str  # conda env file under envs/, without .yaml
    settings: str  # config block of its settings (dotted), e.g. baseline.logreg or peers.celltypist
    description: str
    threads: str | None = None  # dotted config key of its thread count (None: one thread)
    gpu: bool = False  # whether finetune.gpu puts it on a GPU
    pretrain: str | None = None  # the pretraining its encoder starts from
    encoder: str | None = None  # neural encoder architecture
    explains: str | None = None  # how it ranks genes per cell type (None: it does not)
    at_scale: str = "as at any size"  # what it does on large training sets (methods.tsv)
    package: str = "scikit-learn"  # the package that implements it (methods.tsv gives its version)
    rejection: str = THRESHOLD_REJECTION  # when it leaves a cell unassigned (methods.tsv's rejection_rule)
    fit_cells: str = "train"  # the split's cells it is fitted on
    base: str | None = None  # for a ``<method>@<variant>``: the method it varies (whose settings it starts from)
    variant: str | None = None  # how it varies its base: a ``VARIANT_OF`` key (None: not a variant)

    def row(self) -> dict[str, Any]:
        """The method as a flat table row (methods.tsv; ``rejection`` as ``rejection_rule``)."""
        row = asdict(self)
        row["rejection_rule"] = row.pop("rejection")
        return row


def _baseline(name: str, description: str, family: str = "baseline", explains: str | None = None,
              at_scale: str = "as at any size") -> Method:
    return Method(name, family, "sclabel.baselines:BaselineAnnotator", "sklearn", f"baseline.{name}", description,
                  explains=explains, at_scale=at_scale,
                  rejection=NEVER_ABSTAINS if family == "control" else THRESHOLD_REJECTION)


def _embedding_baseline(name: str, description: str, at_scale: str) -> Method:
    return Method(name, "embedding_baseline", "sclabel.embedding_baselines:EmbeddingBaselineAnnotator", "torch",
                  f"baseline.{name}", description, at_scale=at_scale)


def _neural(pretrain: str | None, encoder: str) -> Method:
    name = f"{pretrain}+{encoder}" if pretrain else encoder
    explains = ENCODER_EXPLAINS.get(encoder, "gradient_x_input")
    return Method(name, "neural", "sclabel.model:CellTypeAnnotator", "torch", "finetune",
                  f"{ENCODER_TEXT[encoder]}, {PRETRAINING_TEXT[pretrain]}", threads="finetune.threads", gpu=True,
                  pretrain=pretrain, encoder=encoder, explains=explains,
                  at_scale="streams mini-batches from the cell store (store.buffer_cells rows in memory)",
                  package="torch", rejection=f"finetune.rejection score (default: cosine distance to the nearest "
                                            f"class centroid in the embedding) {THRESHOLD_REJECTION[16:]}")


PCA_SCALE = "PCA fitted on a stratified sample of baseline.<method>.pca_max_cells cells"
METHODS: dict[str, Method] = {m.name: m for m in [
    _baseline("logreg", "L2 logistic regression on the normalised matrix", explains="coefficients",
              at_scale="mini-batch SGD streamed from the store above baseline.logreg.max_nnz stored values"),
    _baseline("logreg_l1", "L1 logistic regression on the normalised matrix", explains="coefficients",
              at_scale="mini-batch SGD streamed from the store above baseline.logreg_l1.max_nnz stored values"),
    _baseline("knn_pca", "kNN on PCA (50 components) of the training cells", at_scale=PCA_SCALE),
    _baseline("rf_pca", "random forest on PCA of the training cells",
              at_scale=f"{PCA_SCALE}; trees on at most baseline.rf_pca.max_cells cells"),
    _baseline("svm_pca", "calibrated SVM on PCA of the training cells",
              at_scale=f"{PCA_SCALE}; SVM on at most baseline.svm_pca.max_cells cells"),
    _embedding_baseline("knn_embedding", "kNN on the pretrained encoder's embedding (as scPretrain evaluated it)",
                        "embeds every cell by streaming; kNN on all training cells"),
    _embedding_baseline("rf_embedding", "random forest on the pretrained encoder's embedding",
                        "trees on at most baseline.rf_embedding.max_cells cells"),
    _embedding_baseline("svm_embedding", "calibrated SVM on the pretrained encoder's embedding",
                        "SVM on at most baseline.svm_embedding.max_cells cells"),
    _baseline("majority", "predicts the commonest training type (control)", family="control"),
    _baseline("random", "draws types in training proportions (control)", family="control"),
    *[_neural(pretrain, encoder) for pretrain in (None, *PRETRAINING) for encoder in ENCODERS
      if not (pretrain == "masked_bins" and encoder != "transformer")],  # masked bins: transformer tokens only
    Method("celltypist", "peer", "sclabel.peers:CelltypistAnnotator", "celltypist", "peers.celltypist",
           "CellTypist 1.7.1 at its defaults, logistic regression (one-vs-rest, its own solver choice) on scaled log "
           "expression", threads="peers.threads",
           at_scale="CellTypist's large-data mode (mini-batch SGD, no centring) above "
                    "peers.celltypist.large_data_cells", package="celltypist",
           rejection="CellTypist's probability (expit of its score) of every class at or below peers.celltypist."
                     "p_thres (0.5), its 'prob match' rule"),
    Method("singler", "peer", "sclabel.peers:SinglerAnnotator", "singler", "peers.singler",
           "SingleR (BiocPy singler 0.5.0) at its defaults, Spearman correlation to the reference cells over pairwise "
           "marker genes, fine-tuned", threads="peers.threads",
           at_scale="reference aggregated per type (scranpy) above peers.singler.aggregate_cells training cells",
           package="singler",
           rejection="pruned by SingleR's pruneScores: delta from the median below peers.singler.min_diff_med (0) "
                     "or more than peers.singler.nmads (3) MADs below its label's median delta"),
    Method("consensus", "ensemble", "sclabel.consensus:ConsensusAnnotator", "sklearn", "consensus",
           "consensus of the benchmarked methods: probabilities weighted per class by each member's validation "
           "F1^alpha (CAWPE), members' agreement as rejection score (popV)",
           at_scale="combines the members' prediction tables", package="numpy",
           fit_cells="its members' predictions on the validation cells (members fit the training cells)",
           rejection="share of members whose own call (not abstained) differs from the consensus above the "
                     "threshold that leaves at most abstention.known_rate (5%) of validation cells unassigned"),
]}


# A variant ``<method>@<kind>`` runs its base method changed in one respect, with the base's settings (and its
# finetune.overrides), so the two form an ablation: side by side in summary.tsv, paired in variants.tsv.
# ``@top`` runs it on the split's ``features.top_k`` genes chosen by the feature-selection stage (sclabel.features,
# rule select_features): the selected columns of the matrix, as a new matrix, for the baselines on expression and
# the neural methods without pretraining (whose encoders are built over the matrix's genes).
# ``@ens`` trains it as a deep ensemble of ``finetune.ensemble.n_seeds`` networks (CellTypeAnnotator's n_seeds),
# for every neural method; the rule, matrix and pretrained encoder are its base's.
SELECTED = "top"
ENSEMBLE = "ens"
VARIANT_TEXT = {
    SELECTED: "on the split's features.top_k genes ranked by chunked linear models on its training cells",
    ENSEMBLE: "as a deep ensemble: finetune.ensemble.n_seeds (default 5) networks seeded seed, seed + 1, ..., their "
              "calibrated probabilities averaged, their disagreement offered as finetune.rejection ensemble_mi (fit "
              "time ~n_seeds x its base's)",
}
VARIANT_SETTINGS = {SELECTED: "features", ENSEMBLE: "finetune.ensemble"}  # the config block each kind adds


def selectable(method: Method) -> bool:
    """Whether ``method`` has a ``@top`` variant: it reads expression and builds nothing over the genes beforehand."""
    return method.family == "baseline" or (method.family == "neural" and method.pretrain is None)


def ensemblable(method: Method) -> bool:
    """Whether ``method`` has an ``@ens`` variant: it is a neural method (CellTypeAnnotator trains n_seeds members)."""
    return method.family == "neural"


VARIANT_OF: dict[str, Callable[[Method], bool]] = {SELECTED: selectable, ENSEMBLE: ensemblable}


def variant(method: Method, kind: str) -> Method:
    """The ``<method>@<kind>`` variant of ``method``: the same method and settings, changed as ``kind`` says."""
    return replace(method, name=f"{method.name}@{kind}", base=method.name, variant=kind,
                   description=f"{method.description}, {VARIANT_TEXT[kind]}")


METHODS.update({f"{m.name}@{kind}": variant(m, kind) for kind, has in VARIANT_OF.items()
                for m in [*METHODS.values()] if m.variant is None and has(m)})


class UnknownMethod(ValueError):
    """A method name the registry does not know."""


def get(name: str) -> Method:
    """The registered method ``name``; UnknownMethod (one line, with the known names) otherwise."""
    if name not in METHODS:
        raise UnknownMethod(f"unknown method '{name}'. Fix: use one of {', '.join(METHODS)}")
    return METHODS[name]


def base_name(name: str) -> str:
    """The method whose implementation and settings ``name`` uses: itself, or a variant's base."""
    return get(name).base or name


def on_selected_genes(name: str) -> bool:
    """Whether method ``name`` trains and predicts on its split's selected genes (a ``@top`` variant)."""
    return get(name).variant == SELECTED


def finetune_block(finetune: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config's finetune block for neural method ``name``: the shared settings, then its base's overrides (for a
    variant), an ``@ens`` variant's ``ensemble.n_seeds``, then its own overrides; ``overrides`` and ``ensemble``
    themselves left out."""
    overrides = finetune.get("overrides", {})
    ensemble = {"n_seeds": finetune["ensemble"]["n_seeds"]} if get(name).variant == ENSEMBLE else {}
    return {**{key: value for key, value in finetune.items() if key not in ("overrides", "ensemble")},
            **overrides.get(base_name(name), {}), **ensemble, **overrides.get(name, {})}


def names(*families: str) -> list[str]:
    """Registered method names of the given families (all when none given), in registry order."""
    return [m.name for m in METHODS.values() if not families or m.family in families]


def pretraining_pairs(names_: list[str]) -> list[tuple[str, str]]:
    """(pretrained neural method, its counterpart without pretraining: same encoder) for both in ``names_``; variants
    are left out."""
    plain = {get(name).encoder: name for name in names_
             if get(name).family == "neural" and get(name).pretrain is None and get(name).variant is None}
    return [(name, plain[get(name).encoder]) for name in names_
            if get(name).pretrain is not None and get(name).variant is None and get(name).encoder in plain]


def variant_pairs(names_: list[str]) -> list[tuple[str, str]]:
    """(variant, its base) for both in ``names_``."""
    return [(name, get(name).base) for name in names_ if get(name).base in names_]


def setting_value(config: dict[str, Any], dotted: str) -> Any:
    """The config value at a dotted key (None when absent)."""
    value: Any = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def method_rows(names_: list[str], config: dict[str, Any]) -> list[dict[str, Any]]:
    """methods.tsv rows: each method's registry entry and the settings the config gives it (defaults otherwise)."""
    return [{**get(name).row(), "configured_settings": json.dumps(setting_value(config, get(name).settings) or {},
                                                                   sort_keys=True, default=str)}
            for name in names_]


def pinned_version(package: str, env_file: Path) -> str | None:
    """The version an env file pins ``package`` to (``- package=1.2`` or pip's ``- package==1.2``), None if not."""
    pin = re.search(rf"^\s*-\s*{re.escape(package)}\s*==?\s*([^\s#]+)", env_file.read_text(),
                    re.MULTILINE | re.IGNORECASE)
    return pin.group(1) if pin else None


def package_version(method: Method, envs: Path) -> str:
    """The installed version of the method's package; where it is not installed here, the version its env file pins,
    followed by that file's name (``absent`` when neither)."""
    try:
        return metadata.version(method.package)
    except metadata.PackageNotFoundError:
        env_file = envs / f"{method.env}.yaml"
        pinned = pinned_version(method.package, env_file)
        return f"{pinned} (envs/{env_file.name})" if pinned else "absent"


def markdown_table() -> str:
    """The README's methods table: every registered method, its family, what it is, its env, when it abstains."""
    lines = ["| method | family | what it is | env | abstains when |", "|---|---|---|---|---|"]
    lines += [f"| `{m.name}` | {m.family} | {m.description} | `envs/{m.env}.yaml` | {m.rejection} |"
              for m in METHODS.values() if m.variant is None]
    for kind, text in VARIANT_TEXT.items():
        variants = ", ".join(f"`{m.name}`" for m in METHODS.values() if m.variant == kind)
        lines.append(f"| {variants} | as its base | its base method (the name without `@{kind}`) {text} "
                     f"(`{VARIANT_SETTINGS[kind]}`) | as its base | as its base |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())


def annotator_class(name: str) -> type:
    """The Annotator class that implements method ``name`` (imported on demand, in the rule's env)."""
    module, _, attribute = get(name).annotator.partition(":")
    return getattr(import_module(module), attribute)
