import copy

import pytest
import yaml

from confagg.config import ConfigError, check_consistency, grpo_generation_batch, validate
from conftest import REPO, snakemake

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def full_config():
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_shipped_configs_are_valid():
    for name in ("config.yaml", "demo.yaml"):
        cfg = yaml.safe_load((REPO / "config" / name).read_text())
        validate(cfg, SCHEMA)
        check_consistency(cfg)
        assert cfg["confidence"]["window"] >= 1  # defaults filled where unset


def test_defaults_are_filled():
    cfg = full_config()
    del cfg["sampling"]["temperature"]
    del cfg["evaluation"]
    validate(cfg, SCHEMA)
    assert cfg["sampling"]["temperature"] == 0.6
    assert cfg["evaluation"]["seeds"] == [0]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["sampling"].update(temprature=0.7), "sampling.temprature: unknown key"),
        (lambda c: c.update(sampels=3), "sampels: unknown key"),
        (
            lambda c: c["sampling"].update(temperature="hot"),
            "sampling.temperature: 'hot' is not of type 'number'",
        ),
        (lambda c: c["training_pool"].update(shards=0), "training_pool.shards: 0 is less than"),
        (lambda c: c["evaluation"].update(seeds="0"), "evaluation.seeds: '0' is not of type"),
        (lambda c: c["benchmarks"]["aime24"].update(source={}), "benchmarks.aime24.source"),
        (lambda c: c["generator"].pop("model"), "generator: 'model' is a required property"),
        (
            lambda c: c["generator"].update(model="/no/such/model"),
            "generator.model: '/no/such/model' is not an existing model folder",
        ),
        (lambda c: c["benchmarks"].update(train_pool={"source": {"path": "x"}}), "benchmarks"),
        (
            lambda c: c["grading"].update(extraction="last_number"),
            "grading.extraction: 'last_number' is not one of",
        ),
        (lambda c: c["grading"].update(think_end=""), "grading.think_end: '' should be non-empty"),
    ],
)
def test_bad_config_names_the_key(change, message):
    cfg = copy.deepcopy(full_config())
    change(cfg)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(cfg, SCHEMA)


