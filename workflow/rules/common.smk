# Names and paths shared by the rules; config values reach rules only through params.


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    split=r"cv[0-9]+",
    method=r"[A-Za-z0-9][A-Za-z0-9_+.-]*",


DATASETS = list(config["datasets"])
METHODS = list(config["methods"])
BASELINE_METHODS = [m for m in METHODS if m in config["baseline"]]
SPLITS = [f"cv{i}" for i in range(1, config["split"]["n_folds"] + 1)]


def prediction_files(wildcards):
    """Every method's predictions on every split."""
    return expand("results/predictions/{method}/{split}.tsv", method=METHODS, split=SPLITS)
