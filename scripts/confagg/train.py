"""Train stage: GRPO (TRL ``GRPOTrainer``) with a PEFT LoRA adapter on the aggregator model.

Run through accelerate (the rule ``train_aggregator`` does this)::

    accelerate launch --config_file config/accelerate/cpu.yaml --num_processes 1 \\
        -m confagg.train --train results/<run>/curated/train.parquet --model <folder> \\
        --out results/<run>/train --settings '<JSON: aggregator + training sections>' ...

Each training set (``tables.SETS``) becomes one prompt (``confagg.aggregator_prompt``, the same
builder evaluation uses); the reward of a completion is 1 when its last ``\\boxed{}`` verifies
against the set's gold answer (``confagg.verify.is_correct``), else 0. Rollouts use TRL's vLLM
integration in colocate mode on GPU and plain ``generate`` on CPU.

The settings are the config's ``aggregator`` and ``training`` sections as the Snakefile
validated them (defaults filled in from the schema, the only home of defaults). The keys of
``training`` that are ``GRPOConfig`` fields pass to TRL by name (``training.vllm.<key>`` as
``vllm_<key>``); the others are read here (:data:`OWN_KEYS`).

Checkpoints, resumption and the job's time limit: ``confagg.resume``. Outputs, written only
when training is complete: ``<out>/adapter/`` (the LoRA adapter and tokenizer, renamed into
place from a temporary folder), ``<out>/log.jsonl`` (the final log, rows as in
``confagg.resume``) and ``<out>/manifest.json`` (``confagg.manifest``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from confagg import manifest, settings
from confagg.answers import extract_boxed
from confagg.resume import (
    EXIT_STOPPED,
    PROCESS_START,
    callbacks,
    job_deadline,
    log,
    mark_run,
    read_log,
    record_attempt,
    resume_point,
    sha256,
    step_of,
    write_log,
)
from confagg.seeds import derive_seed
from confagg.tables import SETS, atomic_dir, read_table, write_json

# Keys of the training section that are no GRPOConfig field, and what reads them.
OWN_KEYS = {
    "gpus": "the rule (accelerate processes)",
    "lora": "PEFT LoraConfig",
    "vllm": "GRPOConfig vllm_* fields",
    "stop_margin_min": "confagg.resume (deadline)",
    "eval_sets": "the validation data",
    "wandb": "W&B environment",
}
# Keys of training.vllm that are no ``vllm_<key>`` GRPOConfig field.
OWN_VLLM_KEYS = {"enabled": "GRPOConfig use_vllm"}
# Settings that may change between a run and its resumption (they do not change the training).
RESUMABLE_CHANGES = {"stop_margin_min", "wandb", "save_total_limit"}


# --------------------------------------------------------------------------------------------
# Settings (the schema documents every key and holds the defaults)


@dataclass(frozen=True)
class Lora:
    r: int
    alpha: float
    dropout: float
    target_modules: list[str]


@dataclass(frozen=True)
class Vllm:
    enabled: bool
    gpu_memory_utilization: float
    enable_sleep_mode: bool


@dataclass(frozen=True)
class Wandb:
    enabled: bool
    mode: str
    project: str
    entity: str | None


@dataclass(frozen=True)
class Training:
    gpus: int
    learning_rate: float
    lr_scheduler_type: str
    num_train_epochs: float
    max_steps: int | None
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    num_generations: int
    temperature: float
    top_p: float
    max_completion_length: int
    beta: float
    loss_type: str
    gradient_checkpointing: bool
    bf16: bool | None
    lora: Lora
    vllm: Vllm
    save_steps: int
    save_total_limit: int | None
    stop_margin_min: float
    eval_steps: int | None
    eval_sets: int
    wandb: Wandb


@dataclass(frozen=True)
class Aggregator:
    model: str | None
    chat_template_kwargs: dict
    prompt: dict  # the aggregator.prompt section, read by confagg.aggregator_prompt


@dataclass(frozen=True)
class Settings:
    aggregator: Aggregator
    training: Training


@dataclass
class TrainArgs:
    """Command line of the train stage (``--help`` lists it)."""

    train: str = field(metadata={"help": "training sets (tables.SETS parquet)"})
    model: str = field(metadata={"help": "base model folder of the aggregator"})
    out: str = field(metadata={"help": "output folder: adapter/, log.jsonl, manifest.json"})
    settings: str = field(
        metadata={
            "help": "JSON with the validated config's 'aggregator' and 'training' sections "
            "(every key; the rule passes them)"
        }
    )
    val: str | None = field(default=None, metadata={"help": "validation sets (for eval_steps)"})
    seed: int = field(default=0, metadata={"help": "run seed; the training seed derives from it"})
    run_name: str = field(default="confagg", metadata={"help": "name for trackers"})
    runtime_min: float | None = field(
        default=None, metadata={"help": "the job's time limit in minutes (resources.runtime)"}
    )


# --------------------------------------------------------------------------------------------
# Data and reward


@dataclass(frozen=True)
class Prompts:
    """The trainer's columns (``prompt`` rendered, ``gold``, ``set_id``, ``prompt_tokens``) and
    how many prompts the token budget truncated."""

    columns: dict[str, list]
    num_cut: int

    def describe(self, path: str) -> str:
        lengths = self.columns["prompt_tokens"]
        return (
            f"{len(lengths)} prompts from {path}: {min(lengths)}-{max(lengths)} tokens, "
            f"{self.num_cut} truncated to max_prompt_tokens"
        )


def load_prompts(path: str, tokenizer, aggregator: Aggregator, limit: int | None = None) -> Prompts:
    """The rendered aggregator prompts of a SETS parquet file (its first ``limit`` sets)."""
    from confagg.aggregator_prompt import PromptTooLong, render_prompt

    table = read_table(path, SETS)
    if limit is not None:
        table = table.slice(0, limit)
    if table.num_rows == 0:
        raise ValueError(f"{path}: no training sets")
    cols: dict[str, list] = {"prompt": [], "gold": [], "set_id": [], "prompt_tokens": []}
    cut = 0
    for row in table.to_pylist():
        try:
            rendered = render_prompt(
                tokenizer,
                row["problem"],
                row["candidates"],
                aggregator.prompt,
                aggregator.chat_template_kwargs,
            )
        except PromptTooLong as e:
            raise PromptTooLong(f"{path}: set {row['set_id']}: {e}") from None
        cut += rendered.truncated
        cols["prompt"].append(rendered.text)
        cols["gold"].append(row["gold"])
        cols["set_id"].append(row["set_id"])
        cols["prompt_tokens"].append(rendered.num_tokens)
    return Prompts(cols, cut)


def correct(completions: list[str], gold: list[str], **_: Any) -> list[float]:
    """GRPO reward: 1.0 when the completion's last ``\\boxed{}`` verifies against gold, else 0."""
    from confagg.verify import is_correct

    return [
        1.0 if is_correct(answer, extract_boxed(text)) else 0.0
        for text, answer in zip(completions, gold, strict=True)
    ]


