"""Sample-stage benchmarks on the tiny Qwen3 and SmolLM2-135M (same prompts and parameters for
both), each against a baseline measured in the same run, on the same engine:

(a) tokens/s of the sample stage (streaming engine loop, confidences taken in the engine, parts
    and merge included)  vs  bare ``LLM.generate`` without logprobs: what capturing confidence
    costs. Target: at most 1.25x slower on the tiny model (the brief measured 6.2x for the
    chunked stage).
(b) a mixed-length workload (every other problem long: ``min_tokens = max_tokens``), stage vs
    the chunked stage it replaced (``LLM.generate`` with ``logprobs=20, flat_logprobs=True`` on
    chunks of problems, then per-sample confidence and text): the chunk barrier idles the engine
    while a chunk's long samples finish. Target: at least 1.0x.
(c) resident memory growth per generated token over a long run (tiny model; peak RSS during
    a run minus RSS before it, for a quarter of the run and for the whole: the slope between
    the two is what grows with the tokens), stage vs one chunk of the chunked stage. Target: at
    most 64 bytes per token (the brief measured ~2.9 KiB for the old stage).
(d) a check: the stage's texts and confidences equal ``LLM.generate``'s (with logprobs and the
    problems' seeds, the stage with half the problems in flight: other batches), sample for
    sample.
(e) what the per-request seeds cost (each request draws from its own generator): the stage
    with them vs the stage with ``seed=None`` (the engine's one generator).

Every baseline gets the stage's per-problem seeds. The engine runs in-process unless
``VLLM_ENABLE_V1_MULTIPROCESSING=1`` is set, which puts its core in its own process as on a GPU
(the check (d) holds in both modes):

    .venv/bin/python benchmarks/bench_sample.py [--smollm2 DIR] [--quick]
    VLLM_ENABLE_V1_MULTIPROCESSING=1 .venv/bin/python benchmarks/bench_sample.py --parts d

SmolLM2 comes from ``python -m confagg.models smollm2 DIR`` (converted there when DIR lacks it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

REPO = Path(__file__).resolve().parents[1]
ENGINE = {
    "max_model_len": 2048,
    "kv_cache_memory_bytes": 1 << 30,
    "enforce_eager": True,
    "dtype": "float32",
}
PROMPT = {
    "system": None,
    "instruction": "Put the final answer in \\boxed{}.",
    "example": {
        "problem": "What is 3 + 5?",
        "solution": "We add 3 and 5: 3 + 5 = 8. The answer is \\boxed{8}.",
    },
}


def build_tiny(out: Path) -> Path:
    from confagg.tinymodel import build_tiny_qwen3

    return build_tiny_qwen3(out, seed=0)


def smollm2(path: Path) -> Path:
    if not (path / "config.json").exists():
        cmd = [sys.executable, "-m", "confagg.models", "smollm2", str(path)]
        subprocess.run(cmd, check=True)
    return path


def settings_for(n: int, max_tokens: int, in_flight: int):
    from confagg.sample import SampleSettings
    from confagg.settings import from_mapping

    return from_mapping(
        SampleSettings,
        {
            "sampling": {
                "n": n,
                "temperature": 0.8,
                "top_p": 0.95,
                "top_k": 50,
                "min_p": 0.0,
                "max_tokens": max_tokens,
                "logprobs": 20,
            },
            "problems_in_flight": in_flight,
            "shards": 1,
            "engine": ENGINE,
            "prompt": PROMPT,
            "chat_template_kwargs": {},
        },
    )


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory while the block runs (sampled every 10 ms by a thread)."""

    def __enter__(self):
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


