"""Fit + predict wall time of sclabel's neural methods next to CellTypist and L2 logistic regression, per split.

Usage: python benchmarks/peer_speed.py --workdir DIR --configfile config/bench_symphony_lodo.yaml [--methods mlp]
DIR holds a finished run of that config (python benchmarks/workflow_time.py --configfile ... --keep DIR). Each
method's stage function (read the matrix, fit on train + validation cells, predict the test cells, write the table)
runs in this one process on the same split files, so imports and process start-up are left out for all alike; the
neural methods reuse the settings their workflow models recorded. Pretraining is not part of a fine-tuning job's
time: it is reported separately, from Snakemake's benchmark files of the pretrain jobs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import yaml
from snakemake.utils import validate

from sclabel import training
from sclabel.annotator import RunContext
from sclabel.method_stage import method_stage
from sclabel.peers import import_peer

REPO_ROOT = Path(__file__).resolve().parents[1]


def seconds(run: Callable[[], None]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def neural_run(workdir: Path, config: dict, method: str, split: str, out: Path) -> Callable[[], None]:
    """Fine-tune ``method`` on ``split`` with the settings its workflow model recorded (from its pretrained encoder)."""
    recorded = json.loads((workdir / f"results/models/{method}/{split}/model.json").read_text())
    pretrain, encoder = training.parse_method(method)
    pretrained = workdir / f"results/pretrain/{pretrain}+{encoder}/{split}/encoder.pt" if pretrain else None
    return lambda: training.finetune_stage(
        method, config["encoder"][encoder], recorded["config"]["finetune"], recorded["preprocessing"],
        str(workdir / "results/data/combined.h5ad"), str(workdir / "results/splits/splits.tsv"), split,
        str(pretrained) if pretrained else None, str(out / "checkpoints"), str(out / "model"), str(out / "pred.tsv"))


def pretrain_seconds(workdir: Path, method: str, split: str) -> float:
    """Snakemake's measured wall time of the split's pretraining job (0 without pretraining)."""
    pretrain, encoder = training.parse_method(method)
    if pretrain is None:
        return 0.0
    return float(pd.read_csv(workdir / f"results/benchmarks/pretrain/{pretrain}+{encoder}/{split}.tsv", sep="\t")["s"][0])


def time_split(workdir: Path, config: dict, split: str, methods: list[str], threads: int) -> dict[str, float]:
    """Seconds per method on one split."""
    h5ad, splits_file = str(workdir / "results/data/combined.h5ad"), str(workdir / "results/splits/splits.tsv")
    row: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        row["logreg"] = seconds(lambda: method_stage(
            "logreg", config["baseline"].get("logreg", {}), config["baseline"]["seed"], h5ad, splits_file, split,
            str(out / "logreg_model"), str(out / "logreg.tsv")))
        context = RunContext(threads=threads, target_sum=config["qc"]["target_sum"])
        row["celltypist"] = seconds(lambda: method_stage(
            "celltypist", config["peers"]["celltypist"], config["peers"]["seed"], h5ad, splits_file, split,
            str(out / "celltypist"), str(out / "celltypist.tsv"), context))
        for method in methods:
            row[method] = seconds(neural_run(workdir, config, method, split, out / method.replace("+", "_")))
            row[f"{method} pretrain"] = pretrain_seconds(workdir, method, split)
    return row


def warm_up() -> None:
    """Pay the one-time imports (torch's optimiser machinery, CellTypist) before anything is timed."""
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    import_peer("celltypist")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--configfile", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["mlp", "kmeans+mlp"])
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for the network and CellTypist (the workflow's default finetune.threads is 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warm_up()
    config = yaml.safe_load(args.configfile.read_text())
    validate(config, str(REPO_ROOT / "workflow/schemas/config.schema.yaml"))  # fills in the defaults
    roles = pd.read_csv(args.workdir / "results/splits/splits.tsv", sep="\t", index_col=0)
    split_names = [split for split in roles.columns if (roles[split] == "test").any()]  # not "final"
    table = pd.DataFrame({split: time_split(args.workdir, config, split, args.methods, args.threads) for split in split_names}).T
    table.loc["mean"] = table.mean()
    for method in args.methods:
        table[f"{method} / celltypist"] = table[method] / table["celltypist"]
        table[f"{method} / logreg"] = table[method] / table["logreg"]
    print(f"{args.configfile.name}: fit + predict seconds per split ({args.threads} thread(s))")
    print(table.round(2).to_string())


if __name__ == "__main__":
    main()