@pytest.mark.parametrize(
    "text, message",
    [
        ("sampling:\n  temperature: hot\n", "sampling.temperature: 'hot' is not of type 'number'"),
        (
            "curation:\n  verify_timeout: 10\n",
            "curation.verify_timeout: this key moved; set grading.timeout",
        ),
    ],
)
def test_snakemake_stops_on_bad_config(workdir, text, message):
    bad = workdir / "bad.yaml"
    bad.write_text(text)
    proc = snakemake("-n", "--configfile", str(bad), cwd=workdir, check=False, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_negative_seed_names_the_key():
    cfg = full_config()
    cfg["seed"] = -1
    with pytest.raises(ConfigError, match=r"seed: -1 is less than the minimum of 0"):
        validate(cfg, SCHEMA)


def _set(section, **values):
    return lambda c: c[section].update(values)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            _set("curation", set_size=129),
            "curation.set_size 129 > training_pool.samples_per_problem 128",
        ),
        (
            _set("curation", sets_per_problem=17),
            "curation.sets_per_problem 17 x curation.set_size 8 = 136 > "
            "training_pool.samples_per_problem 128: disjoint sets",
        ),
        (
            _set("curation", sets_per_problem=17, set_sampling="overlapping"),
            None,  # independent draws: m samples per problem are enough
        ),
        (
            _set("evaluation", set_sizes=[2, 9], samples_per_problem=8, ks=[1, 2, 4, 8]),
            "evaluation.set_sizes [9] > evaluation.samples_per_problem 8",
        ),
        (
            _set("evaluation", samples_per_problem=64),
            "evaluation.ks [128] > evaluation.samples_per_problem 64",
        ),
        (
            # 2 x 64 x 1 process = 128 completions: groups of 6 do not divide it
            _set(
                "training",
                num_generations=6,
                gpus=1,
                per_device_train_batch_size=2,
                gradient_accumulation_steps=64,
            ),
            "training.num_generations 6 does not divide the generation batch 128 "
            "(training.per_device_train_batch_size 2 x 1 process(es) (training.gpus 1) x "
            "training.gradient_accumulation_steps 64)",
        ),
        (
            _set("training", gpus=3, gradient_accumulation_steps=1, per_device_train_batch_size=2),
            "training.num_generations 8 does not divide the generation batch 6",
        ),
        (
            _set("training", gpus=0, gradient_accumulation_steps=3, per_device_train_batch_size=2),
            "generation batch 6 (training.per_device_train_batch_size 2 x 1 process(es) "
            "(training.gpus 0)",
        ),
        (
            _set("training", eval_steps=10),
            None,  # with the default val_fraction 0.2: fine
        ),
        (
            lambda c: (c["training"].update(eval_steps=10), c["curation"].update(val_fraction=0)),
            "training.eval_steps 10 needs validation sets, but curation.val_fraction is 0",
        ),
        (
            _set("curation", val_fraction=1),
            "curation.val_fraction 1 leaves no problem for training",
        ),
        (
            _set("sampling", max_tokens=40960),
            "sampling.max_tokens 40960 >= generator.engine.max_model_len 40960",
        ),
        (
            lambda c: c["generator"]["engine"].update(max_logprobs=10),
            "sampling.logprobs 20 > generator.engine.max_logprobs 10",
        ),
        (  # a data set's own sampling is checked as that data set's jobs will get it
            _set("evaluation", sampling={"max_tokens": 40960}),
            "evaluation.sampling.max_tokens 40960 >= generator.engine.max_model_len 40960",
        ),
        (
            lambda c: c["evaluation"].update(
                aggregators=[
                    {"name": "a", "trained": None, "confidence": False, "confidences": "equal"}
                ]
            ),
            "evaluation.aggregators[0] ('a'): confidences set but confidence is false",
        ),
        (
            lambda c: c["evaluation"]["aggregator_sampling"].update(max_tokens=30000),
            "aggregator.prompt.max_prompt_tokens 16384 + evaluation.aggregator_sampling.max_tokens "
            "30000 = 46384 > generator.engine.max_model_len 40960",
        ),
        (
            lambda c: c["evaluation"].update(
                aggregators=[{"name": "a", "trained": None, "confidence": True}] * 2
            ),
            "evaluation.aggregators: names ['a'] appear more than once",
        ),
    ],
)
def test_inconsistent_keys_are_named_with_their_values(change, message):
    cfg = full_config()
    validate(cfg, SCHEMA)  # defaults filled, as the Snakefile does
    # the values the messages below rely on (consistent with each other)
    cfg["training_pool"]["samples_per_problem"] = cfg["evaluation"]["samples_per_problem"] = 128
    cfg["curation"].update(set_size=8, sets_per_problem=16, set_sampling="disjoint")
    cfg["evaluation"].update(set_sizes=[8], ks=[1, 2, 4, 8, 16, 32, 64, 128])
    cfg["evaluation"]["aggregator_sampling"]["max_tokens"] = 16384
    cfg["generator"]["engine"]["max_model_len"] = 40960
    cfg["sampling"].update(logprobs=20, max_tokens=32768)
    cfg["aggregator"]["prompt"]["max_prompt_tokens"] = 16384
    cfg["training"].update(eval_steps=None, num_generations=8)
    check_consistency(cfg)
    change(cfg)
    if message is None:
        check_consistency(cfg)
        return
    with pytest.raises(ConfigError, match="inconsistent configuration") as err:
        check_consistency(cfg)
    assert message in str(err.value)


def test_every_inconsistency_is_listed_at_once():
    cfg = full_config()
    validate(cfg, SCHEMA)
    cfg["training_pool"]["samples_per_problem"] = cfg["evaluation"]["samples_per_problem"] = 128
    cfg["curation"]["set_size"] = 200
    cfg["evaluation"]["ks"] = [1, 256, 512]
    with pytest.raises(ConfigError) as err:
        check_consistency(cfg)
    assert "curation.set_size 200" in str(err.value)
    assert "evaluation.ks [256, 512] > evaluation.samples_per_problem 128" in str(err.value)


