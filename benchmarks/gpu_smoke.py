"""GPU smoke test: one command, on one GPU, offline, from a fresh clone plus the README's GPU
set-up; about 8 minutes. Prints one table (and exits 1 when a check failed):

1. the preflight (``confagg.preflight``): driver, torch's CUDA, versions, GPU;
2. the sample stage (``python -m confagg.sample``) on SmolLM2, killed after its first part and
   run again: it resumes, and the shard holds every sample once; then the stage's texts and
   confidences against ``LLM.generate`` with logprobs on the same engine and RNG state;
3. throughput of a random bf16 model shaped like Qwen3-1.7B (28 layers, hidden 2048, vocab
   151,936), ``LLM.generate`` with logprobs=20 against without: what confidence capture costs;
4. the train stage (``accelerate launch -m confagg.train``): 4 colocated GRPO steps with LoRA in
   bf16; then a run whose job end time (``SLURM_JOB_END_TIME``) falls after about two steps:
   it saves and exits 75, and the rerun resumes and finishes at ``max_steps``;
5. peak GPU memory of one training micro-batch at the default lengths (per-device batch 2,
   max_prompt_tokens + max_completion_length from config/config.yaml, gradient checkpointing,
   LoRA) on the Qwen3-1.7B-shaped model, beside a vLLM engine at the default share
   (training.vllm.gpu_memory_utilization);
6. LoRA serving (vLLM ``enable_lora``, as evaluation serves the adapter) against the merged
   model (``python -m confagg.merge``): greedy texts equal, and the throughput ratio.

    python benchmarks/gpu_smoke.py [--smollm2 DIR] [--work DIR]

Without CUDA it stops at once (exit 2). It has not run on a GPU yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# vLLM's engine core in its own process, as on the cluster (bench_sample forces in-process)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
BIN = Path(sys.executable).parent
ROWS: list[tuple[str, str, str]] = []  # (check, measured, verdict)
SMOKE_ENGINE = {"max_model_len": 4096, "gpu_memory_utilization": 0.35, "enforce_eager": False}


def row(check: str, measured: str, ok: bool | None = None) -> None:
    ROWS.append((check, measured, "-" if ok is None else ("ok" if ok else "FAILED")))
    print(f"[gpu_smoke] {check}: {measured}", flush=True)


def section(name: str):
    """Run one section; a failure becomes a FAILED row and the others still run."""

    def wrap(fn):
        def run(*args):
            start = time.perf_counter()
            try:
                fn(*args)
            except Exception as exc:
                traceback.print_exc()
                row(name, f"{type(exc).__name__}: {str(exc)[:200]}", False)
            print(f"[gpu_smoke] {name}: {time.perf_counter() - start:.0f} s", flush=True)

        return run

    return wrap


def sample_settings(n: int, max_tokens: int, in_flight: int, engine: dict):
    from bench_sample import settings_for

    s = settings_for(n, max_tokens, in_flight)
    return dataclasses.replace(s, engine=engine)


@section("sample stage: kill and resume")
def smoke_resume(smollm2: Path, work: Path) -> None:
    from confagg.parts import parts_dir
    from confagg.problems import demo_problems, write_problems
    from confagg.settings import to_dict
    from confagg.tables import SAMPLES, read_table

    problems = demo_problems(64, seed=3)
    path = work / "problems.jsonl"
    write_problems(problems, path)
    s = sample_settings(8, 512, 8, {**SMOKE_ENGINE, "dtype": "bfloat16"})
    out = work / "resume/shard0.parquet"
    cmd = [sys.executable, "-m", "confagg.sample", "--problems", str(path), "--dataset", "smoke",
           "--shard", "0", "--seed", "1", "--model", str(smollm2),
           "--settings", json.dumps(to_dict(s)), str(out)]  # fmt: skip
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    parts = parts_dir(out)
    deadline = time.time() + 300
    while not list(parts.glob("part-*.parquet")) and first.poll() is None:
        if time.time() > deadline:
            break
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    again = subprocess.run(cmd, capture_output=True, text=True, check=False)
    done = [line for line in again.stderr.splitlines() if "already sampled" in line]
    table = read_table(out, SAMPLES)
    keys = list(zip(table["problem_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))
    ok = again.returncode == 0 and len(keys) == len(set(keys)) == 64 * 8 and not parts.exists()
    row("sample stage: kill and resume", f"{done[0].strip() if done else '?'}; {len(keys)} rows, "
        f"{len(set(keys))} unique (want 512)", ok)  # fmt: skip


@section("sample stage = LLM.generate")
def smoke_equality(smollm2: Path, work: Path) -> None:
    import numpy as np
    import torch
    from bench_sample import prompts_of

    from confagg.confidence import token_confidence
    from confagg.engine import make_engine, release_engine, sampling_params
    from confagg.problems import demo_problems
    from confagg.sample import sample_shard
    from confagg.tables import SAMPLES, read_table

    problems = demo_problems(16, seed=13)
    s = sample_settings(4, 256, 16, {**SMOKE_ENGINE, "dtype": "bfloat16"})
    llm = make_engine(str(smollm2), 0, s.engine)
    out = work / "equal.parquet"
    llm.reset_prefix_cache()
    torch.manual_seed(5)
    sample_shard(problems, out, str(smollm2), 0, s, lambda m: None, llm)
    table = read_table(out, SAMPLES)
    llm.reset_prefix_cache()
    torch.manual_seed(5)
    params = sampling_params(dataclasses.asdict(s.sampling))
    comps = [c for o in llm.generate(prompts_of(llm, problems), params, use_tqdm=False)
             for c in o.outputs]  # fmt: skip
    texts = table.column("text").to_pylist()
    confs = table.column("token_confidence").to_pylist()
    same_text = sum(a == c.text for a, c in zip(texts, comps, strict=True))
    same_conf = sum(
        np.array_equal(np.asarray(a, np.float16),
                       token_confidence(c.logprobs.logprobs).astype(np.float16))
        for a, c in zip(confs, comps, strict=True)
    )  # fmt: skip
    release_engine(llm)
    n = len(comps)
    row("sample stage = LLM.generate", f"texts {same_text}/{n}, confidences {same_conf}/{n} "
        f"(VLLM_ENABLE_V1_MULTIPROCESSING={os.environ.get('VLLM_ENABLE_V1_MULTIPROCESSING', '1')})",
        same_text == n and same_conf == n)  # fmt: skip


def qwen3_shaped(smollm2: Path, out: Path) -> Path:
    """A random bf16 model of Qwen3-1.7B's shape (SmolLM2's tokenizer: its ids fit the vocab)."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    if (out / "config.json").exists():
        return out
    config = Qwen3Config(
        vocab_size=151_936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        tie_word_embeddings=True, torch_dtype="bfloat16",
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(out)
    return out


@section("throughput with logprobs")
def smoke_throughput(model: Path, _work: Path) -> None:
    from vllm import SamplingParams

    from confagg.engine import make_engine, release_engine

    llm = make_engine(str(model), 0, {**SMOKE_ENGINE, "gpu_memory_utilization": 0.8})
    prompts = [{"prompt_token_ids": list(range(100 + i, 228 + i))} for i in range(128)]
    rates = {}
    for logprobs in (None, 20, None, 20):  # warm-up pass for each, the second one counts
        params = SamplingParams(
            n=8,
            temperature=1.0,
            max_tokens=512,
            ignore_eos=True,
            logprobs=logprobs,
            flat_logprobs=logprobs is not None,
            seed=1,
        )
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        rates[logprobs] = tokens / (time.perf_counter() - start)
    release_engine(llm)
    row("throughput Qwen3-1.7B-shaped bf16", f"{rates[None]:,.0f} tok/s without logprobs, "
        f"{rates[20]:,.0f} with logprobs=20: {rates[20] / rates[None]:.2f}x")  # fmt: skip


def train_settings(steps: int) -> str:
    from bench_train import settings as cpu_settings

    sections = json.loads(cpu_settings(steps, vllm=True, max_completion_length=256))
    sections["training"].update(gpus=1, bf16=True, stop_margin_min=0, save_steps=1)
    return json.dumps(sections)


def train_cmd(model: Path, sets: Path, out: Path, steps: int) -> list[str]:
    return [str(BIN / "accelerate"), "launch", "--config_file",
            str(REPO / "config/accelerate/gpu.yaml"), "--num_processes", "1",
            "-m", "confagg.train", "--train", str(sets), "--model", str(model), "--out", str(out),
            "--settings", train_settings(steps), "--seed", "1", "--run-name", "smoke"]  # fmt: skip


def _rows(out: Path) -> list[dict]:
    path = out / "checkpoints/log.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@section("GRPO colocated, LoRA, bf16")
def smoke_train(smollm2: Path, work: Path) -> None:
    import pyarrow.parquet as pq
    from bench_train import fabricated_sets

    sets = work / "sets.parquet"
    pq.write_table(fabricated_sets(64), sets)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    full = subprocess.run(train_cmd(smollm2, sets, work / "t4", 4), env=env, check=False)
    whole = time.perf_counter() - start
    times = [r["time"] for r in _rows(work / "t4") if r["split"] == "train"]
    step = (times[-1] - times[0]) / max(len(times) - 1, 1) if times else float("nan")
    ok = full.returncode == 0 and (work / "t4/adapter").is_dir() and len(times) == 4
    row("GRPO 4 steps colocated, LoRA, bf16", f"exit {full.returncode}, {len(times)} steps, "
        f"{step:.1f} s/step, {whole:.0f} s in all", ok)  # fmt: skip
    # a job end time after about startup + 2 steps: the deadline exit, then the resume
    startup = whole - step * len(times)
    env_end = {**env, "SLURM_JOB_END_TIME": str(int(time.time() + startup + 2.5 * step))}
    cut = subprocess.run(train_cmd(smollm2, sets, work / "t6", 6), env=env_end, check=False)
    saved = len([r for r in _rows(work / "t6") if r["split"] == "train"])
    rest = subprocess.run(train_cmd(smollm2, sets, work / "t6", 6), env=env, check=False)
    final = [r["step"] for r in _rows(work / "t6") if r["split"] == "train"]
    ok = cut.returncode == 75 and 0 < saved < 6 and rest.returncode == 0 and final == [*range(1, 7)]
    row("deadline exit and resume", f"first job exit {cut.returncode} after {saved} steps; "
        f"rerun exit {rest.returncode}, steps {final}", ok)  # fmt: skip


@section("peak memory of a training micro-batch")
def smoke_memory(model: Path, _work: Path) -> None:
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from confagg.engine import make_engine

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    training, prompt = config["training"], config["aggregator"]["prompt"]
    length = prompt["max_prompt_tokens"] + training["max_completion_length"]
    batch = training["per_device_train_batch_size"]
    share = training["vllm"]["gpu_memory_utilization"]
    llm = make_engine(str(model), 0, {"max_model_len": length, "gpu_memory_utilization": share,
                                      "enforce_eager": True})  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).cuda()
    hf.gradient_checkpointing_enable()
    hf.enable_input_require_grads()
    lora = training["lora"]
    hf = get_peft_model(hf, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"],
                                       target_modules=lora["target_modules"]))  # fmt: skip
    ids = torch.randint(0, 49_000, (batch, length), device="cuda")
    logits = hf(input_ids=ids).logits
    # GRPO's per-token log-probs of the completion (TRL computes them from the logits)
    tail = logits[:, -training["max_completion_length"] :].float().log_softmax(-1)
    tail.gather(-1, ids[:, -training["max_completion_length"] :, None]).mean().backward()
    peak = torch.cuda.max_memory_allocated() / 2**30
    free, total = torch.cuda.mem_get_info()
    del llm
    row("peak memory, one micro-batch beside vLLM", f"batch {batch} x {length} tokens: "
        f"{peak:.1f} GiB allocated by torch at peak; GPU {(total - free) / 2**30:.1f} of "
        f"{total / 2**30:.1f} GiB in use with vLLM at {share}",
        (total - free) < total)  # fmt: skip


