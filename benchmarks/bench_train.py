"""Training-step benchmark: GRPO steps of the train stage with TRL's colocated vLLM rollouts
against the same steps with the training model's own ``generate`` (``training.vllm.enabled:
false``), measured in the same run, on the tiny Qwen3 and on SmolLM2-135M.

Each run is the stage itself (``accelerate launch -m confagg.train``, one CPU process, LoRA),
on the same fabricated sets, settings and seed; a step's time is the gap between consecutive
rows of its ``log.jsonl`` (the first step, which includes start-up, is left out), and the line
also gives the whole job's time.

    .venv/bin/python benchmarks/bench_train.py [--models tiny,smollm2] [--steps 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROMPT = {"max_prompt_tokens": 512, "confidence": {"metric": "tail"}}


def fabricated_sets(n: int) -> pa.Table:
    """``n`` training sets of four short candidate solutions to "What is a + b?"."""
    from confagg.tables import SETS

    rows = []
    for i in range(n):
        a, b = 3 + i, 5 + 2 * i
        answers = [a + b, a + b, a + b + 1, a * b]
        cands = [
            {
                "sample_idx": j,
                "text": f"We add {a} and {b}: {a} + {b} = {x}. The answer is \\boxed{{{x}}}.",
                "answer": str(x),
                "correct": x == a + b,
                "num_tokens": 24,
                "mean": 10.0 - j,
                "bottom_10_percent": 5.0 - j,
                "lowest_group": 4.0 - j,
                "tail": 8.0 - j,
            }
            for j, x in enumerate(answers)
        ]
        rows.append(
            {
                "set_id": f"p{i}/0",
                "problem_id": f"p{i}",
                "problem": f"What is {a} + {b}?",
                "gold": str(a + b),
                "hard": False,
                "majority_answer": str(a + b),
                "candidates": cands,
            }
        )
    return pa.Table.from_pylist(rows, schema=SETS)


def settings(steps: int, vllm: bool, max_completion_length: int) -> str:
    """The --settings JSON of rule train_aggregator for a CPU run of ``steps`` steps."""
    from confagg import config as cfg
    from confagg.settings import for_rule as settings_for_rule

    config = {
        "run_name": "bench",
        "generator": {"model": "smollm2-135m-instruct"},
        "training_pool": {"source": {"demo": {"n": 2, "seed": 1}}},
        "benchmarks": {"b": {"source": {"demo": {"n": 2, "seed": 2}}}},
        "aggregator": {"prompt": PROMPT},
        "training": {
            "gpus": 0,
            "max_steps": steps,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "num_generations": 4,
            "temperature": 1.0,
            "max_completion_length": max_completion_length,
            "gradient_checkpointing": False,
            "save_steps": 1000,
            "vllm": {"enabled": vllm},
        },
    }
    cfg.validate(config, REPO / "workflow/schemas/config.schema.yaml")
    variant = next(iter(config["training"]["variants"]))
    sections = settings_for_rule(config, "train_aggregator", variant=variant)
    sections["reading"]["require_think_end"] = False  # the sets' texts never think
    return json.dumps(sections)


def run(model: Path, sets: Path, out: Path, steps: int, vllm: bool, length: int) -> dict:
    """One training job; its step times (s) and whole time."""
    cmd = [
        str(BIN / "accelerate"), "launch",
        "--config_file", str(REPO / "config/accelerate/cpu.yaml"), "--num_processes", "1",
        "--num_cpu_threads_per_process", str(os.cpu_count()),
        "-m", "confagg.train", "--train", str(sets), "--model", str(model), "--out", str(out),
        "--settings", settings(steps, vllm, length), "--seed", "1", "--run-name", "bench",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    whole = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"training failed (exit {done.returncode}); see {log.name}")
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows if r["split"] == "train"]
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "steps": [b - a for a, b in itertools.pairwise(times)],
        "whole": whole,
        "rollouts": manifest["rollouts"],
        "length": statistics.mean(r["completion_length"] for r in rows if r["split"] == "train"),
    }


def model_dir(name: str, work: Path, smollm2: Path) -> Path:
    if name == "tiny":
        from confagg.tinymodel import build_tiny_qwen3

        return build_tiny_qwen3(work / "tiny-qwen3", seed=0)
    if not (smollm2 / "config.json").exists():
        cmd = [sys.executable, "-m", "confagg.models", "smollm2", str(smollm2)]
        subprocess.run(cmd, check=True)
    return smollm2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,smollm2", help="tiny, smollm2 or both")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per run (4 rollouts)")
    ap.add_argument("--max-completion-length", type=int, default=48)
    ap.add_argument("--smollm2", type=Path, default=REPO / "resources/models/smollm2-135m-instruct")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    sets = work / "train.parquet"
    from confagg.tables import SETS, write_table

    write_table(fabricated_sets(4 * args.steps), sets, SETS)
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs); {work}")
    for name in args.models.split(","):
        model = model_dir(name, work, args.smollm2)
        result = {}
        for vllm in (True, False):
            out = work / f"{name}-{'vllm' if vllm else 'generate'}"
            result[vllm] = run(model, sets, out, args.steps, vllm, args.max_completion_length)
        fast, slow = result[True], result[False]
        med_fast, med_slow = statistics.median(fast["steps"]), statistics.median(slow["steps"])
        print(
            f"{name}: median step {med_fast:.2f} s with {fast['rollouts']} rollouts vs "
            f"{med_slow:.2f} s with {slow['rollouts']} -> {med_slow / med_fast:.1f}x faster; "
            f"whole job {fast['whole']:.0f} s vs {slow['whole']:.0f} s ({args.steps} steps, "
            f"4 rollouts of mean {fast['length']:.0f} / {slow['length']:.0f} tokens per step)",
            flush=True,
        )
        print(f"  step times (s): vllm {[round(t, 2) for t in fast['steps']]}, "
              f"generate {[round(t, 2) for t in slow['steps']]}")  # fmt: skip


if __name__ == "__main__":
    main()
