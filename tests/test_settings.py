"""The one translation from the validated config to each rule's stage settings
(``confagg.settings.for_rule``): every rule's settings build its stage's typed settings, every
rule file passes them, and the confidence choice of a variant is made in one place."""

from __future__ import annotations

import re

import pytest
import yaml

from confagg import (
    aggregate,
    check,
    curate,
    evaluate,
    grade,
    models,
    prepare,
    report,
    sample,
    score,
    train,
)
from confagg.answers import Reading
from confagg.config import validate
from confagg.settings import POOL, RULES, for_rule, from_mapping, load, to_json
from conftest import REPO

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"

STAGE_SETTINGS = {
    "prepare_problems": prepare.Settings,
    "check_problems": check.Settings,
    "record_model": models.Record,
    "sample_shard": sample.SampleSettings,
    "score_shard": score.Settings,
    "grade_shard": grade.Settings,
    "curate_sets": curate.CurateSettings,
    "train_aggregator": train.Settings,
    "aggregate_sets": aggregate.Settings,
    "evaluate_seed": evaluate.Settings,
    "report_benchmark": report.Settings,
}


def _config(name: str) -> dict:
    config = yaml.safe_load((REPO / "config" / name).read_text())
    validate(config, SCHEMA)
    return config


def _wildcards(config: dict, rule: str) -> list[dict]:
    benchmark = next(iter(config["benchmarks"]))
    seed = config["evaluation"]["seeds"][0]
    return {
        "prepare_problems": [{"dataset": POOL}, {"dataset": benchmark}],
        "check_problems": [{"dataset": POOL}, {"dataset": benchmark}],
        "record_model": [{"role": "generator"}, {"role": "aggregator"}],
        "sample_shard": [{"dataset": d, "seed": "0", "shard": "0"} for d in (POOL, benchmark)],
        "score_shard": [{"dataset": POOL, "seed": "0", "shard": "0"}],
        "grade_shard": [{"dataset": POOL, "seed": "0", "shard": "0"}],
        "curate_sets": [{}],
        "train_aggregator": [
            {"variant": v, "train_seed": str(s)}
            for v in config["training"]["variants"]
            for s in config["training"]["seeds"]
        ],
        "aggregate_sets": [{"benchmark": benchmark, "seed": str(seed), "shard": "0"}],
        "evaluate_seed": [{"benchmark": benchmark, "seed": str(seed)}],
        "report_benchmark": [{"benchmark": benchmark}],
    }[rule]


def test_every_rule_with_settings_has_a_stage_class():
    assert set(RULES) == set(STAGE_SETTINGS)


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
@pytest.mark.parametrize("rule", sorted(STAGE_SETTINGS))
def test_each_rules_settings_build_its_stages_settings(name, rule):
    """Strict: a key the stage does not declare, or one it lacks, raises (settings.from_mapping)."""
    config = _config(name)
    for wildcards in _wildcards(config, rule):
        text = to_json(for_rule(config, rule, **wildcards))
        assert load(STAGE_SETTINGS[rule], text) is not None


def test_every_rule_file_passes_the_translated_settings():
    rules_dir = REPO / "workflow/rules"
    text = "\n".join(p.read_text() for p in sorted(rules_dir.glob("*.smk")))
    used = set(re.findall(r'stage_settings\("(\w+)"\)', text))
    assert used == set(RULES)
    # no rule builds settings JSON of its own
    assert "json.dumps" not in text


def test_a_variant_decides_whether_its_prompt_shows_confidences():
    config = _config("config.yaml")
    for variant, spec in config["training"]["variants"].items():
        settings = from_mapping(
            train.Settings, for_rule(config, "train_aggregator", variant=variant)
        )
        assert settings.aggregator.prompt["confidence"]["enabled"] is spec["confidence"]
    agg = for_rule(config, "aggregate_sets", benchmark="aime24", seed="0", shard="0")
    assert [v["prompt"]["confidence"]["enabled"] for v in agg["variants"]] == [
        v["confidence"] for v in config["evaluation"]["aggregators"]
    ]
    # the prompt check measures the longer prompt, with confidences
    check_settings = for_rule(config, "check_problems", dataset="aime24")
    assert check_settings["aggregator"]["prompt"]["confidence"]["enabled"] is True


