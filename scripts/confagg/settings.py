"""Typed settings of a stage, built from the config that the Snakefile already validated.

Each stage declares what it reads from the config as a frozen dataclass (nested dataclasses for
config sections); its rule passes that part of the validated config as JSON (``:q``-quoted);
``load(Settings, text)`` builds the object. The schema is the only home of defaults: a key that
is missing or unknown here is a mismatch between a rule and its stage (a bug, not a user error),
so it raises naming the key rather than guessing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(TypeError):
    """The settings handed to a stage do not match its declaration."""


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "settings") -> T:
    """``cls`` (a dataclass) from ``data``; nested dataclass fields are built recursively."""
    if not isinstance(data, Mapping):
        raise SettingsError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    missing = sorted(
        n
        for n, f in fields.items()
        if n not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if unknown or missing:
        raise SettingsError(
            f"{where}: {cls.__name__} got unknown keys {unknown} and lacks keys {missing}"
        )
    values = {name: _build(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def _build(hint: Any, value: Any, where: str) -> Any:
    """A field's value: a nested dataclass (built by its ``from_section`` where it has one:
    a section it splits itself), a tuple of them (``tuple[X, ...]``), or as given."""
    if dataclasses.is_dataclass(hint):
        if hasattr(hint, "from_section"):
            return hint.from_section(value, where)
        return from_mapping(hint, value, where)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if dataclasses.is_dataclass(args[0]):
            return tuple(from_mapping(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    return value


def load(cls: type[T], text: str) -> T:
    """``cls`` from a JSON object (the ``--settings`` argument of a stage)."""
    return from_mapping(cls, json.loads(text))


def to_dict(settings: Any) -> dict:
    """The plain-dict form of a settings object (for manifests and fingerprints)."""
    return dataclasses.asdict(settings)


# --------------------------------------------------------------------------------------------
# The one translation from the validated config to each rule's settings. Every rule file passes
# ``to_json(for_rule(config, "<rule>", **wildcards))`` as its stage's ``--settings``; the stage
# builds its typed settings from it with ``load``. Nothing else maps config keys onto stages.

POOL = "train_pool"  # the data set name of the training pool in paths and wildcards


def dataset_section(config: Mapping, dataset: str) -> Mapping:
    """The config section describing a data set (the training pool or a benchmark)."""
    return config["training_pool"] if dataset == POOL else config["benchmarks"][dataset]


def samples_per_problem(config: Mapping, dataset: str) -> int:
    return config["training_pool" if dataset == POOL else "evaluation"]["samples_per_problem"]


def num_shards(config: Mapping, dataset: str) -> int:
    return config["training_pool" if dataset == POOL else "evaluation"]["shards"]


def sampling(config: Mapping, dataset: str) -> dict:
    """The sampling settings of a data set: ``sampling``, with ``training_pool.sampling`` (the
    pool) or ``evaluation.sampling`` (every benchmark) over it, key by key (AggLM samples its
    training candidates and its evaluation candidates at different temperatures)."""
    section = config["training_pool" if dataset == POOL else "evaluation"]
    return {**config["sampling"], **section["sampling"]}


def trained_runs(config: Mapping) -> list[tuple[str, int]]:
    """(training variant, training seed) of every GRPO run the evaluated variants use, in the
    config's order: one per variant and ``training.seeds`` entry."""
    used = dict.fromkeys(v["trained"] for v in config["evaluation"]["aggregators"])
    seeds = config["training"]["seeds"]
    return [(v, s) for v in used if v is not None for s in seeds]


def run_key(variant: str, seed: int) -> str:
    """A training run's name in paths and ``--trained`` arguments: ``<variant>/seed<s>``."""
    return f"{variant}/seed{seed}"


