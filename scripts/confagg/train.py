"""Train stage: GRPO (TRL ``GRPOTrainer``) with a PEFT LoRA adapter on the aggregator model.

Run through accelerate (the rule ``train_aggregator`` does this)::

    accelerate launch --config_file config/accelerate/cpu.yaml --num_processes 1 \\
        -m confagg.train --train results/<run>/curated/train.parquet --model <folder> \\
        --out results/<run>/train --settings '<JSON: aggregator + training sections>' ...

Each training set (``tables.SETS``) becomes one prompt (``confagg.aggregator_prompt``, the same
builder evaluation uses); the reward of a completion is 1 when its final answer, read as every
answer is (``grading.extraction`` after ``grading.think_end``), verifies against the set's gold
answer (``confagg.verifier.read_and_verify``, ``grading.timeout``), else 0; with
``require_think_end`` (thinking mode) a completion that never closes its thinking gets 0.

Rollouts: with ``training.vllm.enabled`` (the default), TRL's vLLM integration in colocate mode
generates them, on GPU and on CPU alike (on the CPU build with the adjustments of
``confagg.colocate``); otherwise the training model's own ``generate``. The manifest records
which path ran.

The settings are the config's ``aggregator`` and ``training`` sections as the Snakefile
validated them (defaults filled in from the schema, the only home of defaults). The settings
name only the keys the project reads itself (:data:`OWN_KEYS`); every other key of ``training``
is a ``GRPOConfig`` field of the same name (``training.vllm.<key>`` as ``vllm_<key>``), kept in
``Training.grpo`` and handed to TRL by name, as TRL's own scripts do.

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

from confagg import manifest, settings, trainset
from confagg.answers import Reading
from confagg.files import atomic_dir, write_json
from confagg.fingerprints import sha256
from confagg.resume import (
    EXIT_STOPPED,
    PROCESS_START,
    callbacks,
    catch_stop_signals,
    job_deadline,
    log,
    mark_run,
    read_log,
    record_attempt,
    resume_point,
    step_of,
    write_log,
)
from confagg.seeds import derive_seed

# Keys of the training section that are no GRPOConfig field, and what reads them.
OWN_KEYS = {
    "gpus": "the rule (accelerate processes)",
    "lora": "PEFT LoraConfig",
    "vllm": "GRPOConfig vllm_* fields",
    "stop_margin_min": "confagg.resume (deadline)",
    "process_group_timeout_min": "accelerate PartialState (torch.distributed timeout)",
    "eval_sets": "the validation data",
    "wandb": "W&B environment",
}
# Keys of training.vllm that are no ``vllm_<key>`` GRPOConfig field.
OWN_VLLM_KEYS = {
    "enabled": "GRPOConfig use_vllm",
    "kv_cache_memory_bytes": "confagg.colocate (CPU build)",
}
# Settings that may change between a run and its resumption (they do not change the training).
RESUMABLE_CHANGES = {"stop_margin_min", "process_group_timeout_min", "wandb", "save_total_limit"}


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
    enabled: bool  # GRPOConfig use_vllm
    kv_cache_memory_bytes: int | None  # the CPU build's KV cache (confagg.colocate)


@dataclass(frozen=True)
class Wandb:
    enabled: bool
    mode: str
    project: str
    entity: str | None


@dataclass(frozen=True)
class Training:
    """The config's ``training`` section (its ``variants`` aside): the keys the project reads
    itself, and in ``grpo`` every other key, a ``GRPOConfig`` field of the same name
    (``training.vllm.<key>`` as ``vllm_<key>``)."""

    gpus: int
    lora: Lora
    vllm: Vllm
    stop_margin_min: float
    process_group_timeout_min: float
    eval_sets: int
    wandb: Wandb
    grpo: dict

    @classmethod
    def from_section(cls, section: dict, where: str = "training") -> Training:
        """The settings of a training section (how ``settings.from_mapping`` builds them)."""
        own = {k: v for k, v in section.items() if k in OWN_KEYS}
        vllm = dict(section.get("vllm") or {})
        own["vllm"] = {k: v for k, v in vllm.items() if k in OWN_VLLM_KEYS}
        grpo = {k: v for k, v in section.items() if k not in OWN_KEYS}
        grpo.update({f"vllm_{k}": v for k, v in vllm.items() if k not in OWN_VLLM_KEYS})
        return settings.from_mapping(cls, {**own, "grpo": grpo}, where)

    def section(self) -> dict:
        """Back to the config's shape (manifests and fingerprints speak the config's keys)."""
        plain = settings.to_dict(self)
        grpo = plain.pop("grpo")
        vllm = {k[5:]: v for k, v in grpo.items() if k.startswith("vllm_")}
        plain.update({k: v for k, v in grpo.items() if not k.startswith("vllm_")})
        plain["vllm"] = {**plain["vllm"], **vllm}
        return plain


@dataclass(frozen=True)
class Aggregator:
    model: str | None
    revision: str | None  # the hub revision asked for (None: the default branch)
    chat_template_kwargs: dict
    prompt: dict  # the aggregator.prompt section, read by confagg.aggregator_prompt


@dataclass(frozen=True)
class Settings:
    aggregator: Aggregator
    training: Training
    reading: Reading  # grading.extraction, think_end, require_think_end (the aggregator's)
    verify_timeout: float  # grading.timeout: CPU seconds per math-verify check of the reward


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
# Data (confagg.trainset) and reward


def reward(reading: Reading, timeout: float):
    """The GRPO reward: 1.0 when the completion's final answer (read by ``reading``; none if it
    never closed its thinking and ``require_think_end``) verifies against gold, else 0."""
    from confagg.verifier import read_and_verify

    def correct(completions: list[str], gold: list[str], **_: Any) -> list[float]:
        _, verdicts = read_and_verify(gold, completions, reading, 1, timeout)
        return [1.0 if v.correct else 0.0 for v in verdicts]

    return correct  # TRL logs it as rewards/correct


# --------------------------------------------------------------------------------------------
# What a config implies: sets, steps, completions


@dataclass(frozen=True)
class Plan:
    """The size of a training run, as TRL 1.16 schedules it: each optimizer step generates
    ``completions_per_step`` rollouts (processes x per-device batch x accumulation steps), i.e.
    ``sets_per_step`` prompts x ``num_generations``; an epoch is the whole batches of sets."""

    sets: int
    processes: int
    completions_per_step: int
    sets_per_step: int
    steps_per_epoch: int
    steps: int
    max_rollout_tokens: int  # steps x completions x max_completion_length

    def describe(self) -> str:
        return (
            f"{self.sets} training sets; {self.completions_per_step} completions per optimizer "
            f"step ({self.sets_per_step} sets x num_generations, over {self.processes} "
            f"process(es)); {self.steps_per_epoch} steps per epoch; {self.steps} steps in all, "
            f"at most {self.max_rollout_tokens:,} rollout tokens"
        )


def plan(num_sets: int, training: Training, processes: int) -> Plan:
    """The :class:`Plan` of ``num_sets`` training sets under ``training``."""
    import math

    g = training.grpo
    completions = processes * g["per_device_train_batch_size"] * g["gradient_accumulation_steps"]
    sets_per_step = completions // g["num_generations"]
    # TRL's sampler drops the sets of a last incomplete step
    per_epoch = num_sets // sets_per_step
    if per_epoch == 0 and g["max_steps"] is None:
        raise ValueError(
            f"{num_sets} training sets do not fill one optimizer step ({sets_per_step} sets: "
            f"{completions} completions / training.num_generations {g['num_generations']}); "
            f"lower training.gradient_accumulation_steps or per_device_train_batch_size"
        )
    steps = g["max_steps"] or math.ceil(g["num_train_epochs"] * per_epoch)
    return Plan(
        sets=num_sets,
        processes=processes,
        completions_per_step=completions,
        sets_per_step=sets_per_step,
        steps_per_epoch=per_epoch,
        steps=steps,
        max_rollout_tokens=steps * completions * g["max_completion_length"],
    )


def plan_main(argv: list[str]) -> int:
    """``python -m confagg.train --plan``: print the :class:`Plan` of a config and exit."""
    import argparse
    import json

    import pyarrow.parquet as pq
    import yaml

    from confagg.config import validate

    ap = argparse.ArgumentParser(
        prog="python -m confagg.train --plan", description=plan_main.__doc__
    )
    ap.add_argument("--plan", action="store_true", required=True)
    given = ap.add_mutually_exclusive_group(required=True)
    given.add_argument("--configfile", help="a workflow config file (its training section)")
    given.add_argument("--settings", help="the --settings JSON of rule train_aggregator")
    ap.add_argument(
        "--schema",
        default="workflow/schemas/config.schema.yaml",
        help="the config schema (with --configfile; default: from the repository root)",
    )
    sets = ap.add_mutually_exclusive_group(required=True)
    sets.add_argument("--train", help="the training sets (results/<run>/curated/train.parquet)")
    sets.add_argument("--sets", type=int, help="a number of training sets (what if)")
    ap.add_argument(
        "--processes", type=int, help="training processes (default: training.gpus, 1 on CPU)"
    )
    args = ap.parse_args(argv)
    if args.configfile:
        config = yaml.safe_load(Path(args.configfile).read_text())
        validate(config, args.schema)
        variant = next(iter(config["training"]["variants"]))  # they share the training section
        section = settings.for_rule(config, "train_aggregator", variant=variant)
        training = settings.load(Settings, settings.to_json(section)).training
    else:
        training = settings.load(Settings, args.settings).training
    num_sets = pq.ParquetFile(args.train).metadata.num_rows if args.train else args.sets
    result = plan(num_sets, training, args.processes or max(training.gpus, 1))
    print(result.describe())
    print(json.dumps(asdict(result)))
    return 0


# --------------------------------------------------------------------------------------------
# Trainer arguments


def grpo_config(s: Settings, out: Path, seed: int, run_name: str):
    """TRL ``GRPOConfig`` from the settings: every key of ``Training.grpo`` by its name, then
    the values that the config leaves to the machine or to a null, and those the workflow
    fixes (CPU or GPU chosen here)."""
    import torch
    from trl import GRPOConfig

    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    g = s.training.grpo
    stray = sorted(k for k in g if k not in fields)
    if stray:  # a bug, not a user error: the schema admits only keys TRL 1.16 has
        config_keys = [f"training.vllm.{k[5:]}" if k.startswith("vllm_") else k for k in stray]
        raise settings.SettingsError(
            f"training: {config_keys} are neither GRPOConfig fields (TRL renamed them?) nor "
            f"keys the trainer reads ({sorted(OWN_KEYS)})"
        )
    cuda = torch.cuda.is_available()
    bf16 = cuda if g["bf16"] is None else g["bf16"]
    max_prompt = s.aggregator.prompt["max_prompt_tokens"]
    evaluate = g["eval_steps"] is not None
    fixed = dict(
        max_steps=g["max_steps"] or -1,
        bf16=bf16,
        use_cpu=not cuda,
        model_init_kwargs={"dtype": "auto" if bf16 else "float32"},
        use_vllm=s.training.vllm.enabled,
        vllm_mode="colocate",
        # vLLM refuses sleep mode on CPU ("not supported on current platform")
        vllm_enable_sleep_mode=g["vllm_enable_sleep_mode"] and cuda,
        vllm_max_model_length=max_prompt + g["max_completion_length"] if max_prompt else None,
        output_dir=str(out / "checkpoints"),
        run_name=run_name,
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        save_strategy="steps",
        eval_strategy="steps" if evaluate else "no",
        per_device_eval_batch_size=g["num_generations"],
        report_to=["wandb"] if s.training.wandb.enabled else "none",
        ddp_timeout=round(s.training.process_group_timeout_min * 60),
        disable_tqdm=True,
        log_completions=False,
    )
    return GRPOConfig(**(g | fixed))


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
    training = {k: v for k, v in s.training.section().items() if k not in RESUMABLE_CHANGES}
    return {
        "settings": {**plain, "training": training},
        "seed": seed,
        "num_processes": processes,
        "model": args.model,
        "train_sha256": sha256(args.train),
    }


def load_data(s: Settings, args: TrainArgs, tokenizer, out: Path):
    """The training prompts and, with ``eval_steps``, the validation prompts (``eval_sets`` of
    them), from the cache in ``<out>/checkpoints`` or rendered into it by the first process.

    Runs before the process group starts (:func:`train`): the others wait for the cache file,
    not at a collective, so rendering a full-scale training set (minutes) meets no
    torch.distributed timeout. When the first process fails, the launcher stops the others."""
    import time

    if s.training.grpo["eval_steps"] is not None and not args.val:
        raise SystemExit("training.eval_steps is set but no --val sets were given")
    folder = out / "checkpoints"
    aggregator = settings.to_dict(s.aggregator)

    def load(render: bool):
        train = trainset.load(
            args.train, tokenizer, aggregator, folder, sha256(args.train), render=render
        )
        if s.training.grpo["eval_steps"] is None:
            return train, None
        limit = s.training.eval_sets
        val = trainset.load(
            args.val, tokenizer, aggregator, folder, sha256(args.val), limit, render
        )
        return train, val

    if first_process():
        data, eval_data = load(render=True)
        trainset.remove_stale(folder, {p.path for p in (data, eval_data) if p is not None})
        return data, eval_data
    while True:
        try:
            return load(render=False)
        except FileNotFoundError:
            time.sleep(2)


def first_process() -> bool:
    """Whether this is the first training process (torchrun's RANK; before any process group)."""
    return os.environ.get("RANK", "0") == "0"


def make_trainer(s: Settings, args: TrainArgs, out: Path, seed: int, stop_callbacks, prompts=None):
    """The GRPOTrainer over the training (and validation) ``prompts`` (:func:`load_data`; loaded
    here when not given), and the training prompts."""
    from peft import LoraConfig
    from transformers import AutoTokenizer, PrinterCallback
    from trl import GRPOTrainer

    if prompts is None:
        prompts = load_data(s, args, AutoTokenizer.from_pretrained(args.model), out)
    data, eval_data = prompts
    log(f"training: {data.describe(args.train)}")

    setup_wandb(s.training.wandb, out, args.run_name)
    config = grpo_config(s, out, seed, args.run_name)
    prepare_rollouts(s, config)
    lora = s.training.lora
    trainer = GRPOTrainer(
        model=args.model,
        reward_funcs=[reward(s.reading, s.verify_timeout)],
        args=config,
        train_dataset=data.dataset(),
        eval_dataset=eval_data.dataset() if eval_data else None,
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


def prepare_rollouts(s: Settings, config) -> None:
    """What the colocated vLLM engine that the trainer builds needs first: a rendezvous port,
    and on the CPU build the adjustments of ``confagg.colocate``."""
    if not config.use_vllm:
        return
    _rendezvous_port()
    if cpu_rollouts(config):
        from confagg import colocate

        if s.training.grpo["vllm_enable_sleep_mode"]:
            log("training.vllm.enable_sleep_mode: vLLM has no sleep mode on CPU; off")
        colocate.apply(
            dtype="bfloat16" if config.bf16 else "float32",
            kv_cache_memory_bytes=s.training.vllm.kv_cache_memory_bytes,
        )


def _rendezvous_port() -> None:
    """A port for the torch.distributed group that a colocated vLLM engine of a single-process
    run creates. TRL tries 29500, 23456, ... first: two runs starting at once on one machine
    (the two variants, other jobs on a node) both find 23456 free and one fails with
    EADDRINUSE. Launchers of several processes set MASTER_PORT (the rule's port)."""
    if os.environ.get("MASTER_PORT"):
        return
    os.environ["MASTER_PORT"] = str(rendezvous_port(os.environ) or _free_port())


# Ports derived from Slurm job ids: below Linux's ephemeral range (32768-60999), above the
# common services; two jobs on one node collide only when their ids differ by a multiple of
# PORT_SPAN.
PORT_BASE, PORT_SPAN = 15000, 15000


def rendezvous_port(env) -> int:
    """The rendezvous port of a training job: from ``SLURM_JOB_ID`` (jobs sharing a node get
    different ports), else 0, which tells ``accelerate launch --main_process_port`` to pick a
    free one itself."""
    job = env.get("SLURM_JOB_ID", "")
    return PORT_BASE + int(job) % PORT_SPAN if job.isdigit() else 0


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def cpu_rollouts(config) -> bool:
    """Whether colocated vLLM rollouts run on the CPU build (``confagg.colocate`` applies)."""
    if not config.use_vllm or not config.use_cpu:
        return False
    from confagg import colocate

    return colocate.cpu_build()


def rollout_path(trainer) -> str:
    """Which rollout path the trainer runs (recorded in the manifest)."""
    return "vllm-colocate" if trainer.args.use_vllm else "transformers-generate"


def _adjustments(trainer) -> str | None:
    """What ``confagg.colocate`` changed for this run's rollouts (None: nothing)."""
    if not cpu_rollouts(trainer.args):
        return None
    from confagg import colocate

    return colocate.SUMMARY


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


def _manifest(args: TrainArgs, s: Settings, trainer, data: trainset.Prompts, seed: int) -> dict:
    """The manifest of the completed run (``confagg.manifest``)."""
    return manifest.build(
        run_name=args.run_name,
        steps=trainer.state.global_step,
        args=asdict(args) | {"settings": "(see settings)"},
        settings={**settings.to_dict(s), "training": s.training.section()},  # the config's shape
        grpo_args=trainer.args,
        inputs=manifest.inputs(args.train, data, args.val, args.model, s.aggregator),
        seeds={"run": args.seed, "train": seed},
        rollouts=rollout_path(trainer),
        rollout_adjustments=_adjustments(trainer),
        processes=trainer.accelerator.num_processes,
        attempts=read_log(Path(args.out) / "checkpoints/attempts.jsonl"),
    )


def _at_last_step(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` (complete: its trainer_state.json reads) is the run's last step."""
    import json

    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return 0 < state["max_steps"] <= state["global_step"]


def train(args: TrainArgs) -> int:
    """Train (or resume) and write the outputs; returns the process exit code."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from confagg import preflight

    catch_stop_signals()  # a SIGTERM/SIGUSR1 during the start-up stops the run at its first step
    s = settings.load(Settings, args.settings)
    # First, before anything could fall back to the CPU: GPUs given must work (and be enough)
    try:
        preflight.run(requested=s.training.gpus)
    except preflight.PreflightError as exc:
        raise SystemExit(f"[preflight] {type(exc).__name__}: {exc}") from None
    out = Path(args.out)
    ckpt_dir = out / "checkpoints"
    # the prompts are rendered before the process group exists (no collective waits on them)
    prompts = load_data(s, args, AutoTokenizer.from_pretrained(args.model), out)
    # The first PartialState decides for the whole process (the trainer's comes later and
    # keeps it, timeout included). Without cpu=True, the processes of a CPU run under torchrun
    # would each see a world of one, and all of them would tidy the checkpoints as "the" main
    # process.
    state = PartialState(
        cpu=not torch.cuda.is_available(),
        timeout=timedelta(minutes=s.training.process_group_timeout_min),
    )
    seed = derive_seed(args.seed, "train")
    run_id = fingerprint(s, args, seed, state.num_processes)
    resume = resume_point(ckpt_dir, run_id)
    start_step = step_of(resume) if resume else 0

    deadline = job_deadline(args.runtime_min, s.training.stop_margin_min)
    stopper, jsonl = callbacks(ckpt_dir / "log.jsonl", deadline)
    trainer, data = make_trainer(s, args, out, seed, (stopper, jsonl), prompts)
    log(f"plan: {plan(data.sets, s.training, state.num_processes).describe()}")
    log(
        f"device {state.device} x {state.num_processes} process(es), rollouts: "
        f"{rollout_path(trainer)}, max_steps {trainer.args.max_steps}, seed {seed}"
    )
    if resume is not None and _at_last_step(resume):
        # the run had ended and its outputs were lost (a kill while writing them): from its last
        # checkpoint Trainer.train would take one step past max_steps; write the outputs from it
        from transformers import TrainerState

        log(f"{resume} holds the run's last step: writing the outputs from it")
        trainer._load_from_checkpoint(str(resume))
        trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
    else:
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

    argv = sys.argv[1:] if argv is None else argv
    if "--plan" in argv:
        return plan_main(argv)
    if argv == ["--rendezvous-port"]:  # the rule's accelerate launch --main_process_port
        print(rendezvous_port(os.environ))
        return 0
    parser = HfArgumentParser(TrainArgs, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
