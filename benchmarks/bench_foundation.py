"""Foundation benchmarks, each printed as a ratio against a baseline measured in the same run.

(a) sample stage tokens/s  vs  bare ``LLM.generate`` (same engine, prompts, SamplingParams);
(b) scoring the four metrics for many long traces  vs  one numpy reduction pass (per-trace sum
    of the same float16 array);
(c) bytes per token on disk of the confidence arrays (the ``token_confidence`` column chunks of
    the samples parquet the stage wrote, from their footer metadata).

    .venv/bin/python benchmarks/bench_foundation.py [--model resources/models/smollm2-135m-instruct]
        [--traces 100000 --trace-len 4096]

Targets: (a) >= 0.95, (b) <= 5x, (c) <= 2.5 bytes/token.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def bench_sampling(model: str, n_problems: int, n: int, max_tokens: int, chunk: int) -> Path:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import yaml

    from confagg.engine import make_engine, sampling_params
    from confagg.problems import demo_problems
    from confagg.prompts import render, solver_messages
    from confagg.sample import SampleSettings, sample_shard
    from confagg.settings import from_mapping

    demo = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    settings = {
        "sampling": {
            "n": n,
            "temperature": 0.8,
            "top_p": 0.95,
            "top_k": 50,
            "min_p": 0.0,
            "max_tokens": max_tokens,
            "logprobs": 20,
        },
        "problems_in_flight": chunk,
        "shards": 1,
        "engine": demo["generator"]["engine"],
        "prompt": demo["prompt"],
        "chat_template_kwargs": {},
    }
    problems = demo_problems(n_problems, seed=11)
    llm = make_engine(model, 0, settings["engine"])
    tok = llm.get_tokenizer()
    prompts = [render(tok, solver_messages(p["problem"], settings["prompt"]), {}) for p in problems]
    params = sampling_params(settings["sampling"])
    llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up

    # Alternate the two, twice each, and keep each one's best: the machine is shared.
    bare, stage = [], []
    out_dir = Path(tempfile.mkdtemp(prefix="bench-sample-"))
    for rep in range(2):
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        bare.append(sum(len(c.token_ids) for o in outs for c in o.outputs) / dt)

        out = out_dir / f"shard-{rep}.parquet"
        t0 = time.perf_counter()
        stage_settings = from_mapping(SampleSettings, settings)
        sample_shard(problems, out, model, 0, stage_settings, log=lambda m: None, engine=llm)
        dt = time.perf_counter() - t0
        stage.append(pq.read_table(out, columns=["num_tokens"]).column(0).to_numpy().sum() / dt)
    print(
        f"(a) sampling, {n_problems} problems x n={n}, max_tokens={max_tokens}, "
        f"{chunk} problems in flight, model {Path(model).name}"
    )
    print(
        f"    bare LLM.generate: {max(bare):8.1f} tok/s   sample stage: {max(stage):8.1f} tok/s"
        f"   ratio {max(stage) / max(bare):.3f}  (target >= 0.95)"
    )
    return out


def bench_scoring(traces: int, length: int) -> None:
    from confagg.confidence import trace_metrics

    rng = np.random.default_rng(0)
    conf = (rng.gamma(4.0, 0.5, size=traces * length)).astype(np.float16)
    offsets = np.arange(traces + 1, dtype=np.int64) * length
    t0 = time.perf_counter()
    np.add.reduceat(conf.astype(np.float32), offsets[:-1])
    base = time.perf_counter() - t0
    t0 = time.perf_counter()
    trace_metrics(conf, offsets, window=2048, tail_tokens=2048)
    full = time.perf_counter() - t0
    print(f"(b) scoring {traces} x {length} tokens ({conf.nbytes / 2**30:.2f} GiB float16)")
    print(
        f"    one reduction pass: {base:6.2f} s   four metrics: {full:6.2f} s   "
        f"ratio {full / base:.2f}x  (target <= 5x)"
    )


def bench_bytes(samples: Path) -> None:
    meta = pq.ParquetFile(samples).metadata
    size = 0
    for rg in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            column = meta.row_group(rg).column(c)
            if column.path_in_schema.startswith("token_confidence"):
                size += column.total_compressed_size
    tokens = pq.read_table(samples, columns=["num_tokens"]).column(0).to_numpy().sum()
    print(
        f"(c) confidence arrays on disk: {size} bytes for {tokens} tokens = "
        f"{size / tokens:.2f} bytes/token  (target <= 2.5; raw float16 = 2.00)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "resources/models/smollm2-135m-instruct"))
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--chunk", type=int, default=8, help="problems in flight in the stage")
    ap.add_argument("--traces", type=int, default=100_000)
    ap.add_argument("--trace-len", type=int, default=4096)
    args = ap.parse_args()
    bench_scoring(args.traces, args.trace_len)
    samples = bench_sampling(args.model, args.problems, args.n, args.max_tokens, args.chunk)
    bench_bytes(samples)


if __name__ == "__main__":
    main()
