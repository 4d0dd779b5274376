# Helpers shared by the rules files - validated config, paths, input functions.
# Only light imports here: a dry-run must not import torch or vllm.

import copy
import os
from pathlib import Path

from confagg import config as cfg
from confagg import orchestrator
from confagg import settings as rule_settings
from confagg.config import SMOLLM2, hub_model, hub_slug, model_kind
from confagg.settings import (
    POOL,
    num_shards,
    run_key,
    samples_per_problem,
    sampling,
    trained_runs,
)

# Snakemake 9.27 does not pass --replace-workflow-config on to the jobs it submits to a cluster
# (they would merge the run's config file over config/config.yaml again): the main process marks
# the run in the environment the jobs inherit, and a job rebuilds its config from the
# command-line config files and --config alone.
if workflow.config_settings.replace_workflow_config:
    os.environ.update(CONFAGG_REPLACE_WORKFLOW_CONFIG="1")
elif (workflow.remote_exec or workflow.subprocess_exec) and os.environ.get(
    "CONFAGG_REPLACE_WORKFLOW_CONFIG"
) == "1":
    config.clear()
    config.update(copy.deepcopy(workflow.config_settings.overwrite_config))

# Jobs run `python -m confagg.<stage>` in the jobs' environment (torch, vLLM, TRL), which is not
# Snakemake's own (setup.sh makes both): its bin folder goes first on PATH. It is
# $CONFAGG_JOBS_ENV when set, else the checkout's .venv, else the environment running Snakemake.
# A rule's conda env still comes first. It is set before validation, which reads the jobs' TRL.
try:
    JOBS_BIN = orchestrator.jobs_bin(workflow.basedir)
except orchestrator.OrchestratorError as e:
    raise WorkflowError(str(e)) from None
os.environ.update(PATH=os.pathsep.join([str(JOBS_BIN), os.environ.get("PATH", "")]))

try:
    cfg.validate(config, workflow.source_path("../schemas/config.schema.yaml"))
except cfg.ConfigError as e:
    raise WorkflowError(str(e)) from None

try:
    # (validation filled in the aggregator's model: null is the generator's, as in AggLM)
    # keys that are each valid but cannot work together: stop here, before any job
    cfg.check_consistency(config)
except cfg.ConfigError as e:
    raise WorkflowError(str(e)) from None

# Plugin 2.6-2.8 reads a job cancelled with scancel ("CANCELLED by <uid>" in sacct) as running and
# waits for it forever: it reads it as CANCELLED, a failed job, instead.
if not (workflow.remote_exec or workflow.subprocess_exec):
    orchestrator.read_cancelled_slurm_jobs_as_failed()

# The GPU jobs' conda environments: envs/<name>.yaml (CUDA 13) or envs/<name>-cu12.yaml
CUDA_ENV = "-cu12" if config.get("cuda") == 12 else ""
OUT = f"results/{config['run_name']}"
LOGS = f"logs/{config['run_name']}"
BENCHMARKS = list(config["benchmarks"])


wildcard_constraints:
    dataset="|".join([POOL, *BENCHMARKS]),
    role="generator|aggregator",
    # owner--name[@revision] (confagg.config.hub_slug)
    hub_model=r"[A-Za-z0-9][\w.-]*--[\w.-]+(@[^/]+)?",
    benchmark="|".join(BENCHMARKS),
    seed=r"\d+",
    shard=r"\d+",


def seeds(dataset):
    """The pool is sampled once with the run seed; benchmarks once per evaluation seed."""
    return [config["seed"]] if dataset == POOL else config["evaluation"]["seeds"]


def stage_settings(rule):
    """Params function: the ``--settings`` JSON of ``rule``'s stage for a job (the one
    translation from config to settings, ``confagg.settings.for_rule``)."""

    def settings_json(wildcards):
        settings = rule_settings.for_rule(config, rule, **dict(wildcards.items()))
        return rule_settings.to_json(settings)

    return settings_json


def model_dir(role):
    """The folder the model of ``role`` ("generator" or "aggregator") resolves to (built or
    downloaded by a job of its own when not local). A hub model's folder names its revision: a rerun with
    another revision downloads into a folder of its own (and reruns what read the old one)
    instead of replacing weights that other runs or configs may still use."""
    spec, revision = config[role]["model"], config[role]["revision"]
    kind = model_kind(spec)
    if kind == "local":
        return spec
    if kind == "smollm2":
        return f"resources/models/{SMOLLM2}"
    return f"resources/models/{hub_slug(spec, revision)}"


def revision_args(wildcards):
    """Params function: ``hf download``'s revision option for a hub model folder (none: the
    hub's default branch)."""
    _, revision = hub_model(wildcards.hub_model)
    return [] if revision is None else ["--revision", revision]


def shard_files(step, dataset):
    """Every shard output of one step ("samples" or "scores") for a data set, over its seeds."""
    return [
        f"{OUT}/{step}/{dataset}/seed{seed}/shard{shard}.parquet"
        for seed in seeds(dataset)
        for shard in range(num_shards(config, dataset))
    ]


def scores_rows(paths):
    """About how many samples some scores tables hold, from their size on disk: four float64
    metrics a row do not compress (20-35 bytes a row), whatever the length of the texts."""
    return sum(os.path.getsize(p) for p in paths) // 20


def accelerate_args(wildcards, threads, resources):
    """`accelerate launch` options for a job's gpu resource: one CPU process when it is 0, else
    one process per GPU (config/accelerate/*.yaml hold the rest)."""
    gpus = int(resources.gpu)
    if gpus == 0:
        return (
            "--config_file config/accelerate/cpu.yaml --num_processes 1"
            f" --num_cpu_threads_per_process {threads}"
        )
    multi = " --multi_gpu" if gpus > 1 else ""
    return f"--config_file config/accelerate/gpu.yaml --num_processes {gpus}{multi}"


# --- evaluation ---


def eval_shards(step):
    """Input function: every shard of one step for the job's benchmark x seed."""

    def files(wildcards):
        return [
            f"{OUT}/{step}/{wildcards.benchmark}/seed{wildcards.seed}/shard{shard}.parquet"
            for shard in range(config["evaluation"]["shards"])
        ]

    return files


def train_dir(variant, train_seed):
    """The folder of one GRPO run: results/<run>/train/<variant>/seed<s>/."""
    return f"{OUT}/train/{run_key(variant, train_seed)}"


def trained_aggregators():
    """``{<variant>/seed<s>: what it runs on}`` for the training runs that evaluated variants
    use (one per training variant and training seed): the adapter (per-request LoRA) or the
    merged model. Variants that only prompt the base model need no training run."""
    kind = "merged" if config["evaluation"]["trained_model"] == "merged" else "adapter"
    return {run_key(v, s): f"{train_dir(v, s)}/{kind}" for v, s in trained_runs(config)}


def _check_aggregators():
    """Every evaluated variant names a training run that exists."""
    runs = config["training"]["variants"]
    for v in config["evaluation"]["aggregators"]:
        if v["trained"] is not None and v["trained"] not in runs:
            raise WorkflowError(
                f"evaluation.aggregators: {v['name']!r} uses training variant {v['trained']!r}, "
                f"not one of training.variants ({', '.join(runs)})"
            )


_check_aggregators()
