"""GRPO training through `accelerate launch` on CPU with a tiny model: the rule end to end, and
runs stopped by a signal or killed outright that resume where their checkpoint left off."""

from __future__ import annotations

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
from confagg.config import ConfigError
from confagg.resume import (
    complete_checkpoint,
    job_deadline,
    last_checkpoint,
    prepare_checkpoints,
    read_log,
    trim_log,
)
from confagg.settings import SettingsError, from_mapping, to_dict
from confagg.tables import SETS, write_table
from confagg.train import Settings, Training, correct, grpo_config
from conftest import BIN, REPO, snakemake

PROMPT = {"max_prompt_tokens": 512, "confidence": {"metric": "tail"}}
# Each step: 2 sets x 4 completions of at most 12 tokens.
TRAINING = {
    "gpus": 0,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "num_generations": 4,
    "temperature": 1.0,
    "max_completion_length": 12,
    "learning_rate": 5e-3,
    "lora": {"r": 4, "alpha": 8},
}
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
    """The ``aggregator`` and ``training`` sections of a config validated as the Snakefile
    does it (schema defaults filled in)."""
    config = {
        "run_name": "t",
        "generator": {"model": "smollm2-135m-instruct"},
        "training_pool": {"source": {"demo": {"n": 2, "seed": 1}}},
        "benchmarks": {"mini": {"source": {"demo": {"n": 2, "seed": 2}}}},
        **sections,
    }
    cfg.validate(config, REPO / "workflow/schemas/config.schema.yaml")
    return {k: config[k] for k in ("aggregator", "training")}


def test_settings_take_schema_defaults_and_name_bad_keys():
    settings = from_mapping(Settings, validated(training={"beta": 0.01, "lora": {"r": 8}}))
    training = settings.training
    assert training.beta == 0.01 and to_dict(training.lora) == {
        "r": 8,
        "alpha": 32,
        "dropout": 0.1,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }
    assert (training.num_generations, training.temperature) == (8, 1.5)
    assert training.learning_rate == 5e-5 and training.num_train_epochs == 1
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
    s = from_mapping(Settings, validated(training=training))
    args = grpo_config(s, tmp_path, seed=5, run_name="r")
    assert (args.beta, args.loss_type, args.save_steps) == (0.02, "grpo", 7)
    assert args.max_steps == -1 and args.use_cpu and not args.bf16  # this CPU machine
    assert (args.learning_rate, args.num_generations, args.temperature) == (5e-5, 8, 1.5)
    assert args.vllm_gpu_memory_utilization == 0.3 and args.vllm_enable_sleep_mode is False
    assert args.vllm_max_model_length == 16384 + 8192  # prompt budget + completion limit
    assert args.output_dir == str(tmp_path / "checkpoints") and args.seed == 5

    # a key added to the schema (and to Training) that is no GRPOConfig field and that the
    # trainer does not read would be ignored silently: it stops the run instead
    @dataclasses.dataclass(frozen=True)
    class WithStray(Training):
        warmup_ratioo: float = 0.1

    stray = dataclasses.replace(s, training=WithStray(**vars(s.training)))
    with pytest.raises(SettingsError, match=r"training: \['warmup_ratioo'\]"):
        grpo_config(stray, tmp_path, seed=5, run_name="r")


def test_reward_is_one_only_for_a_verified_final_box():
    completions = [
        "so the answer is \\boxed{42}.",
        "\\boxed{042}",
        "<think>maybe \\boxed{42}</think> no, it is \\boxed{41}",
        "forty-two",
    ]
    assert correct(completions, ["42"] * 4) == [1.0, 1.0, 0.0, 0.0]


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


def _launch(train: Path, model: Path, out: Path, settings: str) -> list[str]:
    """The command line of rule train_aggregator on CPU."""
    return [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(REPO / "config/accelerate/cpu.yaml"),
        "--num_processes",
        "1",
        "--num_cpu_threads_per_process",
        "2",
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
        "--run_name",
        "test",
        "--runtime_min",
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
    """The rule through Snakemake and `accelerate launch`: adapter, log, manifest, W&B offline."""
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
        "results/tiny/train/adapter",
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
    out = workdir / "results/tiny/train"
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
    assert any(0 < r["reward"] < 1 for r in rows)  # the format model gets some right

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 3
    assert manifest["seeds"]["run"] == 3
    assert manifest["settings"]["training"]["beta"] == 0.001  # schema default
    assert manifest["trainer_args"]["num_generations"] == 4
    assert {"torch", "transformers", "trl", "peft"} <= set(manifest["packages"])
    assert manifest["rollouts"] == "transformers-generate"
    assert len(manifest["attempts"]) == 1
    assert (workdir / "logs/tiny/train_aggregator/train_aggregator.benchmark.tsv").is_file()
    assert list((out / "checkpoints").rglob("offline-run-*")), "no offline W&B run"
    # the key never reaches a file the run wrote
    for path in [*out.rglob("*"), *(workdir / "logs").rglob("*")]:
        if path.is_file() and path.suffix in {".json", ".jsonl", ".log", ".yaml", ".txt", ""}:
            assert secret not in path.read_text(errors="ignore"), path


@pytest.mark.integration
def test_stopped_and_killed_runs_resume_without_repeating_steps(tmp_path, format_model):
    train = tmp_path / "train.parquet"
    write_table(_sets(6), train, SETS)
    out = tmp_path / "train"
    ckpts = out / "checkpoints"
    live = ckpts / "log.jsonl"
    cmd = _launch(train, format_model, out, _settings(max_steps=8, save_steps=3))

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
    attempts = json.loads((out / "manifest.json").read_text())["attempts"]
    assert [a["to_step"] for a in attempts] == [stopped, 8]  # the killed run left no record
    assert attempts[0]["stopped"] == "signal SIGUSR1"
    assert attempts[1]["from_step"] == step
