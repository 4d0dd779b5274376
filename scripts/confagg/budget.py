"""The bill of a run before it runs: per rule, its jobs, generated tokens, device-hours, wall
time per job against the rule's runtime, and disk, from the config alone (core: pure arithmetic).

The job counts follow the rule files (workflow/rules/*.smk): one sample/score/grade job per data
set x seed x shard, one aggregate/evaluate job per benchmark x seed, one training job per
variant. Tokens are generated tokens: an upper bound (every text at its length limit) and an
expected figure (a mean length: measured on the run's own samples where it has some, else
``plan.expected_length`` x the limit). Hours are expected tokens over a configured throughput
(``plan.*_tokens_per_s``), so they are as good as that figure: the defaults are estimates for
Qwen3-1.7B on one H100-class GPU; measure yours and set them. ``confagg.plan`` prints the table;
``confagg.config.check_budget`` refuses at start a job that cannot fit its runtime.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

POOL = "train_pool"  # (confagg.settings.POOL; core cannot import it)

# Known sizes of the hub data sets the configs name (rows of the split read), so that a plan
# needs no download; a prepared run counts its problem file instead.
KNOWN_SIZES = {
    "agentica-org/DeepScaleR-Preview-Dataset": 40315,
    "HuggingFaceH4/aime_2024": 30,
    "MathArena/aime_2025": 30,
    "MathArena/hmmt_feb_2024": 30,
    "MathArena/hmmt_feb_2025": 30,
}

# Estimates of bytes on disk (zstd parquet): a generated token's text (~4 characters, ~1.5
# bytes compressed) and its float16 confidence; a scores row (4 float64 metrics + keys); a
# grades row (verdict, status, answer); an aggregator prompt token in the curated sets.
SAMPLE_BYTES_PER_TOKEN = 3.5
TEXT_BYTES_PER_TOKEN = 1.5
SCORES_BYTES_PER_ROW = 40
GRADES_BYTES_PER_ROW = 60
# Prefill is far faster than decoding: aggregator prompts (up to 16k tokens each) are charged
# at this many times the generation throughput (estimate).
PREFILL_SPEEDUP = 10
# Rules whose jobs resume after a time limit (sample parts, training checkpoints): their work
# may span every attempt. Other jobs must fit one runtime.
RESUMABLE = {"sample_shard", "train_aggregator"}


@dataclass
class Row:
    """One line of the plan: a rule (or a rule on one family of data sets)."""

    rule: str
    jobs: int  # left to do
    jobs_total: int
    device: str  # "GPU" or "CPU": what the hours are hours of
    devices_per_job: int = 0
    tokens_max: int = 0  # generated tokens of the jobs left, every text at its limit
    tokens_expected: int = 0
    hours: float = 0.0  # expected device-hours of the jobs left (GPU rules only)
    hours_per_job: float = 0.0  # expected wall time of the largest job
    runtime_h: float | None = None  # the rule's runtime (the profile's, else the rule's)
    disk_bytes: float = 0.0  # what the jobs left write
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Inputs:
    """What the plan reads besides the config."""

    problems: Mapping[str, int | None]  # problems per data set (None: unknown)
    # mean generated tokens per sample where measured ({"train_pool": ..., "benchmarks": ...})
    measured: Mapping[str, float] = field(default_factory=dict)
    runtimes_h: Mapping[str, float] = field(default_factory=dict)  # rule -> runtime, hours
    attempts: int = 1  # 1 + the profile's retries
    done: Callable[[str], bool] = lambda path: False  # an output exists (counts as done)
    adapter_bytes: float = 0.0  # one LoRA adapter on disk (float32), where the model is known


def problems_of(section: Mapping, counted: int | None, override: int | None) -> int | None:
    """A data set's problem count: the plan's override, the prepared file's count, the demo
    generator's n or the known size of a hub split, capped by its ``limit``."""
    if override is not None:
        return override
    n = counted
    source = section["source"]
    if n is None and "demo" in source:
        n = source["demo"].get("n")
    if n is None and "hub" in source:
        n = KNOWN_SIZES.get(source["hub"])
    limit = section.get("limit")
    return n if n is None or limit is None else min(n, limit)


