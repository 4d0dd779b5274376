"""GRPO training through `accelerate launch` on CPU with a tiny model: the rule end to end, runs
stopped by a signal or killed outright that resume where their checkpoint left off, with both
rollout paths (TRL's colocated vLLM, and the model's own generate), LoRA weights that reach the
colocated vLLM engine exactly, and two training processes."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from confagg import config as cfg
from confagg.answers import Reading
from confagg.config import GRPO_SET_BY_WORKFLOW, ConfigError
from confagg.resume import (
    complete_checkpoint,
    job_deadline,
    last_checkpoint,
    prepare_checkpoints,
    read_log,
    trim_log,
)
from confagg.settings import SettingsError, for_rule, from_mapping, to_dict
from confagg.tables import SETS, write_table
from confagg.train import Settings, Training, grpo_config, plan, reward
from conftest import BIN, REPO, snakemake

PROMPT = {"max_prompt_tokens": 512, "confidence": {"metric": "tail"}}
# Each step: 2 sets x 4 completions of at most 12 tokens; a small KV cache for vLLM rollouts.
TRAINING = {
    "gpus": 0,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "num_generations": 4,
    "temperature": 1.0,
    "max_completion_length": 12,
    "learning_rate": 5e-3,
    # no LoRA dropout: TRL scores the rollouts with the model in training mode, so dropout
    # would add noise to the log-prob gap between vLLM and the trained model (logp_gap)
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "vllm": {"kv_cache_memory_bytes": 64 << 20},
}
GENERATE = {"vllm": {"enabled": False}}  # the plain generate path
# vLLM's log-probs against the trained model's, float32 on both sides (measured: about 1e-6)
SYNC_TOLERANCE = 1e-5
ANSWERS = ("1", "2")  # what the format-trained model answers, about half and half


def _sets(n: int) -> pa.Table:
    """n SETS rows of two short candidates each; gold 1, so about half the answers are right."""
    rows = []
    for i in range(n):
        cands = [
            {
                "sample_idx": j,
                "text": f"{i} plus {j} is \\boxed{{{i + j}}}.",
                "answer": str(i + j),
                "correct": i + j == 1,
                "num_tokens": 9,
                "mean": 1.0,
                "bottom_10_percent": 1.0,
                "lowest_group": 1.0,
                "tail": float(j),
            }
            for j in range(2)
        ]
        rows.append(
            {
                "set_id": f"p{i}/0",
                "problem_id": f"p{i}",
                "problem": f"What is {i} + 1 - {i}?",
                "gold": "1",
                "hard": i % 2 == 0,
                "majority_answer": str(i),
                "candidates": cands,
            }
        )
    return pa.Table.from_pylist(rows, schema=SETS)


def validated(**sections) -> dict:
    """The train stage's settings as the rule passes them: the ``aggregator`` and ``training``
    sections of a config validated as the Snakefile does it (schema defaults filled in)."""
    config = {
        "run_name": "t",
        "generator": {"model": "smollm2-135m-instruct"},
        "training_pool": {"source": {"demo": {"n": 2, "seed": 1}}},
        "benchmarks": {"mini": {"source": {"demo": {"n": 2, "seed": 2}}}},
        **copy.deepcopy(sections),  # validation fills defaults in place: keep callers' dicts
    }
    cfg.validate(config, REPO / "workflow/schemas/config.schema.yaml")
    # the rule's settings for one variant; these tests' texts never think
    variant = next(iter(config["training"]["variants"]))
    settings = for_rule(config, "train_aggregator", variant=variant)
    settings["reading"]["require_think_end"] = False
    return settings


def test_settings_take_schema_defaults_and_name_bad_keys():
    settings = from_mapping(Settings, validated(training={"beta": 0.01, "lora": {"r": 8}}))
    training = settings.training
    assert training.grpo["beta"] == 0.01 and to_dict(training.lora) == {
        "r": 8,
        "alpha": 32,
        "dropout": 0.1,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }
    assert (training.grpo["num_generations"], training.grpo["temperature"]) == (8, 1.5)
    assert training.grpo["learning_rate"] == 5e-5 and training.grpo["num_train_epochs"] == 1
    assert settings.aggregator.prompt["confidence"]["enabled"] is True
    with pytest.raises(ConfigError, match=r"training\.lora"):
        validated(training={"lora": {"rank": 8}})
    with pytest.raises(ConfigError, match="num_generations"):
        validated(training={"num_generations": 1})
    # a rule that passes a section without a key is a bug the stage names
    partial = validated()
    del partial["training"]["lora"]["alpha"]
    with pytest.raises(SettingsError, match=r"settings\.training\.lora.*\['alpha'\]"):
        from_mapping(Settings, partial)


def test_grpo_config_takes_training_keys_by_name(tmp_path):
    training = {"beta": 0.02, "loss_type": "grpo", "save_steps": 7, "max_steps": None}
    # GRPOConfig fields the schema does not declare pass by name too (checked at start)
    training.update(max_grad_norm=0.5, epsilon_high=0.28, vllm={"tensor_parallel_size": 1})
    s = from_mapping(Settings, validated(training=training))
    args = grpo_config(s, tmp_path, seed=5, run_name="r")
    assert (args.beta, args.loss_type, args.save_steps) == (0.02, "grpo", 7)
    assert (args.max_grad_norm, args.epsilon_high, args.vllm_tensor_parallel_size) == (0.5, 0.28, 1)
    # what the workflow sets itself is exactly what the config may not set
    fixed = {k for k, v in vars(args).items() if k in GRPO_SET_BY_WORKFLOW}
    assert fixed == set(GRPO_SET_BY_WORKFLOW)
    assert args.max_steps == -1 and args.use_cpu and not args.bf16  # this CPU machine
    assert (args.learning_rate, args.num_generations, args.temperature) == (5e-5, 8, 1.5)
    assert args.use_vllm and args.vllm_mode == "colocate"  # on CPU as on GPU
    assert args.vllm_gpu_memory_utilization == 0.3 and args.vllm_enable_sleep_mode is False
    asleep = from_mapping(Settings, validated(training={"vllm": {"enable_sleep_mode": True}}))
    assert grpo_config(asleep, tmp_path, 5, "r").vllm_enable_sleep_mode is False  # none on CPU
    assert args.vllm_importance_sampling_correction is True  # TRL's default, kept
    exact = from_mapping(
        Settings, validated(training={"vllm": {"importance_sampling_correction": False}})
    )
    assert grpo_config(exact, tmp_path, 5, "r").vllm_importance_sampling_correction is False
    assert (
        grpo_config(from_mapping(Settings, validated(training=GENERATE)), tmp_path, 5, "r").use_vllm
        is False
    )
    assert args.vllm_max_model_length == 16384 + 16384  # prompt budget + completion limit
    assert args.output_dir == str(tmp_path / "checkpoints") and args.seed == 5

    # a key added to the schema that is no GRPOConfig field and that the trainer does not read
    # would be ignored silently: it stops the run instead
    grpo = {**s.training.grpo, "warmup_ratioo": 0.1}
    stray = dataclasses.replace(s, training=dataclasses.replace(s.training, grpo=grpo))
    with pytest.raises(SettingsError, match=r"training: \['warmup_ratioo'\]"):
        grpo_config(stray, tmp_path, seed=5, run_name="r")


def test_plan_counts_sets_steps_and_completions():
    def training(**changes) -> Training:
        section = {**TRAINING, "max_steps": None, **changes}
        return from_mapping(Settings, validated(training=section)).training

    # 2 sets x 4 completions per step; 7 sets: 3 whole steps (TRL drops the last set)
    p = plan(7, training(), processes=1)
    assert (p.completions_per_step, p.sets_per_step, p.steps_per_epoch, p.steps) == (8, 2, 3, 3)
    assert p.max_rollout_tokens == 3 * 8 * 12
    assert plan(7, training(num_train_epochs=2.5), 1).steps == 8  # ceil(2.5 x 3)
    assert plan(7, training(max_steps=5), 1).steps == 5
    assert plan(7, training(), processes=2).sets_per_step == 4
    # the full-scale default: 1024 completions per optimizer step (128 sets x 8)
    full = yaml.safe_load((REPO / "config/config.yaml").read_text())["training"]
    big = plan(100_000, training(**full), processes=max(full["gpus"], 1))
    assert (big.completions_per_step, big.sets_per_step) == (1024, 128)
    with pytest.raises(ValueError, match="do not fill one optimizer step"):
        plan(1, training(), 1)


def test_plan_command_prints_the_plan(tmp_path):
    write_table(_sets(6), tmp_path / "train.parquet", SETS)
    settings = json.dumps(validated(aggregator={"prompt": PROMPT}, training=TRAINING))
    cmd = [str(BIN / "python"), "-m", "confagg.train", "--plan"]
    rule = subprocess.run(
        [*cmd, "--settings", settings, "--train", str(tmp_path / "train.parquet")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert rule.stdout.startswith("6 training sets; 8 completions per optimizer step")
    assert json.loads(rule.stdout.splitlines()[-1])["steps_per_epoch"] == 3
    # a user's question: the full-scale config with 150,000 sets
    full = subprocess.run(
        [*cmd, "--configfile", "config/config.yaml", "--sets", "150000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    planned = json.loads(full.stdout.splitlines()[-1])
    assert (planned["completions_per_step"], planned["steps_per_epoch"]) == (1024, 1171)


def test_prompts_are_rendered_once_in_batches(tmp_path, tiny_model, monkeypatch):
    """The sets are read batch by batch and rendered into a cache that a resumed run reads
    instead of rendering again; other sets or settings get their own cache."""
    from transformers import AutoTokenizer

    from confagg import tables, trainset
    from confagg.aggregator_prompt import render_prompt

    write_table(_sets(7), tmp_path / "train.parquet", SETS)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    aggregator = validated(aggregator={"prompt": PROMPT})["aggregator"]
    batches = []

    def small_batches(path, schema, columns=None, batch_bytes=None, row_groups=None):
        for batch in tables.iter_batches(path, schema, columns, 1, row_groups):  # 1 row each
            batches.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(trainset, "iter_batches", small_batches)
    args = (str(tmp_path / "train.parquet"), tok, aggregator, tmp_path / "ckpt", "sha-a")
    first = trainset.load(*args, limit=5)
    assert batches == [1] * 5  # the first 5 sets, one batch at a time, then no further read
    assert (first.sets, first.truncated) == (5, 0)
    rows = first.dataset()
    (row,) = _sets(1).to_pylist()
    expected = render_prompt(tok, row["problem"], row["candidates"], aggregator["prompt"]).text
    assert rows[0]["prompt"] == expected and rows[0]["gold"] == "1"
    assert rows.column_names == ["set_id", "prompt", "gold", "prompt_tokens", "truncated"]
    # a resumed run reads the cache: nothing is read from the sets or rendered again
    monkeypatch.setattr("confagg.aggregator_prompt.render_prompt", None)
    again = trainset.load(*args, limit=5)
    assert again == first and len(batches) == 5
    monkeypatch.undo()
    monkeypatch.setattr(trainset, "iter_batches", small_batches)
    with pytest.raises(FileNotFoundError):  # not rendered by the main process yet
        trainset.load(*args, limit=7, render=False)
    other = trainset.load(*args)  # all 7 sets: another cache
    assert other.path != first.path and other.sets == 7
    trainset.remove_stale(args[3], {other.path})
    assert sorted(p.name for p in args[3].iterdir()) == [other.path.name]


def _boxed(require_think_end: bool) -> Reading:
    return Reading("boxed", "</think>", require_think_end)


def test_reward_is_one_only_for_a_verified_final_box():
    completions = [
        "so the answer is \\boxed{42}.",
        "\\boxed{042}",
        "<think>maybe \\boxed{42}</think> no, it is \\boxed{41}",
        "forty-two",
    ]
    assert reward(_boxed(False), 5.0)(completions, ["42"] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_reward_in_thinking_mode_is_zero_for_thinking_that_never_ended():
    finished = "<think>it is 42</think> so \\boxed{42}"
    cut = "<think>it is \\boxed{42}, let me check that again"  # stopped by max_completion_length
    assert reward(_boxed(True), 5.0)([finished, cut], ["42", "42"]) == [1.0, 0.0]
    assert reward(_boxed(False), 5.0)([finished, cut], ["42", "42"]) == [1.0, 1.0]


def test_last_checkpoint_skips_and_removes_incomplete_ones(tmp_path):
    for step, state in [(2, "{}"), (4, "{}"), (6, None), (7, '{"global_st')]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert (tmp_path / "checkpoint-7").exists()  # only the main process tidies up
    assert last_checkpoint(tmp_path, remove_incomplete=True) == tmp_path / "checkpoint-4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert last_checkpoint(tmp_path / "missing") is None


def test_checkpoints_of_other_settings_are_never_resumed(tmp_path):
    def checkpoint(step):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}/trainer_state.json").write_text("{}")

    first = {"settings": {"training": {"max_steps": 4}}, "seed": 1}
    assert prepare_checkpoints(tmp_path, first) is None
    checkpoint(2)
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    assert prepare_checkpoints(tmp_path, first) == tmp_path / "checkpoint-2"
    assert [r["step"] for r in read_log(tmp_path / "log.jsonl")] == [1, 2]
    # an unfinished run with other settings: an error naming the change, nothing removed
    second = {"settings": {"training": {"max_steps": 6}}, "seed": 1}
    with pytest.raises(SystemExit, match=r"training\.max_steps: 4 -> 6"):
        prepare_checkpoints(tmp_path, second)
    assert (tmp_path / "checkpoint-2").is_dir()
    # once that run completed, new settings start afresh
    run = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**run, "completed": True}))
    assert prepare_checkpoints(tmp_path, second) is None
    assert not (tmp_path / "checkpoint-2").exists() and read_log(tmp_path / "log.jsonl") == []


def test_log_trimmed_to_the_resumed_step(tmp_path):
    path = tmp_path / "log.jsonl"
    rows = [{"step": s, "split": "train"} for s in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "spl')
    assert [r["step"] for r in read_log(path)] == [1, 2, 3, 4, 5]  # torn last line skipped
    trim_log(path, 3)
    assert [r["step"] for r in read_log(path)] == [1, 2, 3]


def test_deadline_from_slurm_or_runtime(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_START_TIME", raising=False)
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1000000")
    assert job_deadline(60, margin_min=10) == 1000000 - 600
    monkeypatch.delenv("SLURM_JOB_END_TIME")
    monkeypatch.setenv("SLURM_JOB_START_TIME", "5000")
    assert job_deadline(60, margin_min=10) == 5000 + 3600 - 600
    assert job_deadline(None, margin_min=10) is None


@pytest.fixture(scope="module")
def format_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny random Qwen3, briefly fine-tuned to answer aggregator prompts with
    ``\\boxed{1}`` or ``\\boxed{2}``: rewards then vary within a group and GRPO has a signal
    (a random model never writes a box, so every advantage, and every gradient, would be 0)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from confagg.aggregator_prompt import render_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    prompt_cfg = validated(aggregator={"prompt": PROMPT})["aggregator"]["prompt"]
    seqs = []
    for row in _sets(4).to_pylist():
        text = render_prompt(tok, row["problem"], row["candidates"], prompt_cfg).text
        prompt = tok(text)["input_ids"]
        for answer in ANSWERS:
            done = tok(f"The answer is \\boxed{{{answer}}}.<|im_end|>", add_special_tokens=False)
            seqs.append((prompt + done["input_ids"], [-100] * len(prompt) + done["input_ids"]))
    width = max(len(s) for s, _ in seqs)
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s, _ in seqs])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in seqs])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(25):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    out = tmp_path_factory.mktemp("models") / "tiny-format"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _settings(**training) -> str:
    """The --settings JSON the rule passes: the validated config's two sections."""
    return json.dumps(validated(aggregator={"prompt": PROMPT}, training={**TRAINING, **training}))


