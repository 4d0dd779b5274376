"""The plan (confagg.budget, confagg.plan) and the start checks that need it
(confagg.config.check_budget): arithmetic on a hand-made config, refusals naming their keys,
outputs already present not counted again; the memory estimate's exact terms against the real
model and adapter (confagg.memory)."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from confagg import budget, memory, plan
from confagg import config as cfg
from conftest import REPO, snakemake

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def hand_made(**changes) -> dict:
    """100 pool problems x 4 samples in 4 shards, 1000 tokens at most, half of it expected, at
    1000 tokens/s; one benchmark of 10 problems x 2 seeds x 4 samples; 3 training steps of 8
    rollouts on 2 GPUs."""
    config = {
        "run_name": "hand",
        "generator": {"model": "smollm2-135m-instruct"},
        "sampling": {"max_tokens": 1000},
        "training_pool": {"source": {"demo": {"n": 100, "seed": 1}}, "samples_per_problem": 4,
                          "shards": 4},
        "curation": {"sets_per_problem": 1, "set_size": 4},
        "benchmarks": {"mini": {"source": {"demo": {"n": 10, "seed": 2}}}},
        "evaluation": {"seeds": [0, 1], "samples_per_problem": 4, "shards": 1, "ks": [1, 2, 4],
                       "set_sizes": [4], "aggregator_sampling": {"max_tokens": 200}},
        "aggregator": {"prompt": {"max_prompt_tokens": 500}},
        "training": {"gpus": 2, "max_steps": 3, "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 2, "num_generations": 4,
                     "max_completion_length": 100},
        "plan": {"generation_tokens_per_s": 1000, "training_tokens_per_s": 2000,
                 "expected_length": 0.5},
    }  # fmt: skip
    for section, values in changes.items():
        config[section] = {**config.get(section, {}), **values}
    cfg.validate(config, SCHEMA)
    cfg.check_consistency(config)
    return config


def rows_of(config, **inputs) -> dict[str, budget.Row]:
    counts = cfg.problem_counts(config, root=REPO / "no-such-run")
    rows = budget.plan(config, budget.Inputs(problems=counts, **inputs))
    return {r.rule: r for r in rows}


def test_plan_arithmetic_on_a_hand_made_config():
    rows = rows_of(hand_made(), runtimes_h={"sample_shard": 1})
    pool = rows["sample_shard (train_pool)"]
    assert (pool.jobs, pool.jobs_total) == (4, 4)
    assert pool.tokens_max == 100 * 4 * 1000
    assert pool.tokens_expected == 100 * 4 * 500
    assert pool.hours == pytest.approx(200_000 / 1000 / 3600)
    # 25 problems a shard x 4 samples x 500 tokens at 1000 tokens/s
    assert pool.hours_per_job == pytest.approx(50 / 3600)
    bench = rows["sample_shard (benchmarks)"]
    assert (bench.jobs, bench.tokens_max) == (2, 2 * 10 * 4 * 1000)
    assert rows["grade_shard (benchmarks)"].jobs == 2
    train = rows["train_aggregator"]
    # 2 variants x 3 steps x (2 GPUs x 2 x 2) rollouts of up to 100 tokens (50 expected)
    assert (train.jobs, train.devices_per_job) == (2, 2)
    assert train.tokens_max == 2 * 24 * 100
    assert train.tokens_expected == 2 * 24 * 50
    # per variant: 1200 rollout tokens at 1000/s + 24 x (500-token prompt + 50) at 2000/s
    assert train.hours == pytest.approx(2 * (1.2 + 6.6) / 3600)
    assert train.hours_per_job == pytest.approx((1.2 + 6.6) / 3600 / 2)
    agg = rows["aggregate_sets"]
    # 10 problems x 1 set x 4 aggregator variants x 1 output, 2 seeds, 200 tokens at most
    assert (agg.jobs, agg.tokens_max) == (2, 2 * 40 * 200)
    # in 3 shards: problems 0, 3, 6, 9 | 1, 4, 7 | 2, 5, 8; the same work in all
    config = hand_made()
    config["evaluation"]["aggregate_shards"] = 3
    sharded = rows_of(config)["aggregate_sets"]
    assert (sharded.jobs, sharded.tokens_max) == (2 * 3, agg.tokens_max)
    assert sharded.hours == pytest.approx(agg.hours)
    assert sharded.hours_per_job == pytest.approx(agg.hours_per_job * 4 / 10)
    totals = budget.totals(list(rows.values()))
    assert totals["GPU"].hours == pytest.approx(pool.hours + bench.hours + train.hours + agg.hours)


def test_measured_lengths_replace_the_configured_share():
    rows = rows_of(hand_made(), measured={"train_pool": 100.0})
    assert rows["sample_shard (train_pool)"].tokens_expected == 100 * 4 * 100
    assert rows["sample_shard (benchmarks)"].tokens_expected == 2 * 10 * 4 * 500


def test_outputs_present_are_not_counted_again():
    config = hand_made()
    out, seed = "results/hand", config["seed"]
    done = {
        f"{out}/samples/train_pool/seed{seed}/shard0.parquet",
        f"{out}/samples/train_pool/seed{seed}/shard3.parquet",
        f"{out}/train/plain/seed0/adapter",
    }
    rows = rows_of(config, done=done.__contains__)
    pool = rows["sample_shard (train_pool)"]
    assert (pool.jobs, pool.jobs_total) == (2, 4)
    assert pool.tokens_max == 50 * 4 * 1000  # the two shards left
    assert rows["score_shard (train_pool)"].jobs == 4  # their scores are still to do
    assert (rows["train_aggregator"].jobs, rows["train_aggregator"].tokens_max) == (1, 2400)


def test_plan_command_counts_only_what_is_left(tmp_path, capsys):
    config = hand_made()
    (tmp_path / "hand.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "results/hand/train/confidence/seed0/adapter").mkdir(parents=True)
    (tmp_path / "results/hand/data").mkdir(parents=True)
    # a prepared pool of 8 problems: counted from its file, not from the config's n
    (tmp_path / "results/hand/data/train_pool.jsonl").write_text('{"id": 1}\n' * 8)
    args = ["--configfile", str(tmp_path / "hand.yaml"), "--replace-workflow-config"]
    assert plan.main([*args, "--root", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| train_aggregator | 1 (2) |" in text
    assert "| sample_shard (train_pool) | 4 (4) | GPU | 32 k |" in text  # 8 x 4 x 1000
    assert "Start checks: pass" in text


def test_a_shard_that_cannot_fit_its_runtime_stops_the_run_naming_keys():
    config = hand_made(plan={"generation_tokens_per_s": 1})  # 50,000 s = 13.9 h a shard
    with pytest.raises(cfg.ConfigError) as e:
        cfg.check_budget(config, {"sample_shard": 12.0}, root=REPO / "no-such-run")
    text = str(e.value)
    assert "sample_shard (train_pool)" in text and "13.9 h" in text and "12 h" in text
    assert "training_pool.shards to 5 or more (now 4)" in text
    assert "plan.generation_tokens_per_s" in text and "sampling.max_tokens" in text
    # with two attempts a resumable shard fits (the workflow itself counts one)
    cfg.check_budget(config, {"sample_shard": 12.0}, attempts=2, root=REPO / "no-such-run")


def test_training_over_its_gpu_memory_stops_the_run_naming_keys():
    config = hand_made(
        aggregator={"model": "Qwen/Qwen3-1.7B", "prompt": {"max_prompt_tokens": 16384}},
        training={"max_completion_length": 16384, "per_device_train_batch_size": 8,
                  "gradient_accumulation_steps": 1, "num_generations": 8},
        plan={"gpu_memory_gb": 40},
    )  # fmt: skip
    with pytest.raises(cfg.ConfigError) as e:
        cfg.check_budget(config, {}, root=REPO / "no-such-run")
    text = str(e.value)
    assert "plan.gpu_memory_gb 40" in text
    for key in (
        "training.per_device_train_batch_size (8",
        "training.vllm.enable_sleep_mode",
        "training.vllm.gpu_memory_utilization (0.3)",
        "training.max_completion_length (16384)",
        "activations (estimate)",
    ):
        assert key in text
    # the way out it names works: one sequence a micro-batch, the engine asleep meanwhile
    fixed = copy.deepcopy(config)
    fixed["training"].update(per_device_train_batch_size=1, num_generations=2)
    fixed["training"]["vllm"]["enable_sleep_mode"] = True
    cfg.check_budget(fixed, {}, root=REPO / "no-such-run")


@pytest.mark.parametrize("name", ["config.yaml", "small.yaml", "demo.yaml"])
def test_shipped_configs_pass_their_own_checks(name):
    config = yaml.safe_load((REPO / "config" / name).read_text())  # each a whole config
    cfg.validate(config, SCHEMA)
    runtimes = plan.runtimes_of(yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text()))
    cfg.check_budget(config, runtimes, root=REPO / "no-such-run")


def test_small_config_is_about_fifty_gpu_hours():
    config = yaml.safe_load((REPO / "config/small.yaml").read_text())
    cfg.validate(config, SCHEMA)
    rows = budget.plan(config, budget.Inputs(problems=cfg.problem_counts(config, REPO / "x")))
    assert 35 <= budget.totals(rows)["GPU"].hours <= 60


def test_dry_run_refuses_a_shard_over_its_runtime(workdir):
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["plan"] = {"generation_tokens_per_s": 0.001}
    (workdir / "slow.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(
        "-n", "--configfile", "slow.yaml", "--replace-workflow-config", cwd=workdir, check=False
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "training_pool.shards" in text and "plan.generation_tokens_per_s" in text


def test_memory_estimate_exact_terms_match_the_model_and_peft(tiny_model):
    """The exact terms (weights, LoRA parameters, KV bytes a token) against the tiny Qwen3 and
    the adapter PEFT builds on it."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = memory.ModelShape.from_hf_config(json.loads((tiny_model / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert shape.params == sum(p.numel() for p in model.parameters()) - norms
    modules = ("q_proj", "k_proj", "v_proj", "o_proj")
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(modules)))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert shape.lora_params(4, modules) == trainable
    # the KV cache of one token: keys and values of every layer's kv heads
    cache = model(torch.tensor([[1, 2, 3]]), use_cache=True).past_key_values
    per_token = sum(t.numel() for layer in range(shape.layers) for t in _kv(cache, layer)) // 3
    assert shape.kv_bytes_per_token(4) == per_token * 4