def test_trl_agrees_on_the_generation_batch():
    """The divisibility rule is TRL's own: GRPOConfig refuses exactly what the check refuses."""
    from trl import GRPOConfig

    for per_device, accumulation, groups in [(2, 64, 8), (4, 1, 4), (3, 2, 4), (2, 3, 4)]:
        training = {
            "gpus": 0,
            "per_device_train_batch_size": per_device,
            "gradient_accumulation_steps": accumulation,
            "num_generations": groups,
        }
        batch, _ = grpo_generation_batch(training)
        args = dict(
            output_dir="/tmp/unused",
            use_cpu=True,
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=accumulation,
            num_generations=groups,
            report_to=[],
        )
        if batch % groups:
            with pytest.raises(ValueError, match="must be divisible by num_generations"):
                GRPOConfig(**args)
        else:
            assert GRPOConfig(**args).generation_batch_size == batch


def test_snakemake_stops_on_inconsistent_keys_before_any_job(workdir):
    bad = workdir / "bad.yaml"
    bad.write_text("seed: -1\n")
    proc = snakemake("-n", "--configfile", str(bad), cwd=workdir, check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "seed: -1 is less than the minimum of 0" in out
    bad.write_text("evaluation:\n  samples_per_problem: 128\n  ks: [1, 2, 256]\n")
    proc = snakemake("-n", "--configfile", str(bad), cwd=workdir, check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "evaluation.ks [256] > evaluation.samples_per_problem 128" in out
    assert "MissingInputException" not in out and "Job stats" not in out


@pytest.mark.parametrize(
    "old, new",
    [
        ({"curation": {"verify_timeout": 10}}, "grading.timeout"),
        ({"curation": {"verify_processes": 2}}, "grading.processes"),
        ({"curation": {"require_think_end": True}}, "grading.require_think_end"),
        ({"aggregator": {"prompt": {"confidence": {"enabled": False}}}}, "training.variants"),
        ({"evaluation": {"set_size": 8}}, "evaluation.set_sizes"),
    ],
)
def test_moved_keys_stop_the_run_naming_their_new_place(old, new):
    cfg = full_config()
    section, value = next(iter(old.items()))
    merged = copy.deepcopy(cfg[section])
    # merge the old key into the section as a user's file would carry it
    target, source = merged, value
    while isinstance(next(iter(source.values())), dict):
        key = next(iter(source))
        target, source = target.setdefault(key, {}), source[key]
    target.update(source)
    cfg[section] = merged
    with pytest.raises(ConfigError, match=rf"this key moved; set {new}"):
        validate(cfg, SCHEMA)


def test_any_grpo_config_field_passes_and_unknown_or_fixed_ones_are_named():
    import dataclasses

    from trl import GRPOConfig

    from confagg.config import GRPO_SET_BY_WORKFLOW, grpo_config_fields

    # the fields read from TRL's sources are exactly GRPOConfig's dataclass fields
    fields, _ = grpo_config_fields()
    assert fields == {f.name for f in dataclasses.fields(GRPOConfig)}
    assert GRPO_SET_BY_WORKFLOW.keys() <= fields

    cfg = full_config()
    cfg["training"].update(max_grad_norm=0.5, epsilon_high=0.28, num_iterations=2)
    cfg["training"]["vllm"]["tensor_parallel_size"] = 1
    validate(cfg, SCHEMA)  # GRPOConfig fields, as open-r1's recipes set them

    cfg = full_config()
    # transformers 5 dropped warmup_ratio (warmup_steps takes a fraction): the check says so
    cfg["training"].update(warmup_ratio=0.1, max_grad_nrom=1.0, logging_steps=5)
    cfg["training"]["vllm"]["tensor_paralel_size"] = 1
    with pytest.raises(ConfigError) as err:
        validate(cfg, SCHEMA)
    msg = str(err.value)
    assert "training.warmup_ratio: unknown key" in msg and "did you mean warmup_steps" in msg
    assert "training.max_grad_nrom: unknown key" in msg and "did you mean max_grad_norm" in msg
    assert "training.vllm.tensor_paralel_size: unknown key" in msg
    assert "training.logging_steps: GRPOConfig's logging_steps is set by the workflow" in msg