def test_grading_reaches_grading_the_aggregators_and_the_reward():
    config = _config("config.yaml")
    config["grading"].update(
        timeout=2.5, require_think_end=False, extraction="math_verify", think_end="<|/reason|>"
    )
    reading = {"extraction": "math_verify", "think_end": "<|/reason|>", "require_think_end": False}
    assert for_rule(config, "grade_shard", dataset=POOL) == {"timeout": 2.5, "reading": reading}
    agg = for_rule(config, "aggregate_sets", benchmark="aime24", seed="0", shard="0")
    assert (agg["verify_timeout"], agg["reading"]) == (2.5, reading)
    tr = for_rule(config, "train_aggregator", variant="confidence")
    assert (tr["verify_timeout"], tr["reading"]) == (2.5, reading)
    # the same marker cuts the candidate texts of curation and of every aggregator prompt
    assert for_rule(config, "curate_sets")["think_end"] == "<|/reason|>"
    assert tr["aggregator"]["prompt"]["think_end"] == "<|/reason|>"
    assert all(v["prompt"]["think_end"] == "<|/reason|>" for v in agg["variants"])
    check_settings = for_rule(config, "check_problems", dataset="aime24")
    assert (check_settings["think_end"], check_settings["think_end_auto"]) == ("<|/reason|>", False)
    # the stages load them as their typed reading
    assert from_mapping(grade.Settings, for_rule(config, "grade_shard", dataset=POOL)).reading == (
        Reading("math_verify", "<|/reason|>", False)
    )
    assert from_mapping(train.Settings, tr).reading.extraction == "math_verify"
    assert from_mapping(aggregate.Settings, agg).reading.think_end == "<|/reason|>"
    # null: the role's thinking mode decides (the default config thinks)
    config["grading"]["require_think_end"] = None
    assert for_rule(config, "grade_shard", dataset=POOL)["reading"]["require_think_end"] is True
    check_settings = for_rule(config, "check_problems", dataset="aime24")
    assert check_settings["think_end_auto"] is True
    assert check_settings["solver"]["require_think_end"] is True


def test_a_variant_sets_its_control_metric_and_scale():
    config = _config("config.yaml")
    config["evaluation"]["aggregators"] = [
        {"name": "a", "trained": None, "confidence": True},
        {"name": "b", "trained": "confidence", "confidence": True, "confidences": "permuted",
         "metric": "tail", "scale": "raw"},
    ]  # fmt: skip
    agg = from_mapping(
        aggregate.Settings,
        for_rule(config, "aggregate_sets", benchmark="aime24", seed="0", shard="0"),
    )
    shared = config["aggregator"]["prompt"]["confidence"]
    a, b = agg.variants
    assert (a.confidences, a.prompt["confidence"]["metric"], a.prompt["confidence"]["scale"]) == (
        "real",
        shared["metric"],
        shared["scale"],
    )
    assert (b.confidences, b.prompt["confidence"]["metric"], b.prompt["confidence"]["scale"]) == (
        "permuted",
        "tail",
        "raw",
    )
    assert agg.set_sizes == tuple(config["evaluation"]["set_sizes"])
    assert agg.train_seeds == tuple(config["training"]["seeds"])
    # the train job's GRPO settings do not take the training seeds (a wildcard of its own)
    tr = for_rule(config, "train_aggregator", variant="confidence", train_seed="1")
    assert "seeds" not in tr["training"] and "variants" not in tr["training"]


def test_curation_seed_derives_from_the_run_seed_when_null():
    config = _config("config.yaml")
    assert config["curation"]["seed"] is None
    first = for_rule(config, "curate_sets")["curation"]["seed"]
    config["seed"] += 1
    assert for_rule(config, "curate_sets")["curation"]["seed"] != first
    config["curation"]["seed"] = 5
    assert for_rule(config, "curate_sets")["curation"]["seed"] == 5