# --------------------------------------------------------------------------------------------
# Trainer arguments


def _by_name(section: dict, fields: set[str], prefix: str, own: dict, where: str) -> dict:
    """The keys of a config section that are GRPOConfig fields (as ``prefix + key``); a key
    that is neither such a field nor read by the trainer (``own``) is a bug: it would be
    silently ignored."""
    stray = sorted(k for k in section if prefix + k not in fields and k not in own)
    if stray:
        raise settings.SettingsError(
            f"{where}: {stray} are neither GRPOConfig fields (TRL renamed them?) nor keys the "
            f"trainer reads ({sorted(own)})"
        )
    return {prefix + k: v for k, v in section.items() if prefix + k in fields and k not in own}


def grpo_config(s: Settings, out: Path, seed: int, run_name: str):
    """TRL ``GRPOConfig`` from the settings (CPU or GPU chosen here)."""
    import torch
    from trl import GRPOConfig

    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    training = settings.to_dict(s.training)
    cuda = torch.cuda.is_available()
    bf16 = cuda if s.training.bf16 is None else s.training.bf16
    max_prompt = s.aggregator.prompt["max_prompt_tokens"]
    evaluate = s.training.eval_steps is not None
    by_name = {
        **_by_name(training, fields, "", OWN_KEYS, "training"),
        **_by_name(training["vllm"], fields, "vllm_", OWN_VLLM_KEYS, "training.vllm"),
    }
    # values that the config leaves to the machine or to a null, and those the workflow fixes
    fixed = dict(
        max_steps=s.training.max_steps or -1,
        bf16=bf16,
        use_cpu=not cuda,
        model_init_kwargs={"dtype": "auto" if bf16 else "float32"},
        use_vllm=cuda and s.training.vllm.enabled,
        vllm_mode="colocate",
        vllm_max_model_length=(
            max_prompt + s.training.max_completion_length if max_prompt else None
        ),
        output_dir=str(out / "checkpoints"),
        run_name=run_name,
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        save_strategy="steps",
        eval_strategy="steps" if evaluate else "no",
        per_device_eval_batch_size=s.training.num_generations,
        report_to=["wandb"] if s.training.wandb.enabled else "none",
        disable_tqdm=True,
        log_completions=False,
    )
    return GRPOConfig(**(by_name | fixed))


def setup_wandb(wandb: Wandb, out: Path, run_name: str) -> None:
    """W&B through environment variables (offline unless configured); one W&B run per training
    run, continued across resumptions. The API key is read by wandb from WANDB_API_KEY only."""
    if not wandb.enabled:
        return
    os.environ.setdefault("WANDB_MODE", wandb.mode)
    os.environ.setdefault("WANDB_PROJECT", wandb.project)
    if wandb.entity:
        os.environ.setdefault("WANDB_ENTITY", wandb.entity)
    os.environ.setdefault("WANDB_DIR", str((out / "checkpoints").absolute()))
    os.environ.setdefault("WANDB_NAME", run_name)
    os.environ.setdefault("WANDB_RUN_ID", f"{run_name}-{derive_seed(out.absolute()):08x}")
    os.environ.setdefault("WANDB_RESUME", "allow")


# --------------------------------------------------------------------------------------------
# Training