def _launch(train: Path, model: Path, out: Path, settings: str, processes: int = 1) -> list[str]:
    """The command line of rule train_aggregator on CPU; with several processes, accelerate's
    torchrun launcher (``--multi_gpu``, which the CPU config turns into DDP over gloo)."""
    return [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(REPO / "config/accelerate/cpu.yaml"),
        *(["--multi_gpu"] if processes > 1 else []),
        "--num_processes",
        str(processes),
        "--num_cpu_threads_per_process",
        str(max(2 // processes, 1)),
        "-m",
        "confagg.train",
        "--train",
        str(train),
        "--model",
        str(model),
        "--out",
        str(out),
        "--settings",
        settings,
        "--seed",
        "3",
        "--run-name",
        "test",
        "--runtime-min",
        "600",
    ]


def _env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}


def _start(cmd: list[str], stderr: Path) -> subprocess.Popen:
    """Start a run in its own process group, behind the rule's `trap '' USR1` (the launcher
    ignores USR1; the trainer installs its own handler)."""
    with open(stderr, "w") as err:
        return subprocess.Popen(
            ["bash", "-c", 'trap "" USR1; exec "$@"', "bash", *cmd],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )


def _wait_for(proc: subprocess.Popen, stderr: Path, ready, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"run ended early:\n{stderr.read_text()[-4000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _checkpoints(folder: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if complete_checkpoint(p)
    )


def _lora_weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


@pytest.mark.integration
def test_train_rule_produces_a_loadable_adapter(workdir, format_model):
    """The rule through Snakemake and `accelerate launch` (default rollouts: colocated vLLM):
    adapter, log, manifest, W&B offline."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    curated = workdir / "results/tiny/curated"
    curated.mkdir(parents=True)
    write_table(_sets(6), curated / "train.parquet", SETS)
    write_table(_sets(2), curated / "val.parquet", SETS)
    cfg = {
        "run_name": "tiny",
        "seed": 3,
        "generator": {"model": str(format_model)},
        "training_pool": {"source": {"demo": {"n": 2, "seed": 1}}},
        "benchmarks": {"mini": {"source": {"demo": {"n": 2, "seed": 2}}}},
        "aggregator": {"prompt": PROMPT},
        "training": {
            **TRAINING,
            "max_steps": 3,
            "save_steps": 2,
            "eval_steps": 2,  # GRPO's evaluation on the validation sets, logged as "eval"
            "eval_sets": 2,
            "wandb": {"enabled": True, "mode": "offline"},
        },
    }
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    secret = "test-secret-wandb-key-0123456789"
    snakemake(
        "results/tiny/train/confidence/seed0/adapter",
        "--configfile",
        "tiny.yaml",
        "--replace-workflow-config",
        "--cores",
        "2",
        "--allowed-rules",
        "train_aggregator",
        cwd=workdir,
        env={"WANDB_API_KEY": secret},
    )
    out = workdir / "results/tiny/train/confidence/seed0"  # one run per variant and seed
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert not (out / ".adapter.tmp").exists()

    # loadable onto the base model, and trained: LoRA B starts at zero, so any change shows
    base = AutoModelForCausalLM.from_pretrained(format_model)
    model = PeftModel.from_pretrained(base, adapter)
    assert model.peft_config["default"].r == 4
    weights = _lora_weights(adapter)
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert len(lora_b) == 2 * 4  # 2 layers x q/k/v/o
    assert max(float(w.abs().max()) for w in lora_b) > 0
    assert all(torch.isfinite(w).all() for w in weights.values())

    logged = read_log(out / "log.jsonl")
    rows = [r for r in logged if r["split"] == "train"]
    evals = [r for r in logged if r["split"] == "eval"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # every eval_steps, and after the last step (transformers' Trainer evaluates at the end)
    assert [r["step"] for r in evals] == [2, 3]
    assert all(0.0 <= r["reward"] <= 1.0 for r in evals)
    for row in rows:
        assert 0.0 <= row["reward"] <= 1.0
        assert row["kl"] is not None and row["loss"] is not None
        assert 0 < row["completion_length"] <= 12
        assert 0.0 <= row["truncated"] <= 1.0
        # rollouts came from vLLM, with the trained weights: TRL compares every sampled
        # token's log-prob in vLLM with the training model's
        assert row["logp_gap"] < SYNC_TOLERANCE
    assert any(0 < r["reward"] < 1 for r in rows)  # the format model gets some right

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 3
    assert manifest["seeds"]["run"] == 3
    assert manifest["settings"]["training"]["beta"] == 0.001  # schema default
    assert manifest["trainer_args"]["num_generations"] == 4
    assert {"torch", "transformers", "trl", "peft"} <= set(manifest["packages"])
    assert manifest["rollouts"] == "vllm-colocate"
    assert "vllm-cpu" in manifest["rollout_adjustments"]
    assert len(manifest["attempts"]) == 1
    assert (workdir / "logs/tiny/train_aggregator/confidence/seed0.benchmark.tsv").is_file()
    assert list((out / "checkpoints").rglob("offline-run-*")), "no offline W&B run"
    # the key never reaches a file the run wrote
    for path in [*out.rglob("*"), *(workdir / "logs").rglob("*")]:
        if path.is_file() and path.suffix in {".json", ".jsonl", ".log", ".yaml", ".txt", ""}:
            assert secret not in path.read_text(errors="ignore"), path


@pytest.mark.integration
@pytest.mark.parametrize("rollouts", ["vllm-colocate", "transformers-generate"])
def test_stopped_and_killed_runs_resume_without_repeating_steps(tmp_path, format_model, rollouts):
    train = tmp_path / "train.parquet"
    write_table(_sets(6), train, SETS)
    out = tmp_path / "train"
    ckpts = out / "checkpoints"
    live = ckpts / "log.jsonl"
    path = {} if rollouts == "vllm-colocate" else GENERATE
    cmd = _launch(train, format_model, out, _settings(max_steps=8, save_steps=3, **path))

    # 1. SIGUSR1 (as Slurm sends before a time limit): the step finishes, a checkpoint is saved
    #    at that step although it is no multiple of save_steps, and the run exits
    err1 = tmp_path / "run1.err"
    proc = _start(cmd, err1)
    _wait_for(proc, err1, lambda: bool(read_log(live)))
    os.killpg(proc.pid, signal.SIGUSR1)
    assert proc.wait(timeout=600) != 0
    stopped = int(re.search(r"stopped early at step (\d+)/8", err1.read_text())[1])
    assert "signal SIGUSR1" in err1.read_text()
    assert stopped in _checkpoints(ckpts)
    assert not (out / "adapter").exists()

    # 2. resumed, then killed outright after its next checkpoint
    err2 = tmp_path / "run2.err"
    proc = _start(cmd, err2)
    _wait_for(proc, err2, lambda: max(_checkpoints(ckpts), default=0) > stopped)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert f"resuming from {ckpts}/checkpoint-{stopped} (step {stopped})" in err2.read_text()
    killed_at = last_checkpoint(ckpts)
    step = int(killed_at.name.split("-")[1])
    assert stopped < step < 8 and not (out / "adapter").exists()

    # 3. resumed from the newest complete checkpoint, runs to the end
    run3 = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=900)
    assert run3.returncode == 0, run3.stderr[-4000:]
    assert f"resuming from {ckpts}/checkpoint-{step} (step {step})" in run3.stderr
    state = json.loads((ckpts / "checkpoint-8/trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert (out / "adapter/adapter_model.safetensors").is_file()
    steps = [r["step"] for r in read_log(out / "log.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, 9))  # every step once: none lost, none repeated
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rollouts"] == rollouts
    attempts = manifest["attempts"]
    assert [a["to_step"] for a in attempts] == [stopped, 8]  # the killed run left no record
    assert attempts[0]["stopped"] == "signal SIGUSR1"
    assert attempts[1]["from_step"] == step


def _lora_sync_probe(model: str, train: str, out: str) -> dict:
    """(In a fresh process: TRL's colocated engine sets up torch.distributed.) Two GRPO steps
    with LoRA and vLLM rollouts, built as the train stage builds them; then TRL's own weight
    sync, and the log-probs of a probe text in vLLM against the trained model's with the
    adapter merged, and against the base model's."""
    import torch
    from vllm import SamplingParams

    from confagg.resume import callbacks
    from confagg.settings import load
    from confagg.train import TrainArgs, make_trainer

    settings = _settings(num_train_epochs=1, max_steps=None, learning_rate=5e-2, save_steps=100)
    args = TrainArgs(train=train, model=model, out=out, settings=settings)
    s = load(Settings, settings)
    trainer, data = make_trainer(s, args, Path(out), 11, callbacks(Path(out) / "log.jsonl", None))
    trainer.train()
    engine = trainer.vllm_generation
    engine.sync_weights()  # what the next rollout round does first
    probe = data.dataset()[0]["prompt"] + "The answer is \\boxed{1}."
    ids = trainer.processing_class(probe)["input_ids"]
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    (result,) = engine.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
    pairs = zip(result.prompt_logprobs[1:], ids[1:], strict=True)
    in_vllm = torch.tensor([d[t].logprob for d, t in pairs])

    peft_model = trainer.model.eval()

    def logprobs() -> torch.Tensor:
        with torch.no_grad():
            logits = peft_model(torch.tensor([ids])).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]

    peft_model.merge_adapter()
    merged = logprobs()
    peft_model.unmerge_adapter()
    with peft_model.disable_adapter():
        base = logprobs()
    return {
        "steps": trainer.state.global_step,
        "planned": plan(data.sets, s.training, 1).steps,
        "use_vllm": trainer.args.use_vllm,
        "logp_gaps": [r["logp_gap"] for r in read_log(Path(out) / "log.jsonl")],
        "vllm_vs_trained": float((in_vllm - merged).abs().max()),
        "trained_vs_base": float((merged - base).abs().max()),
    }


@pytest.mark.integration
def test_lora_weights_reach_the_colocated_vllm_engine(tmp_path, format_model):
    """The weight sync is exact: after GRPO steps with LoRA at a large learning rate, vLLM's
    log-probs equal the trained (merged) model's, and clearly differ from the base model's."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    write_table(_sets(4), tmp_path / "train.parquet", SETS)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        probe = pool.submit(
            _lora_sync_probe, str(format_model), str(tmp_path / "train.parquet"), str(tmp_path)
        ).result(timeout=900)
    # one epoch of 4 sets, 2 per step: the plan is TRL's schedule
    assert probe["steps"] == probe["planned"] == 2
    assert probe["use_vllm"] and len(probe["logp_gaps"]) == 2
    assert all(gap < SYNC_TOLERANCE for gap in probe["logp_gaps"])  # rollouts from vLLM
    assert probe["vllm_vs_trained"] < SYNC_TOLERANCE
    assert probe["trained_vs_base"] > 1e-2  # the steps did change the model


@pytest.mark.integration
def test_two_training_processes_on_cpu(tmp_path, format_model):
    """`accelerate launch` with 2 processes (DDP over gloo), each with its colocated vLLM
    engine: the run completes, and both processes stopped at the same, final step."""
    write_table(_sets(8), tmp_path / "train.parquet", SETS)
    out = tmp_path / "train"
    settings = _settings(max_steps=2, save_steps=1)
    cmd = _launch(tmp_path / "train.parquet", format_model, out, settings, processes=2)
    run = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "x 2 process(es), rollouts: vllm-colocate" in run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["processes"], manifest["rollouts"], manifest["steps"]) == (
        2,
        "vllm-colocate",
        2,
    )
    marked = json.loads((out / "checkpoints/run.json").read_text())
    assert marked["fingerprint"]["num_processes"] == 2  # known from the start, not only by TRL
    rows = [r for r in read_log(out / "log.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["logp_gap"] < SYNC_TOLERANCE for r in rows)
    assert (out / "adapter/adapter_model.safetensors").is_file()
