"""Surviving the cluster: checkpoints, the run's fingerprint, the job's deadline, Slurm signals.

Everything resumable lives in ``<out>/checkpoints/``, which is no declared output of the rule, so
Snakemake does not delete it when the job fails:

* ``checkpoint-<step>/``: Trainer checkpoints (adapter, optimizer, scheduler, RNG, trainer
  state, hence the data position); a checkpoint without a readable ``trainer_state.json`` (the
  file written last) was cut short by a kill and is removed on the next start;
* ``log.jsonl``: one row per logged step, written as training goes; on resume the rows after the
  checkpoint's step are dropped, so no step appears twice;
* ``run.json``: what the checkpoints belong to (the fingerprint: settings, seed, processes,
  model, hash of the training sets) and whether that run completed. Two runs are never mixed:
  after a change, the checkpoints of a completed run are removed and training starts again;
  those of an unfinished run stop the job with an error listing the changes;
* ``attempts.jsonl``: one row per job that ended (completed or stopped early).

A run saves a checkpoint and stops cleanly (exit code 75, EX_TEMPFAIL) before the job's time
limit: when the next step (as long as the longest so far) would end within ``stop_margin_min``
of the limit (from ``SLURM_JOB_END_TIME`` when Slurm sets it, else the process start plus
``--runtime_min``), or after a SIGTERM or SIGUSR1 (the step in progress finishes first). All
processes agree on stopping at the same step. The rerun resumes from the last checkpoint.

Log rows (``log.jsonl``): ``step``, ``split`` ("train" or "eval"), ``time`` (unix seconds),
``reward``, ``kl``, ``loss``, ``completion_length`` (mean tokens), ``truncated`` (share of the
step's rollouts cut at ``max_completion_length``), ``logp_gap`` (vLLM rollouts only: the largest
difference between a sampled token's log-prob in vLLM and in the trained model, which shows
that the weights reached vLLM: about 1e-6 in float32; LoRA dropout adds to it, since TRL scores
the rollouts in training mode; null with generate, and with
``training.vllm.importance_sampling_correction`` off, where TRL skips that forward pass), then
every other metric TRL logs under its own name (``reward_std``, ``entropy``,
``rewards/correct/mean``, ...).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from confagg.files import atomic_path, write_json
from confagg.fingerprints import differences, jsonable

PROCESS_START = time.time()
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped early with a checkpoint; run again to resume
CHECKPOINT_PREFIX = "checkpoint-"


def log(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Checkpoints and the resumable log


def step_of(path: Path) -> int:
    """The step of a ``checkpoint-<step>`` folder."""
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
        (
            p
            for p in folder.glob(f"{CHECKPOINT_PREFIX}*")
            if p.name[len(CHECKPOINT_PREFIX) :].isdigit()
        ),
        key=step_of,
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


def write_log(rows: list[dict], path: Path) -> None:
    """Write JSON-lines rows atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def trim_log(path: Path, step: int) -> list[dict]:
    """Keep only rows up to ``step`` (a checkpoint's, or the last), atomically; returns them."""
    rows = [r for r in read_log(path) if r["step"] <= step]
    write_log(rows, path)
    return rows


# --------------------------------------------------------------------------------------------
# What a run's checkpoints belong to


def prepare_checkpoints(ckpt_dir: Path, fingerprint: Mapping) -> Path | None:
    """The checkpoint to resume from, after tidying ``ckpt_dir`` (main process only).

    Incomplete checkpoints go, and the live log loses rows past the resumed step. Checkpoints
    of a run with another ``fingerprint`` (settings, seed, processes, model, training data) are
    removed when that run completed (its outputs are gone: Snakemake reruns the job because its
    settings or inputs changed), and stop the job with an error when it did not (hours of
    training are not thrown away silently).
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    resume = last_checkpoint(ckpt_dir, remove_incomplete=True)
    run_file = ckpt_dir / "run.json"
    before = json.loads(run_file.read_text()) if run_file.is_file() else None
    now = jsonable(fingerprint)
    if resume is not None and before is not None:
        changed = differences(before.get("fingerprint"), now)
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
    mark_run(ckpt_dir, now, completed=False)
    trim_log(ckpt_dir / "log.jsonl", step_of(resume) if resume else 0)
    return resume


def resume_point(ckpt_dir: Path, fingerprint: Mapping) -> Path | None:
    """The checkpoint every process resumes from: the main process tidies ``ckpt_dir``
    (:func:`prepare_checkpoints`), the others wait, then all read the same folder."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        prepare_checkpoints(ckpt_dir, fingerprint)
    state.wait_for_everyone()
    resume = last_checkpoint(ckpt_dir)
    if resume is not None:
        log(f"resuming from {resume} (step {step_of(resume)})")
    return resume


