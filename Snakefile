# sclabel: train, benchmark and explain cell-type annotators for single-cell RNA-seq.
import os
import sys

from snakemake.utils import min_version

# this checkout's root: the Snakefile's folder, also when another workflow uses this one as a module
SCLABEL_ROOT = str(workflow.current_basedir)
sys.path.insert(0, f"{SCLABEL_ROOT}/scripts")
from sclabel.config_check import check_config
from sclabel.job_env import put_first_on_pythonpath
from sclabel.run_folder import run_folder, with_absolute_inputs

min_version("9.0")

# rule scripts import this checkout's sclabel too, never an installed copy of another version
put_first_on_pythonpath(f"{SCLABEL_ROOT}/scripts")


# the bundled default; a --configfile given on the command line replaces it rather than being merged into it
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# the schema (defaults filled in), then every name below the top level; a problem ends the run in one line
check_config(config, f"{SCLABEL_ROOT}/workflow/schemas/config.schema.yaml")


# a named run works in its own folder, runs/<run>/, so sweeps with different configs keep their results side by side;
# the config's input paths are made absolute first (--directory, when given, wins over the run's folder)
if config["run"]:
    config.update(with_absolute_inputs(config, os.getcwd()))

    workdir: run_folder(config["run"])


# the image `snakemake --containerize > Dockerfile` describes, once built and pushed (see README: containers)
if config["container"]:

    containerized: config["container"]


# the report's landing page: what this workflow does and what this config ran
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/peers.smk"
include: "workflow/rules/consensus.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/annotate.smk"
include: "workflow/rules/interpret.smk"


rule all:
    default_target: True
    input:
        "results/benchmark/summary.tsv",
        "results/benchmark/methods.tsv",
        "results/benchmark/selections.tsv",
        "results/report/run.html",
        "results/report/summary.html",
        "results/report/kappa.png",
        "results/report/per_class_f1.png",
        expand("results/report/confusion/{method}.png", method=METHODS),
        "results/report/label_efficiency.png" if LABEL_SWEEP else [],
        "results/annotate/summary.tsv" if QUERIES else [],
        expand("results/annotate/{query}.summary.html", query=QUERIES),
        interpretation_outputs(),