def _kv(cache, layer):
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache[layer]


def test_known_shapes_match_their_published_sizes():
    # Qwen3-1.7B: 1.7 B parameters (1.4 B without embeddings); SmolLM2: 135 M
    assert memory.KNOWN_MODELS["Qwen/Qwen3-1.7B"].params == pytest.approx(1.72e9, rel=0.01)
    assert memory.KNOWN_MODELS["smollm2-135m-instruct"].params == pytest.approx(134.5e6, rel=0.01)
    # Qwen3-1.7B: 28 layers x 8 kv heads x 128 x 2 (k, v) x 2 bytes = 112 KiB a token
    assert memory.KNOWN_MODELS["Qwen/Qwen3-1.7B"].kv_bytes_per_token() == 112 * 1024


def test_cost_section_from_benchmark_files_and_outputs(tmp_path):
    """GPU-hours = wall x the GPUs the rule holds, CPU-hours = the processes' CPU time, the
    last attempt of a job only; rollout tokens from the training log; the plan beside."""
    from confagg import costs

    config = hand_made()
    logs, run = tmp_path / "logs/hand", tmp_path / "results/hand"
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, rows in {
        "sample_shard/train_pool/seed1/shard0": ["1800\t0:30:00\t5000\t0\t0\t0\t0\t0\t90\t900"],
        "sample_shard/train_pool/seed1/shard1": ["60\t\t1\t0\t0\t0\t0\t0\t0\t1",
                                                 "1800\t\t7000\t0\t0\t0\t0\t0\t0\t900"],
        "score_shard/mini/seed0/shard0": ["36\t\t100\t0\t0\t0\t0\t0\t0\t30"],
        "train_aggregator/plain": ["3600\t1:00:00\t60000\t0\t0\t0\t0\t0\t0\t7200"],
    }.items():  # fmt: skip
        path = logs / f"{rel}.benchmark.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(head + "\n".join(rows) + "\n")
    log = run / "train/plain/log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(
        "\n".join(
            json.dumps({"step": i, "split": "train", "completion_length": 10.0}) for i in (1, 2)
        )
    )
    spent = costs.from_benchmarks(logs, config)
    pool = spent["sample_shard (train_pool)"]
    assert (pool.jobs, pool.wall_s, pool.gpu_s, pool.cpu_s) == (2, 3600, 3600, 1800)
    assert pool.max_rss_mb == 7000
    assert spent["score_shard (benchmarks)"].gpu_s == 0
    assert spent["train_aggregator"].gpu_s == 2 * 3600  # training.gpus 2
    text = costs.section(run, logs, config)
    assert "| sample_shard (train_pool) | 2 | 1.00 | 1.00 | 0.50 | 7.0 GB | - | 200 k |" in text
    # 2 logged steps x 10 tokens x 8 completions a step; the plan: 2 variants x 24 x 50
    assert "| train_aggregator | 1 | 1.00 | 2.00 | 2.00 | 60.0 GB | 160 | 2.4 k |" in text


def test_plan_job_counts_match_snakemakes_dry_run(workdir):
    """The plan counts jobs as the rule files make them: the same numbers as Snakemake's DAG of
    config/small.yaml."""
    import re

    proc = snakemake(
        "-n", "--quiet", "rules", "--configfile", str(REPO / "config/small.yaml"),
        "--replace-workflow-config", cwd=workdir,
    )  # fmt: skip
    stats = proc.stdout[proc.stdout.rindex("Job stats:") :]
    dag = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
    config = yaml.safe_load((REPO / "config/small.yaml").read_text())
    cfg.validate(config, SCHEMA)
    counts: dict[str, int] = {}
    for row in budget.plan(config, budget.Inputs(problems=cfg.problem_counts(config, workdir))):
        rule = row.rule.split(" ")[0]
        counts[rule] = counts.get(rule, 0) + row.jobs_total
    assert counts == {rule: dag[rule] for rule in counts}