def fingerprint(s: Settings, args: TrainArgs, seed: int, processes: int) -> dict:
    """What the checkpoints belong to: a resume with anything else here is refused."""
    plain = settings.to_dict(s)
    training = {k: v for k, v in plain["training"].items() if k not in RESUMABLE_CHANGES}
    return {
        "settings": {"aggregator": plain["aggregator"], "training": training},
        "seed": seed,
        "num_processes": processes,
        "model": args.model,
        "train_sha256": sha256(args.train),
    }


def make_trainer(s: Settings, args: TrainArgs, out: Path, seed: int, stop_callbacks):
    """The GRPOTrainer over the training (and validation) prompts, and the training prompts."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, PrinterCallback
    from trl import GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = load_prompts(args.train, tokenizer, s.aggregator)
    log(f"training: {data.describe(args.train)}")
    eval_data = None
    if s.training.eval_steps is not None:
        if not args.val:
            raise SystemExit("training.eval_steps is set but no --val sets were given")
        eval_data = load_prompts(args.val, tokenizer, s.aggregator, limit=s.training.eval_sets)

    setup_wandb(s.training.wandb, out, args.run_name)
    lora = s.training.lora
    trainer = GRPOTrainer(
        model=args.model,
        reward_funcs=[correct],
        args=grpo_config(s, out, seed, args.run_name),
        train_dataset=Dataset.from_dict(data.columns),
        eval_dataset=Dataset.from_dict(eval_data.columns) if eval_data else None,
        peft_config=LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        ),
        callbacks=list(stop_callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # JsonlLog prints one line per step instead
    return trainer, data


def rollout_path(trainer) -> str:
    """Which rollout path the trainer runs (recorded in the manifest)."""
    return "vllm-colocate" if trainer.args.use_vllm else "transformers-generate"


def _finish(trainer, out: Path, live_log: Path, record: dict) -> None:
    """Write the outputs of a complete run: log, manifest, and the adapter (atomically, last)."""
    from accelerate.utils import broadcast_object_list

    acc = trainer.accelerator
    main = acc.is_main_process
    with atomic_dir(out / "adapter") if main else nullcontext() as tmp:
        # every process saves (a sharded model needs them all), into the main process's folder
        (path,) = broadcast_object_list([str(tmp) if main else None])
        trainer.save_model(path)
        acc.wait_for_everyone()
        if main:
            rows = [r for r in read_log(live_log) if r["step"] <= trainer.state.global_step]
            write_log(rows, out / "log.jsonl")
            write_json(record, out / "manifest.json")
    if main:
        log(f"wrote {out / 'adapter'}, {out / 'log.jsonl'} ({len(rows)} rows), manifest.json")


def _manifest(args: TrainArgs, s: Settings, trainer, data: Prompts, seed: int) -> dict:
    """The manifest of the completed run (``confagg.manifest``)."""
    return manifest.build(
        run_name=args.run_name,
        steps=trainer.state.global_step,
        args=asdict(args) | {"settings": "(see settings)"},
        settings=settings.to_dict(s),
        grpo_args=trainer.args,
        inputs={
            "train": {
                "path": args.train,
                "sets": len(data.columns["prompt"]),
                "truncated": data.num_cut,
            },
            "val": args.val,
            "model": args.model,
        },
        seeds={"run": args.seed, "train": seed},
        rollouts=rollout_path(trainer),
        processes=trainer.accelerator.num_processes,
        attempts=read_log(Path(args.out) / "checkpoints/attempts.jsonl"),
    )


def train(args: TrainArgs) -> int:
    """Train (or resume) and write the outputs; returns the process exit code."""
    from accelerate import PartialState

    state = PartialState()
    s = settings.load(Settings, args.settings)
    out = Path(args.out)
    ckpt_dir = out / "checkpoints"
    seed = derive_seed(args.seed, "train")
    run_id = fingerprint(s, args, seed, state.num_processes)
    resume = resume_point(ckpt_dir, run_id)
    start_step = step_of(resume) if resume else 0

    deadline = job_deadline(args.runtime_min, s.training.stop_margin_min)
    stopper, jsonl = callbacks(ckpt_dir / "log.jsonl", deadline)
    trainer, data = make_trainer(s, args, out, seed, (stopper, jsonl))
    log(
        f"device {state.device} x {state.num_processes} process(es), rollouts: "
        f"{rollout_path(trainer)}, max_steps {trainer.args.max_steps}, seed {seed}"
    )
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    step, max_steps = trainer.state.global_step, trainer.state.max_steps
    done = step >= max_steps
    if state.is_main_process:
        record_attempt(
            ckpt_dir,
            manifest.attempt(PROCESS_START, start_step, step, None if done else stopper.reason),
        )
    if not done:
        log(
            f"stopped early at step {step}/{max_steps} ({stopper.reason}); checkpoint saved in "
            f"{ckpt_dir}: run again to resume"
        )
        return EXIT_STOPPED
    _finish(trainer, out, ckpt_dir / "log.jsonl", _manifest(args, s, trainer, data, seed))
    if state.is_main_process:
        mark_run(ckpt_dir, run_id, completed=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(TrainArgs, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
