# Helpers shared by the rule files: validated config, paths, input functions.
# Only light imports here: a dry-run must not import torch or vllm.

import json

from confagg import config as cfg
from confagg.config import SMOLLM2, hub_slug, model_kind

try:
    cfg.validate(config, workflow.source_path("../schemas/config.schema.yaml"))
except cfg.ConfigError as e:
    raise WorkflowError(str(e)) from None

OUT = f"results/{config['run_name']}"
LOGS = f"logs/{config['run_name']}"
POOL = "train_pool"  # the data set name of the training pool in paths
BENCHMARKS = list(config["benchmarks"])


wildcard_constraints:
    dataset="|".join([POOL, *BENCHMARKS]),
    seed=r"\d+",
    shard=r"\d+",


def dataset_config(name):
    """The config section describing a data set (the training pool or a benchmark)."""
    return config["training_pool"] if name == POOL else config["benchmarks"][name]


def num_shards(dataset):
    return config["training_pool" if dataset == POOL else "evaluation"]["shards"]


def samples_per_problem(dataset):
    return config["training_pool" if dataset == POOL else "evaluation"]["samples_per_problem"]


def seeds(dataset):
    """The pool is sampled once with the run seed; benchmarks once per evaluation seed."""
    return [config["seed"]] if dataset == POOL else config["evaluation"]["seeds"]


def model_dir(spec):
    """The folder a model spec resolves to (built or downloaded by a rule when not local)."""
    kind = model_kind(spec)
    if kind == "local":
        return spec
    if kind == "smollm2":
        return f"resources/models/{SMOLLM2}"
    return f"resources/models/{hub_slug(spec)}"


def shard_files(step, dataset):
    """Every shard output of one step ("samples" or "scores") for a data set, over its seeds."""
    return [
        f"{OUT}/{step}/{dataset}/seed{seed}/shard{shard}.parquet"
        for seed in seeds(dataset)
        for shard in range(num_shards(dataset))
    ]


def all_scores():
    return [f for ds in [POOL, *BENCHMARKS] for f in shard_files("scores", ds)]


def sample_settings(wildcards):
    """Everything the sample stage needs from config, as one JSON argument."""
    sampling = dict(config["sampling"], n=samples_per_problem(wildcards.dataset))
    return json.dumps(
        {
            "sampling": {k: v for k, v in sampling.items() if k != "problems_per_chunk"},
            "problems_per_chunk": sampling["problems_per_chunk"],
            "engine": config["generator"]["engine"],
            "prompt": config["prompt"],
            "chat_template_kwargs": config["generator"]["chat_template_kwargs"],
        },
        sort_keys=True,
    )