def mark_run(ckpt_dir: Path, fingerprint: Mapping, completed: bool) -> None:
    """Record what the checkpoints in ``ckpt_dir`` belong to, and whether that run completed."""
    write_json(
        {"fingerprint": jsonable(fingerprint), "completed": completed}, ckpt_dir / "run.json"
    )


def record_attempt(ckpt_dir: Path, attempt: Mapping) -> None:
    """Append one job's row to ``attempts.jsonl`` (main process only)."""
    with open(ckpt_dir / "attempts.jsonl", "a") as f:
        f.write(json.dumps(jsonable(attempt)) + "\n")


def _squeue_end_time(job_id: str) -> float | None:
    """The job's end time from ``squeue`` (Slurm before 23.02 sets no SLURM_JOB_END_TIME in a
    job step's environment), or None."""
    import subprocess
    from datetime import datetime

    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
        return datetime.fromisoformat(out).timestamp()
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def job_deadline(runtime_min: float | None, margin_min: float) -> float | None:
    """Unix time by which the run should have saved and stopped; None without a limit. The
    limit: the Slurm job's end time (SLURM_JOB_END_TIME, else squeue's), else the job's or this
    process's start plus ``runtime_min``."""
    end = os.environ.get("SLURM_JOB_END_TIME")
    job = os.environ.get("SLURM_JOB_ID")
    queued = _squeue_end_time(job) if job and not (end and end.isdigit()) else None
    if end and end.isdigit():
        limit = float(end)
    elif queued:
        limit = queued
    elif runtime_min:
        start = os.environ.get("SLURM_JOB_START_TIME")
        limit = (float(start) if start and start.isdigit() else PROCESS_START) + runtime_min * 60
    else:
        return None
    return limit - margin_min * 60


# --------------------------------------------------------------------------------------------
# Trainer callbacks


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


# The signal that asked this process to stop (set by :func:`catch_stop_signals`'s handler).
STOP_SIGNAL: list[str] = []


def catch_stop_signals() -> None:
    """Record SIGTERM and SIGUSR1 from now on (the train stage calls it first): one that
    arrives while the trainer is still starting (imports, model, vLLM) is not lost, and the
    run stops after its first step. The rule's shell ignores both, so until this handler is
    installed they pass this process by."""

    def on_signal(signum, _frame) -> None:
        name = signal.Signals(signum).name
        if not STOP_SIGNAL:
            log(f"received {name}: saving a checkpoint after the current step")
        STOP_SIGNAL.append(name)

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, on_signal)


def callbacks(live_log: Path, deadline: float | None):
    """The two TrainerCallbacks: save-and-stop, and the JSON-lines log."""
    from transformers import TrainerCallback

    class SaveAndStop(TrainerCallback):
        """Saves and stops before the time limit, or after SIGTERM/SIGUSR1; saves at the end."""

        def __init__(self) -> None:
            self.reason: str | None = None
            self.last = time.time()
            self.longest = 0.0
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN):
                catch_stop_signals()  # not yet (the train stage does it first)

        def on_train_begin(self, args, state, control, **kw):
            self.last = time.time()

        def on_step_end(self, args, state, control, **kw):
            now = time.time()
            self.longest = max(self.longest, now - self.last)
            self.last = now
            reason = None
            if STOP_SIGNAL:
                reason = f"signal {STOP_SIGNAL[0]}"
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
                "truncated": metrics.get("completions/clipped_ratio"),
                "logp_gap": metrics.get("sampling/sampling_logp_difference/max"),
                **{k: v for k, v in metrics.items() if isinstance(v, int | float)},
            }
            with open(live_log, "a") as f:
                f.write(json.dumps(row) + "\n")
            parts = [f"{k} {row[k]:.4g}" for k in ("reward", "kl", "loss") if row[k] is not None]
            if row["completion_length"] is not None:
                parts.append(f"length {row['completion_length']:.1f}")
            if row["truncated"] is not None:
                parts.append(f"truncated {row['truncated']:.0%}")
            if row["logp_gap"] is not None:
                parts.append(f"vLLM logp gap {row['logp_gap']:.2g}")
            log(f"{split} step {state.global_step}/{state.max_steps}: {', '.join(parts)}")

    return SaveAndStop(), JsonlLog()
