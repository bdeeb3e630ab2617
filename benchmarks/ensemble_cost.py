"""Cost and gain of deep ensembles (finetune.n_seeds) and of training augmentation (finetune.augment) for mlp.

Usage: nice -n 10 python benchmarks/ensemble_cost.py [--threads 1] [--seeds 3] [--augment 0.5] [--device cpu]
Data: ../shared/data/pbmc_zheng_sorted.h5ad (FACS-sorted PBMCs, counts → log1p CP10k), one stratified
60/15/25 train / validation / test split. For augment off and on, mlp is trained at the finetune defaults with
n_seeds 1 and with n_seeds ``--seeds`` (members seeded 0, 1, ...; the first member is the n_seeds 1 model); each line
gives the wall and CPU time of training (early stopping and calibration included; the CPU time is steadier
on a shared machine) and the test macro F1 (and accuracy) of
the model, and for an ensemble the test macro F1 of each member alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"
sys.path.insert(0, str(REPO_ROOT / "scripts"))


def load_split():
    """Zheng sorted PBMCs as log1p CP10k and a stratified (train, validation, test) split of row positions."""
    import anndata as ad
    import numpy as np
    import scanpy as sc
    from sklearn.model_selection import train_test_split

    adata = ad.read_h5ad(SHARED / "pbmc_zheng_sorted.h5ad")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    y = adata.obs["cell_type"].astype(str).to_numpy()
    train, test = train_test_split(np.arange(adata.n_obs), test_size=0.25, stratify=y, random_state=0)
    train, val = train_test_split(train, test_size=0.2, stratify=y[train], random_state=0)
    return adata, y, (train, val, test)


def run(adata, y, parts, n_seeds: int, augment: float, device: str) -> dict:
    """Train one mlp model; its wall time, per-member times and test scores."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    from sclabel.model import CellTypeAnnotator
    from sclabel.nn.finetune import FinetuneSettings

    train, val, test = parts
    model = CellTypeAnnotator(list(adata.var_names), sorted(set(y[train])), "mlp",
                              config={"finetune": {"n_seeds": n_seeds}})
    started, cpu_started = time.perf_counter(), time.process_time()
    model.train(adata.X[train], y[train], adata.X[val], y[val], FinetuneSettings(augment=augment), seed=0,
                device=device, progress=False)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    members = model.member_probabilities(adata.X[test])
    truth, classes = y[test], np.asarray(model.labels)
    predicted = classes[members.mean(axis=1).argmax(axis=1)]
    member_f1 = [f1_score(truth, classes[p.argmax(axis=1)], average="macro") for p in members.transpose(1, 0, 2)]
    return {"n_seeds": n_seeds, "augment": augment, "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1),
            "member_seconds": [record["seconds"] for record in model.training["members"]],
            "test_macro_f1": round(f1_score(truth, predicted, average="macro"), 4),
            "test_accuracy": round(accuracy_score(truth, predicted), 4),
            "member_test_macro_f1": [round(value, 4) for value in member_f1],
            "best_epochs": [record["best_epoch"] for record in model.training["members"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3, help="members of the ensemble compared with one network")
    parser.add_argument("--augment", type=float, default=0.5, help="augmentation probability of the 'on' runs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    adata, y, parts = load_split()
    print(f"pbmc_zheng_sorted: {adata.n_obs} cells, {adata.n_vars} genes; train / val / test "
          f"{', '.join(str(len(part)) for part in parts)}; {args.threads} thread(s), {args.device}", flush=True)
    for augment in (0.0, args.augment):
        for n_seeds in (1, args.seeds):
            print(json.dumps(run(adata, y, parts, n_seeds, augment, args.device)), flush=True)


if __name__ == "__main__":
    main()