class Timed:
    """Wall and CPU seconds of a block (CPU: every thread of this process, engine included:
    the work done, which a shared machine's load does not inflate the way it does wall time)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def run_stage(llm, model, problems, settings, out_dir, request_params=None) -> tuple[int, Timed]:
    """(tokens, times) of one sample-stage run into a fresh output."""
    from confagg.sample import sample_shard

    fd, name = tempfile.mkstemp(suffix=".parquet", dir=out_dir)
    os.close(fd)
    os.unlink(name)
    with Timed() as t:
        sample_shard(
            problems, name, model, 0, settings, lambda m: None, llm, request_params=request_params
        )
    tokens = int(pq.read_table(name, columns=["num_tokens"]).column(0).to_numpy().sum())
    os.unlink(name)
    return tokens, t


def run_generate(llm, prompts, params) -> tuple[int, Timed]:
    with Timed() as t:
        outs = llm.generate(prompts, params, use_tqdm=False)
    return sum(len(c.token_ids) for o in outs for c in o.outputs), t


def run_chunked(llm, prompts, params, chunk: int) -> tuple[int, Timed]:
    """The chunked stage it replaced: generate with logprobs per chunk, then per sample the
    confidence array and the SAMPLES table (as the old ``outputs_to_table``)."""
    import pyarrow as pa

    from confagg.answers import THINK_END, extract_boxed
    from confagg.confidence import token_confidence

    tokens = 0
    with Timed() as t:
        for start in range(0, len(prompts), chunk):
            outs = llm.generate(
                prompts[start : start + chunk], params[start : start + chunk], use_tqdm=False
            )
            rows = {"text": [], "answer": [], "num_tokens": [], "conf": []}
            for req in outs:
                for c in req.outputs:
                    conf = token_confidence(c.logprobs.logprobs, 20).astype(np.float16)
                    rows["conf"].append(conf)
                    rows["text"].append(c.text)
                    rows["answer"].append(extract_boxed(c.text, THINK_END))
                    rows["num_tokens"].append(len(c.token_ids))
            conf = rows.pop("conf")
            table = pa.table(rows)
            offsets = np.concatenate(([0], np.cumsum([len(c) for c in conf]))).astype(np.int32)
            table = table.append_column(
                "token_confidence", pa.ListArray.from_arrays(offsets, np.concatenate(conf))
            )
            tokens += sum(rows["num_tokens"])
            del outs, table
    return tokens, t


def compare(runs_a, runs_b, reps: int = 2):
    """Alternate two runs ``reps`` times; each one's best tokens per wall second and per CPU
    second."""
    a, b = [], []
    for _ in range(reps):
        for fn, acc in ((runs_a, a), (runs_b, b)):
            tokens, t = fn()
            acc.append((tokens / t.wall, tokens / t.cpu))

    def best(runs):
        return max(r[0] for r in runs), max(r[1] for r in runs)

    return best(a), best(b)


def seeded(params, problems) -> list:
    """``params`` (one, or one per problem) with each problem's seed, as the stage gives them
    (``sample_shard(..., seed=0)``: derived from 0 and the problem id)."""
    from confagg.seeds import derive_seed

    params = params if isinstance(params, list) else [params] * len(problems)
    out = []
    for q, one in zip(problems, params, strict=True):
        copy = one.clone()
        copy.seed = derive_seed(0, q["id"])
        out.append(copy)
    return out


def prompts_of(llm, problems) -> list[str]:
    from confagg.prompts import render, solver_messages

    tok = llm.get_tokenizer()
    return [render(tok, solver_messages(p["problem"], PROMPT), {}) for p in problems]


def bench_model(name: str, model: Path, sizes: dict, out_dir: Path, parts: str) -> None:
    from confagg.confidence import token_confidence
    from confagg.engine import make_engine, release_engine, sampling_params
    from confagg.problems import demo_problems
    from confagg.sample import sample_shard
    from confagg.tables import SAMPLES, read_table

    llm = make_engine(str(model), 0, ENGINE)
    model = str(model)

    if "a" in parts:  # the stage vs bare generate without logprobs, same prompts and parameters
        p, n, t = sizes["a"]
        problems = demo_problems(p, seed=11)
        prompts = prompts_of(llm, problems)
        settings = settings_for(n, t, in_flight=p)
        bare_params = sampling_params(dataclasses.asdict(settings.sampling), logprobs=None)
        bare_params = seeded(bare_params, problems)
        llm.generate(prompts[:2], bare_params, use_tqdm=False)  # warm-up
        bare, stage = compare(
            lambda: run_generate(llm, prompts, bare_params),
            lambda: run_stage(llm, model, problems, settings, out_dir),
        )
        print(
            f"[{name}] (a) {p} problems x n={n} x <= {t} tokens, all in flight: generate "
            f"without logprobs {bare[0]:7.0f} tok/s ({bare[1]:7.0f} per CPU s), stage "
            f"{stage[0]:7.0f} tok/s ({stage[1]:7.0f} per CPU s): {bare[0] / stage[0]:.2f}x "
            f"slower by wall time, {bare[1] / stage[1]:.2f}x by CPU time  (target <= 1.25x on "
            "the tiny model)",
            flush=True,
        )

    if "b" in parts:  # mixed lengths: the stage vs the chunked stage, same concurrency bound
        p, n, long, short, chunk = sizes["b"]
        problems = demo_problems(p, seed=12)
        prompts = prompts_of(llm, problems)
        settings = settings_for(n, long, in_flight=chunk)

        def lengths(i: int) -> dict:
            if i % 2 == 0:
                return {"min_tokens": long, "max_tokens": long}
            return {"max_tokens": short}

        index = {q["id"]: i for i, q in enumerate(problems)}
        s = dataclasses.asdict(settings.sampling)
        chunk_params = seeded([sampling_params(s, **lengths(i)) for i in range(p)], problems)
        old, new = compare(
            lambda: run_chunked(llm, prompts, chunk_params, chunk),
            lambda: run_stage(
                llm, model, problems, settings, out_dir, lambda q: lengths(index[q["id"]])
            ),
        )
        print(
            f"[{name}] (b) {p} problems x n={n}, every other one {long} tokens, the rest <= "
            f"{short}; {chunk} problems per chunk / in flight: chunked generate with logprobs "
            f"{old[0]:7.0f} tok/s ({old[1]:7.0f} per CPU s), stage {new[0]:7.0f} tok/s "
            f"({new[1]:7.0f} per CPU s): {new[0] / old[0]:.2f}x by wall time, "
            f"{new[1] / old[1]:.2f}x by CPU time  (target >= 1.0x)",
            flush=True,
        )

    if "d" in parts:  # the stage's rows are generate's, sample for sample (the same seeds)
        p, n, t = sizes["d"]
        problems = demo_problems(p, seed=13)
        settings = settings_for(n, t, in_flight=max(p // 2, 1))  # not generate's batches
        out = out_dir / f"check-{name}.parquet"
        sample_shard(problems, out, model, 0, settings, lambda m: None, llm)
        table = read_table(out, SAMPLES)
        params = seeded(sampling_params(dataclasses.asdict(settings.sampling)), problems)
        outs = llm.generate(prompts_of(llm, problems), params, use_tqdm=False)
        comps = [c for o in outs for c in o.outputs]
        core = type(llm.llm_engine.engine_core).__name__  # InprocClient or SyncMPClient
        texts = table.column("text").to_pylist()
        confs = table.column("token_confidence").to_pylist()
        same_text = sum(a == c.text for a, c in zip(texts, comps, strict=True))
        same_conf = sum(
            np.array_equal(
                np.asarray(a, np.float16), token_confidence(c.logprobs.logprobs).astype(np.float16)
            )
            for a, c in zip(confs, comps, strict=True)
        )
        print(
            f"[{name}] (d) {len(comps)} samples, engine core client {core}: texts equal to "
            f"LLM.generate's {same_text}, confidences equal {same_conf}",
            flush=True,
        )

    if "e" in parts:  # per-request seeds vs the engine's one generator, the same stage run
        p, n, t = sizes["a"]
        problems = demo_problems(p, seed=11)
        settings = settings_for(n, t, in_flight=p)
        plain, own = compare(
            lambda: run_stage(llm, model, problems, settings, out_dir, lambda q: {"seed": None}),
            lambda: run_stage(llm, model, problems, settings, out_dir),
        )
        print(
            f"[{name}] (e) {p} problems x n={n} x <= {t} tokens: stage without seeds "
            f"{plain[0]:7.0f} tok/s, with the problems' seeds {own[0]:7.0f} tok/s: "
            f"{plain[0] / own[0]:.2f}x slower by wall time, {plain[1] / own[1]:.2f}x by CPU time",
            flush=True,
        )

    if "c" in parts:  # memory growth per generated token: the whole long run vs one old chunk
        p, n, t, in_flight = sizes["c"]
        problems = demo_problems(p, seed=14)
        settings = settings_for(n, t, in_flight=in_flight)
        fixed = {"min_tokens": t, "max_tokens": t}
        run_stage(llm, model, problems[:2], settings, out_dir, lambda q: fixed)  # warm-up
        # a quarter run, then the whole: what grows with the tokens is the slope between them
        # (what both runs allocate once, buffers and the first part written, cancels out)
        runs = []
        for size in (max(p // 4, 1), p):
            with PeakRSS() as mem:
                tokens, timed = run_stage(llm, model, problems[:size], settings, out_dir,
                                          lambda q: fixed)  # fmt: skip
            runs.append((tokens, mem.growth, timed.wall))
        (small, small_growth, _), (tokens, growth, wall) = runs
        slope = (growth - small_growth) / (tokens - small)
        chunk_prompts = prompts_of(llm, problems[:in_flight])
        params = [sampling_params(dataclasses.asdict(settings.sampling), **fixed)] * in_flight
        with PeakRSS() as old_mem:
            old_tokens, _ = run_chunked(llm, chunk_prompts, params, in_flight)
        print(
            f"[{name}] (c) {p} problems x n={n} x {t} tokens ({tokens} tokens, {wall:.0f} s), "
            f"{in_flight} in flight: peak RSS growth {growth / 2**20:.1f} MiB "
            f"({growth / tokens:.1f} bytes/token); a quarter of it ({small} tokens): "
            f"{small_growth / 2**20:.1f} MiB; growth per generated token (the slope between "
            f"the two) {slope:.1f} bytes (target <= 64); one chunk of the chunked stage "
            f"({in_flight} problems, {old_tokens} tokens): {old_mem.growth / 2**20:.1f} MiB = "
            f"{old_mem.growth / old_tokens:.0f} bytes/token",
            flush=True,
        )

    release_engine(llm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2", type=Path, default=REPO / "resources/models/smollm2-135m-instruct")
    ap.add_argument("--quick", action="store_true", help="smaller workloads for (a) and (b)")
    ap.add_argument("--parts", default="abcde", help="which of (a) (b) (c) (d) (e) to run")
    ap.add_argument("--models", default="tiny,smollm2", help="tiny, smollm2 or both")
    ap.add_argument(
        "--memory-run",
        default="64,16,1024,16",
        help="(c): problems, n, tokens per sample, problems in flight",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sample-"))
    q = args.quick
    sizes = {
        "tiny": {
            "a": (16, 8, 128) if q else (32, 8, 512),
            "b": (16, 8, 256, 32, 4) if q else (64, 8, 512, 64, 16),
            "c": tuple(int(x) for x in args.memory_run.split(",")),
            "d": (4, 4, 64),
        },
        "smollm2": {
            "a": (8, 4, 32) if q else (16, 8, 96),
            "b": (8, 4, 64, 8, 4) if q else (32, 4, 128, 16, 8),
            "d": (4, 4, 48),
        },
    }
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)
    for name in args.models.split(","):
        model = build_tiny(work / "tiny-qwen3") if name == "tiny" else smollm2(args.smollm2)
        parts = args.parts.replace("c", "") if name != "tiny" else args.parts
        bench_model(name, model, sizes[name], work, parts)
        print(f"load average: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