def think_end_required(config: Mapping, role: str) -> bool:
    """Whether a text of ``role`` ("generator" or "aggregator") without the end-of-thinking
    marker (grading.think_end) has no answer: grading.require_think_end, or when null the
    role's chat-template thinking mode."""
    value = config["grading"]["require_think_end"]
    if value is None:
        return bool(config[role]["chat_template_kwargs"].get("enable_thinking", False))
    return bool(value)


def reading(config: Mapping, role: str) -> dict:
    """How the answers of ``role``'s texts are read (``confagg.answers.Reading``): the same
    ``grading`` keys in grading, the aggregators' outputs and the GRPO reward."""
    grading = config["grading"]
    return {
        "extraction": grading["extraction"],
        "think_end": grading["think_end"],
        "require_think_end": think_end_required(config, role),
    }


def aggregator_prompt(config: Mapping, confidence: bool) -> dict:
    """The aggregator's prompt section for a variant that shows the candidates' confidences or
    not (the one place that decides it: training.variants, evaluation.aggregators)."""
    prompt = copy.deepcopy(dict(config["aggregator"]["prompt"]))
    prompt["confidence"] = dict(prompt.get("confidence") or {}, enabled=bool(confidence))
    prompt["think_end"] = config["grading"]["think_end"]  # candidate texts: the part after it
    return prompt


def _prepare_problems(config: Mapping, dataset: str) -> dict:
    section = dataset_section(config, dataset)
    return {
        "source": section["source"],
        "fields": section.get("fields") or {},
        "limit": section.get("limit"),
    }


def _check_problems(config: Mapping, dataset: str) -> dict:
    pool = dataset == POOL
    engine = config["generator"]["engine"]
    section = dataset_section(config, dataset)
    return {
        "source": section["source"],
        "fields": section.get("fields") or {},
        "solver": {
            "prompt": config["prompt"],
            "chat_template_kwargs": config["generator"]["chat_template_kwargs"],
            "max_model_len": engine.get("max_model_len"),
            "max_tokens": sampling(config, dataset)["max_tokens"],
            "require_think_end": think_end_required(config, "generator"),
        },
        "aggregator": {
            # confidences shown: the longer of the two prompts
            "prompt": aggregator_prompt(config, confidence=True),
            "chat_template_kwargs": config["aggregator"]["chat_template_kwargs"],
            # training reads curated sets of the pool; evaluation reads benchmark sets on the
            # generator's engine settings
            # the largest set the aggregator reads from this data set
            "set_size": (
                config["curation"]["set_size"] if pool else max(config["evaluation"]["set_sizes"])
            ),
            "max_model_len": None if pool else engine.get("max_model_len"),
            "max_tokens": (
                None if pool else config["evaluation"]["aggregator_sampling"]["max_tokens"]
            ),
            "require_think_end": think_end_required(config, "aggregator"),
        },
        "think_end": config["grading"]["think_end"],
        "think_end_auto": config["grading"]["require_think_end"] is None,
    }


def _record_model(config: Mapping, role: str) -> dict:
    return {
        "role": role,
        "model": config[role]["model"],
        "revision": config[role]["revision"],
    }


def _sample_shard(config: Mapping, dataset: str, **_) -> dict:
    params = dict(sampling(config, dataset), n=samples_per_problem(config, dataset))
    return {
        "sampling": {k: v for k, v in params.items() if k != "problems_in_flight"},
        "problems_in_flight": params["problems_in_flight"],
        "shards": num_shards(config, dataset),
        "engine": config["generator"]["engine"],
        "prompt": config["prompt"],
        "chat_template_kwargs": config["generator"]["chat_template_kwargs"],
    }


def _score_shard(config: Mapping, **_) -> dict:
    return {
        "window": config["confidence"]["window"],
        "tail_tokens": config["confidence"]["tail_tokens"],
    }


def _grade_shard(config: Mapping, **_) -> dict:
    return {
        "timeout": config["grading"]["timeout"],
        "reading": reading(config, "generator"),
    }


