"""Peak memory of the demo's training job (SmolLM2-135M, TRL GRPO + LoRA, colocated vLLM on
CPU), before and after cutting waste, measured in the same run, beside confagg.memory's estimate
term by term.

Each run is the train stage itself (``accelerate launch -m confagg.train``, one CPU process), on
fabricated sets shaped like the demo's (4 candidates of ~90 tokens: prompts of 300-500 tokens),
with config/demo.yaml's training and aggregator sections and a few steps; its peak resident
memory is the largest child's ``ru_maxrss`` (vLLM's CPU engine runs in the training process).

    /work/heavy .venv/bin/python benchmarks/bench_train_memory.py [--steps 4]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GB = 1e9
WORDS = ("we", "add", "the", "two", "numbers", "and", "carry", "tens", "so", "sum", "is")


def demo_like_sets(n: int) -> pa.Table:
    """``n`` sets of 4 candidates (bench_train's) padded to ~90 tokens each, as the demo's
    samples run to 96 tokens: prompts of 300-500 tokens."""
    from bench_train import fabricated_sets

    from confagg.tables import SETS

    rows = fabricated_sets(n).to_pylist()
    for row in rows:
        for j, cand in enumerate(row["candidates"]):
            filler = " ".join(WORDS[(k + j) % len(WORDS)] for k in range(60))
            cand["text"] = f"{filler}. {cand['text']}"
            cand["num_tokens"] = 90
    return pa.Table.from_pylist(rows, schema=SETS)


def demo_config(steps: int, **training) -> dict:
    """config/demo.yaml validated, with ``steps`` steps and the given training keys changed."""
    from confagg import config as cfg

    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["training"] = {**config["training"], "max_steps": steps, "save_steps": 1000}
    for key, value in training.items():
        if isinstance(value, dict):
            config["training"][key] = {**config["training"].get(key, {}), **value}
        else:
            config["training"][key] = value
    cfg.validate(config, REPO / "workflow/schemas/config.schema.yaml")
    return config


def run(config: dict, variant: str, model: Path, sets: Path, out: Path, env: dict) -> float:
    """One training job; its peak resident memory in bytes."""
    from confagg.settings import for_rule

    settings = for_rule(copy.deepcopy(config), "train_aggregator", variant=variant)
    cmd = [
        str(BIN / "accelerate"), "launch",
        "--config_file", str(REPO / "config/accelerate/cpu.yaml"), "--num_processes", "1",
        "--num_cpu_threads_per_process", str(os.cpu_count()),
        "-m", "confagg.train", "--train", str(sets), "--model", str(model), "--out", str(out),
        "--settings", json.dumps(settings), "--seed", "1", "--run-name", "bench",
    ]  # fmt: skip
    # a fresh interpreter per run, so that ru_maxrss of its children is this run's alone
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r)"
    )
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:
        done = subprocess.run(
            [sys.executable, "-c", probe, *cmd],
            check=False,
            stdout=subprocess.PIPE,
            stderr=f,
            env=env,
        )
    if done.returncode != 0:
        raise SystemExit(f"training failed (exit {done.returncode}); see {log}")
    return int(done.stdout.decode().split()[-1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--variant", default="confidence", help="confidence (longer prompts) or plain")
    ap.add_argument("--smollm2", type=Path, default=REPO / "resources/models/smollm2-135m-instruct")
    ap.add_argument("--only", default=None, help="these cases only: before,after")
    args = ap.parse_args()
    from confagg import config as cfg
    from confagg.tables import SETS, write_table

    if not (args.smollm2 / "config.json").exists():
        cmd = [sys.executable, "-m", "confagg.models", "smollm2", str(args.smollm2)]
        subprocess.run(cmd, check=True)
    work = Path(tempfile.mkdtemp(prefix="bench-train-memory-"))
    sets = work / "train.parquet"
    write_table(demo_like_sets(args.steps), sets, SETS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    # before: the demo as it was (the schema's 1 GiB KV cache, glibc's default heap, which
    # serves large tensors from its heap once they were freed and keeps the freed memory:
    # "[heap]" held 6.5 GB of an 8.9 GB process between steps); after: config/demo.yaml's
    # 256 MiB KV cache and confagg.colocate's fixed mmap threshold
    cases = {
        "before": (
            demo_config(args.steps, vllm={"kv_cache_memory_bytes": 2**30}),
            {"CONFAGG_DEFAULT_HEAP": "1"},
        ),
        "after": (demo_config(args.steps), {}),
    }
    peaks = {}
    for name, (config, extra_env) in cases.items():
        if args.only and name not in args.only.split(","):
            continue
        terms, peak, _ = cfg.training_memory(config)
        listing = ", ".join(f"{k} {v / GB:.2f}" for k, v in terms.items())
        peaks[name] = run(
            config, args.variant, args.smollm2, sets, work / name, {**env, **extra_env}
        )
        print(
            f"{name}: peak RSS {peaks[name] / GB:.2f} GB measured; estimate {peak / GB:.2f} GB "
            f"({listing}; GB); training.vllm.kv_cache_memory_bytes "
            f"{config['training']['vllm']['kv_cache_memory_bytes']}",
            flush=True,
        )
    for name in peaks:
        if name != "before" and "before" in peaks:
            print(f"{name} / before: {peaks[name] / peaks['before']:.2f}")
    print(f"logs: {work}")


if __name__ == "__main__":
    main()
