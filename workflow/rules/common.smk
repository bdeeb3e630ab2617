# Names and paths shared by the rules; config values reach rules only through params.
import re

NEURAL_METHOD = re.compile(r"^((kmeans|masked_bins)\+)?(mlp|transformer)$")


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    split=r"cv[0-9]+|final",
    method=r"[A-Za-z0-9][A-Za-z0-9_+.-]*",


DATASETS = list(config["datasets"])
QUERIES = list(config["annotate"]["queries"])
METHODS = list(config["methods"])
BASELINE_METHODS = [m for m in METHODS if m in config["baseline"]]
NEURAL_METHODS = [m for m in METHODS if NEURAL_METHOD.match(m)]
unknown = sorted(set(METHODS) - set(BASELINE_METHODS) - set(NEURAL_METHODS))
if unknown:
    raise ValueError(
        f"config: methods: unknown method(s) {', '.join(unknown)}. Fix: use logreg, mlp, transformer, "
        "kmeans+mlp, kmeans+transformer or masked_bins+transformer"
    )
if QUERIES and config["annotate"]["method"] not in NEURAL_METHODS:
    raise ValueError(
        f"config: annotate.method: '{config['annotate']['method']}' is not among the neural methods "
        f"in methods ({', '.join(NEURAL_METHODS) or 'none'}). Fix: add it to methods or pick one of those"
    )
SPLITS = [f"cv{i}" for i in range(1, config["split"]["n_folds"] + 1)]


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
    pretrain, encoder = NEURAL_METHOD.match(wildcards.method).group(2, 3)
    if pretrain is None:
        return []
    return f"results/pretrain/{pretrain}+{encoder}/{wildcards.split}/encoder.pt"


def encoder_settings(wildcards):
    """The encoder block of the method's encoder architecture."""
    return config["encoder"][NEURAL_METHOD.match(wildcards.method).group(3)]


def gpu_resource(stage):
    """1 GPU for the stage when its config asks for one, else 0 (for --resources gpu=N and SLURM)."""
    return int(config[stage]["gpu"])


def torch_device(stage):
    """Device a torch stage runs on: cuda when the config asks for a GPU, else its device setting."""
    return "cuda" if config[stage]["gpu"] else config[stage]["device"]