def _curate_sets(config: Mapping) -> dict:
    from confagg.seeds import derive_seed

    curation = dict(config["curation"])
    if curation["seed"] is None:
        curation["seed"] = derive_seed(config["seed"], "curate")
    return {
        "curation": curation,
        # candidate texts longer than the aggregator's prompt budget are cut (confagg.curate)
        "max_prompt_tokens": config["aggregator"]["prompt"]["max_prompt_tokens"],
        "think_end": config["grading"]["think_end"],
    }


def _train_aggregator(config: Mapping, variant: str, **_) -> dict:
    confidence = config["training"]["variants"][variant]["confidence"]
    aggregator = dict(config["aggregator"], prompt=aggregator_prompt(config, confidence))
    return {
        "aggregator": aggregator,
        # (variants and seeds are the rule's wildcards, the rest GRPO's)
        "training": {k: v for k, v in config["training"].items() if k not in ("variants", "seeds")},
        "reading": reading(config, "aggregator"),
        "verify_timeout": config["grading"]["timeout"],
    }


def _aggregate_sets(config: Mapping, benchmark: str, seed: str | int, shard: str | int) -> dict:
    from confagg.seeds import derive_seed

    ev = config["evaluation"]
    return {
        "set_sizes": ev["set_sizes"],
        "shard": int(shard),
        "shards": ev["aggregate_shards"],
        "variants": [_variant(config, v) for v in ev["aggregators"]],
        "train_seeds": config["training"]["seeds"],
        "sampling": dict(ev["aggregator_sampling"], n=ev["outputs_per_set"]),
        "engine": config["generator"]["engine"],
        "chat_template_kwargs": config["aggregator"]["chat_template_kwargs"],
        "lora_rank": config["training"]["lora"]["r"],
        "trained_model": ev["trained_model"],
        "reading": reading(config, "aggregator"),
        "verify_timeout": config["grading"]["timeout"],
        "seed": derive_seed(config["seed"], "aggregate", benchmark, seed),
    }


def _variant(config: Mapping, entry: Mapping) -> dict:
    """An ``evaluation.aggregators`` entry as ``confagg.aggregate.Variant``: its prompt section
    with the variant's metric and scale over aggregator.prompt.confidence's, and its control."""
    prompt = aggregator_prompt(config, entry["confidence"])
    prompt["confidence"].update({k: entry[k] for k in ("metric", "scale") if k in entry})
    return {
        "name": entry["name"],
        "trained": entry["trained"],
        "confidence": entry["confidence"],
        "confidences": entry.get("confidences", "real"),
        "prompt": prompt,
    }


def _evaluate_seed(config: Mapping, **_) -> dict:
    return {
        "ks": config["evaluation"]["ks"],
        "window": config["confidence"]["window"],
        "online": config["evaluation"]["deepconf_online"],
    }


def _report_benchmark(config: Mapping, **_) -> dict:
    # the variants' entries say which of them to compare (confagg.stats.variant_pairs)
    return {"aggregators": list(config["evaluation"]["aggregators"])}


RULES = {
    "prepare_problems": _prepare_problems,
    "check_problems": _check_problems,
    "record_model": _record_model,
    "sample_shard": _sample_shard,
    "score_shard": _score_shard,
    "grade_shard": _grade_shard,
    "curate_sets": _curate_sets,
    "train_aggregator": _train_aggregator,
    "aggregate_sets": _aggregate_sets,
    "evaluate_seed": _evaluate_seed,
    "report_benchmark": _report_benchmark,
}


def for_rule(config: Mapping, rule: str, **wildcards: Any) -> dict:
    """The settings of ``rule``'s stage from the validated config (``wildcards``: the job's,
    those the rule's settings depend on)."""
    return RULES[rule](config, **wildcards)


def to_json(settings: Mapping) -> str:
    """The ``--settings`` argument (sorted keys: the same config gives the same string, so
    Snakemake reruns a job only when its settings change)."""
    return json.dumps(settings, sort_keys=True)