def training_completions(config: Mapping, pool: int) -> tuple[int, int]:
    """(optimizer steps, completions per step) of one variant, as confagg.train.plan counts
    them; without max_steps from an upper bound on the sets (every problem's s sets of the
    ``pool`` problems, less the validation share)."""
    t, cur = config["training"], config["curation"]
    per_step = max(int(t["gpus"]), 1) * t["per_device_train_batch_size"]
    per_step *= t["gradient_accumulation_steps"]
    if t["max_steps"] is not None:
        return t["max_steps"], per_step
    sets = pool * (1 - cur["val_fraction"]) * cur["sets_per_problem"]
    steps = math.ceil(t["num_train_epochs"] * int(sets // (per_step // t["num_generations"])))
    return steps, per_step


def plan(config: Mapping, inputs: Inputs) -> list[Row]:
    """Every rule's row, in the order the workflow runs them."""
    p = config["plan"]
    share = p["expected_length"]
    gen_rate, train_rate = p["generation_tokens_per_s"], p["training_tokens_per_s"]
    out = f"results/{config['run_name']}"
    rows: list[Row] = []

    def runtime(rule):
        return inputs.runtimes_h.get(rule)

    # sampling, scoring and grading: per data set family (the pool; the benchmarks)
    max_tokens = config["sampling"]["max_tokens"]
    families = {
        POOL: ([POOL], [config["seed"]]),
        "benchmarks": (list(config["benchmarks"]), config["evaluation"]["seeds"]),
    }
    for family, (datasets, seeds) in families.items():
        n = config["training_pool" if family == POOL else "evaluation"]["samples_per_problem"]
        shards = config["training_pool" if family == POOL else "evaluation"]["shards"]
        mean = inputs.measured.get(family) or share * max_tokens
        sample = Row(
            f"sample_shard ({family})", 0, 0, p["device"], 1, runtime_h=runtime("sample_shard")
        )
        score = Row(f"score_shard ({family})", 0, 0, "CPU")
        grade = Row(f"grade_shard ({family})", 0, 0, "CPU")
        for dataset in datasets:
            problems = inputs.problems.get(dataset)
            for seed in seeds:
                for shard in range(shards):
                    sample.jobs_total += 1
                    score.jobs_total += 1
                    grade.jobs_total += 1
                    if problems is None:
                        continue
                    k = problems // shards + (1 if shard < problems % shards else 0)
                    texts = k * n
                    sample.hours_per_job = max(sample.hours_per_job, texts * mean / gen_rate / 3600)
                    paths = {
                        step: f"{out}/{step}/{dataset}/seed{seed}/shard{shard}.parquet"
                        for step in ("samples", "scores", "grades")
                    }
                    if not inputs.done(paths["samples"]):
                        sample.jobs += 1
                        sample.tokens_max += texts * max_tokens
                        sample.tokens_expected += int(texts * mean)
                        sample.disk_bytes += texts * mean * SAMPLE_BYTES_PER_TOKEN
                    if not inputs.done(paths["scores"]):
                        score.jobs += 1
                        score.disk_bytes += texts * SCORES_BYTES_PER_ROW
                    if not inputs.done(paths["grades"]):
                        grade.jobs += 1
                        grade.disk_bytes += texts * GRADES_BYTES_PER_ROW
            if problems is None:
                sample.notes.append(f"{dataset}: problem count unknown (set plan.problems)")
        sample.hours = sample.tokens_expected / gen_rate / 3600
        rows += [sample, score, grade]

    # curation: one job; its sets' prompts on disk
    cur, agg_prompt = config["curation"], config["aggregator"]["prompt"]["max_prompt_tokens"]
    pool = inputs.problems.get(POOL) or 0
    pool_mean = inputs.measured.get(POOL) or share * max_tokens
    prompt = min(agg_prompt or math.inf, cur["set_size"] * pool_mean + 300)
    sets = pool * cur["sets_per_problem"]
    curate = Row("curate_sets", 0, 1, "CPU")
    if not inputs.done(f"{out}/curated/summary.json"):
        curate.jobs = 1
        curate.disk_bytes = sets * prompt * TEXT_BYTES_PER_TOKEN
    rows.append(curate)

    # training: one job per variant on training.gpus GPUs (0: one CPU process)
    t = config["training"]
    steps, per_step = training_completions(config, pool)
    rollouts = steps * per_step
    completion = t["max_completion_length"]
    gpus = int(t["gpus"])
    train = Row(
        "train_aggregator",
        0,
        0,
        "GPU" if gpus else "CPU",
        max(gpus, 1),
        runtime_h=runtime("train_aggregator"),
    )
    each_expected = rollouts * share * completion
    # device-hours: the rollouts at the generation rate, then the policy's forward and backward
    # over prompt + completion at the training rate; every process works at once, so the wall
    # time is that over the processes
    each_device_hours = (
        each_expected / gen_rate + rollouts * (prompt + share * completion) / train_rate
    ) / 3600
    train.hours_per_job = each_device_hours / max(gpus, 1)
    for variant, seed in itertools.product(t["variants"], t["seeds"]):
        train.jobs_total += 1
        if inputs.done(f"{out}/train/{variant}/seed{seed}/adapter"):
            continue
        train.jobs += 1
        train.tokens_max += rollouts * completion
        train.tokens_expected += int(each_expected)
        train.hours += each_device_hours
        # the adapter, and the checkpoints kept (adapter + Adam's two moments each)
        train.disk_bytes += inputs.adapter_bytes * (1 + 3 * (t["save_total_limit"] or 1))
    train.notes.append(f"{steps} steps x {per_step} rollouts")
    rows.append(train)

    # evaluation: the aggregator variants on every benchmark x seed's candidate sets
    ev = config["evaluation"]
    agg_max = ev["aggregator_sampling"]["max_tokens"]
    agg_mean = share * agg_max
    # every variant runs once, a trained one once per training seed, at every set size
    runs = sum(len(t["seeds"]) if v["trained"] else 1 for v in ev["aggregators"])
    sets_per_problem = sum(ev["samples_per_problem"] // m for m in ev["set_sizes"])
    outputs_per_problem = sets_per_problem * runs * ev["outputs_per_set"]
    shards = ev["aggregate_shards"]
    aggregate = Row("aggregate_sets", 0, 0, p["device"], 1, runtime_h=runtime("aggregate_sets"))
    evaluate = Row("evaluate_seed", 0, 0, "CPU")
    for benchmark in config["benchmarks"]:
        problems = inputs.problems.get(benchmark) or 0
        for shard in range(shards):
            # problem j is in shard j % shards
            texts = len(range(shard, problems, shards)) * outputs_per_problem
            hours = (
                (texts * agg_mean + texts * (agg_prompt or 0) / PREFILL_SPEEDUP) / gen_rate / 3600
            )
            aggregate.hours_per_job = max(aggregate.hours_per_job, hours)
            for seed in ev["seeds"]:
                aggregate.jobs_total += 1
                base = f"{out}/eval/{benchmark}/seed{seed}"
                if inputs.done(f"{base}/aggregators.parquet") or inputs.done(
                    f"{base}/aggregators/shard{shard}.parquet"
                ):
                    continue
                aggregate.jobs += 1
                aggregate.tokens_max += texts * agg_max
                aggregate.tokens_expected += int(texts * agg_mean)
                aggregate.hours += hours
                aggregate.disk_bytes += texts * agg_mean * TEXT_BYTES_PER_TOKEN
        for seed in ev["seeds"]:
            evaluate.jobs_total += 1
            base = f"{out}/eval/{benchmark}/seed{seed}"
            if not inputs.done(f"{base}/metrics.json"):
                evaluate.jobs += 1
    rows += [aggregate, evaluate]
    return rows


def totals(rows: list[Row]) -> dict[str, Row]:
    """The sums per device ("GPU", "CPU": the rows whose hours are that device's) and over all
    rows ("all": jobs, tokens, disk)."""
    sums = {"all": Row("total", 0, 0, "")}
    for r in rows:
        for key in ("all", r.device):
            total = sums.setdefault(key, Row(f"total ({key})", 0, 0, key))
            total.jobs += r.jobs
            total.jobs_total += r.jobs_total
            total.tokens_max += r.tokens_max
            total.tokens_expected += r.tokens_expected
            total.hours += r.hours
            total.disk_bytes += r.disk_bytes
    return sums


def over_runtime(rows: list[Row], attempts: int) -> list[Row]:
    """The rows whose largest job cannot finish within its runtime: every attempt for a job
    that resumes (sample parts, training checkpoints), one for any other."""
    return [
        r
        for r in rows
        if r.runtime_h
        and r.hours_per_job > r.runtime_h * (attempts if r.rule.split(" ")[0] in RESUMABLE else 1)
    ]
