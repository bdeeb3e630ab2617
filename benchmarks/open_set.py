"""Novel-cell detection of the neural models' rejection scores on a leave-one-dataset-out sweep.

Usage: python benchmarks/open_set.py [--configfile config/bench_pancreas_lodo.yaml] [--methods mlp kmeans+mlp]
       [--seeds 0 1 2] [--keep DIR] [--output open_set.tsv]
The workflow itself (Snakemake, in a fresh folder or DIR) harmonises the datasets, builds the splits and trains each
method's model per LODO split, exactly as the benchmark does (train cells, early stopping and temperature on the
validation cells). Each saved model then scores its split's validation and test cells with every
``finetune.rejection`` option. A test cell is novel when its type is absent from the model's classes. Per option:
novel AUROC (threshold-free), and at the operating threshold, the 95th percentile of the score on the split's
validation cells (known-cell abstention 5% there), the novel recall and the abstention on known test cells; plus the
accuracy of the argmax label on known test cells (the same for every option). With several seeds the models are
retrained (pretraining and fine-tuning) per seed on the same splits; the summary averages seeds and the splits that
have novel cells, and gives the known-cell abstention over every split too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score

from sclabel import splits
from sclabel.annotator import load_annotator
from sclabel.model import CellTypeAnnotator
from workflow_time import absolute_sources

REPO_ROOT = Path(__file__).resolve().parents[1]
KNOWN_ABSTENTION = 0.05  # the operating threshold keeps this fraction of validation cells above it


def run_snakemake(workdir: Path, configfile: Path, targets: list[str]) -> None:
    """Build ``targets`` with the workflow, 2 cores."""
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--directory",
                    str(workdir), "--configfile", str(configfile), "--cores", "2", "--quiet", "all", "--", *targets],
                   check=True)


def prepare(configfile: Path, methods: list[str], seed: int, workdir: Path) -> list[str]:
    """Train ``methods`` (pretraining and fine-tuning seeded with ``seed``) on every LODO split in ``workdir``;
    returns the split names."""
    copy = absolute_sources(configfile, workdir)
    config = yaml.safe_load(copy.read_text())
    config.update(methods=methods, interpret={"enabled": False})
    for stage in ("pretrain", "finetune"):
        config.setdefault(stage, {})["seed"] = seed
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    run_snakemake(workdir, copy, ["results/splits/splits.tsv"])
    names = [c for c in pd.read_csv(workdir / "results/splits/splits.tsv", sep="\t", nrows=0).columns
             if c.startswith(splits.lodo_split_name(""))]
    run_snakemake(workdir, copy, [f"results/models/{m}/{s}" for m in methods for s in names])
    return names


def option_scores(model: CellTypeAnnotator, X_val: object, X_test: object, novel: np.ndarray) -> list[dict]:
    """Novel AUROC, novel recall and known abstention at the validation threshold for each rejection option."""
    rows = []
    for option in model.rejection_options:
        threshold = np.quantile(model.rejection_score(X_val, option), 1.0 - KNOWN_ABSTENTION)
        score = model.rejection_score(X_test, option)
        rejected = score > threshold
        rows.append({"option": option,
                     "novel_auroc": roc_auc_score(novel, score) if 0 < novel.sum() < len(novel) else np.nan,
                     "novel_recall": rejected[novel].mean() if novel.any() else np.nan,
                     "known_abstention": rejected[~novel].mean()})
    return rows


def evaluate_split(workdir: Path, adata: ad.AnnData, method: str, split: str) -> pd.DataFrame:
    """The option table of one method's model on one split."""
    model = load_annotator(workdir / f"results/models/{method}/{split}")
    roles = splits.read_split(str(workdir / "results/splits/splits.tsv"), split).reindex(adata.obs_names)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    val = np.flatnonzero((roles == splits.VAL).to_numpy() & np.isin(labels, model.labels))
    test = np.flatnonzero((roles == splits.TEST).to_numpy())
    novel = ~np.isin(labels[test], model.labels)
    predicted, _ = model.predict(adata.X[test])
    table = pd.DataFrame(option_scores(model, adata.X[val], adata.X[test], novel))
    return table.assign(method=method, split=split, n_novel=int(novel.sum()), n_known=int((~novel).sum()),
                        known_accuracy=float((predicted[~novel] == labels[test][~novel]).mean()),
                        temperature=model.temperature)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and option: means over seeds and the splits with novel cells, and known abstention over all."""
    with_novel = table[table["n_novel"] > 0].groupby(["method", "option"])
    return with_novel[["novel_auroc", "novel_recall", "known_abstention", "known_accuracy"]].mean().join(
        table.groupby(["method", "option"])["known_abstention"].mean().rename("known_abstention_all_splits"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=REPO_ROOT / "config" / "bench_pancreas_lodo.yaml")
    parser.add_argument("--methods", nargs="+", default=["mlp", "kmeans+mlp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="pretraining and fine-tuning seeds")
    parser.add_argument("--keep", type=Path, help="run the workflow in this folder and keep its results")
    parser.add_argument("--output", type=Path, help="write the per-split table here (TSV)")
    args = parser.parse_args()
    started = time.perf_counter()
    tables = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.keep or Path(scratch)
        for seed in args.seeds:  # a new seed changes the rules' params: Snakemake retrains in the same folder
            names = prepare(args.configfile, args.methods, seed, workdir)
            adata = ad.read_h5ad(workdir / "results/data/combined.h5ad")
            tables += [evaluate_split(workdir, adata, m, s).assign(seed=seed) for m in args.methods for s in names]
    columns = ["method", "split", "seed", "option", "novel_auroc", "novel_recall", "known_abstention",
               "known_accuracy", "temperature", "n_novel", "n_known"]
    table = pd.concat(tables)[columns]
    if args.output:
        table.to_csv(args.output, sep="\t", index=False)
    print(table.to_string(index=False, float_format="%.3f"))
    print(f"\nmean over seeds {args.seeds} and the splits with novel cells:")
    print(summary(table).to_string(float_format="%.3f"))
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