@section("LoRA serving vs merged")
def smoke_lora(smollm2: Path, work: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from confagg.engine import make_engine, release_engine

    adapter, merged = work / "adapter", work / "merged"
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.bfloat16)
    peft = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                                           target_modules=["q_proj", "v_proj"]))  # fmt: skip
    peft.save_pretrained(adapter)
    subprocess.run([sys.executable, "-m", "confagg.merge", "--model", str(smollm2), "--adapter",
                    str(adapter), str(merged)], check=True)  # fmt: skip
    prompts = [f"Question {i}: what is {i} + {2 * i}? Answer:" for i in range(256)]
    params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    engine = {**SMOKE_ENGINE, "dtype": "bfloat16"}
    results = {}
    for name, path, lora in (("lora", smollm2, True), ("merged", merged, False)):
        llm = make_engine(str(path), 0, {**engine, **({"enable_lora": True, "max_lora_rank": 16}
                                                      if lora else {})})  # fmt: skip
        request = LoRARequest("smoke", 1, str(adapter)) if lora else None
        llm.generate(prompts[:8], params, lora_request=request, use_tqdm=False)  # warm-up
        start = time.perf_counter()
        outs = llm.generate(prompts, params, lora_request=request, use_tqdm=False)
        results[name] = ([o.outputs[0].text for o in outs], time.perf_counter() - start)
        release_engine(llm)
        del llm
    same = sum(a == b for a, b in zip(results["lora"][0], results["merged"][0], strict=True))
    row(
        "LoRA serving vs merged",
        f"greedy texts equal {same}/{len(prompts)}; LoRA takes "
        f"{results['lora'][1] / results['merged'][1]:.2f}x the merged model's time",
        same >= 0.9 * len(prompts),
    )  # bf16 sums in another order may flip a few greedy tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2", type=Path, default=REPO / "resources/models/smollm2-135m-instruct")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)

    import torch

    from confagg import preflight

    if not torch.cuda.is_available():
        print(f"gpu_smoke.py needs a CUDA GPU: torch {torch.__version__} sees none (CUDA "
              f"{torch.version.cuda or 'none: a CPU build'}). Run it on a GPU node with the "
              "README's GPU set-up.", file=sys.stderr)  # fmt: skip
        return 2
    start = time.perf_counter()
    versions = preflight.run(out=sys.stdout)
    name, size = versions.gpus[0]
    row("preflight", f"{name} {size / 2**30:.0f} GiB, driver {versions.driver}, CUDA "
        f"{versions.cuda_built}, torch {versions.torch}, vLLM {versions.vllm}, TRL {versions.trl}",
        True)  # fmt: skip
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (args.smollm2 / "config.json").exists():
        cmd = [sys.executable, "-m", "confagg.models", "smollm2", str(args.smollm2)]
        subprocess.run(cmd, check=True)
    qwen = qwen3_shaped(args.smollm2, work / "qwen3-1.7b-shaped")
    smoke_resume(args.smollm2, work)
    smoke_equality(args.smollm2, work)
    smoke_throughput(qwen, work)
    smoke_train(args.smollm2, work)
    smoke_memory(qwen, work)
    smoke_lora(args.smollm2, work)

    width = max(len(c) for c, _, _ in ROWS)
    print(f"\n{'check':<{width}} | verdict | measured")
    print(f"{'-' * width}-|---------|{'-' * 60}")
    for check, measured, verdict in ROWS:
        print(f"{check:<{width}} | {verdict:<7} | {measured}")
    print(f"\n{time.perf_counter() - start:.0f} s in all (work folder {work})")
    return 1 if any(v == "FAILED" for _, _, v in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
