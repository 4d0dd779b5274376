"""Sample stage: ``n`` solutions per problem of one shard with vLLM, with per-token confidence.

The shard's problems stream through vLLM (``confagg.streaming``: at most ``problems_in_flight``
at a time, confidences taken inside the engine loop) and each finished problem is written at
once to a resumable part file; with every problem done the parts are merged into the output
(``confagg.parts``: a killed run resumes from its parts, a damaged part is named).

Seeding: every problem's request carries its own seed, derived from (run seed, data set, shard,
problem id); vLLM gives sample ``i`` of a request that seed + ``i`` (``ParentRequest``), and the
sampler draws each request's noise from its own generator. So a sample depends on its seed and
its logits only, not on which other requests share its engine steps: a shard is reproducible
from its seed in-process and with the engine core in its own process (the default on GPU,
where requests reach the core process while it steps and batches differ from run to run), and a
resumed shard is the shard an uninterrupted run writes. On GPU the logits themselves can differ
in their last bits with the batch (README, "Reproducibility").
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from confagg.engine import make_engine, sampling_params
from confagg.parts import PartError, Parts, check_output, pause, stored_fingerprint
from confagg.problems import read_problems, shard_of
from confagg.prompts import render, solver_messages
from confagg.seeds import derive_seed
from confagg.settings import from_mapping
from confagg.streaming import (
    STREAM_INTERVAL,
    StreamingSampler,
    decoder,
    delta_output_kind,
    finished_to_table,
)

_PROGRESS_S = 60.0


@dataclass(frozen=True)
class Sampling:
    """The config's ``sampling`` section as vLLM reads it, with ``n`` per data set."""

    n: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    max_tokens: int
    logprobs: int


@dataclass(frozen=True)
class SampleSettings:
    """What the rule sample_shard passes (``confagg.settings.for_rule``)."""

    sampling: Sampling
    problems_in_flight: int
    shards: int  # the data set's shard count (training_pool or evaluation .shards)
    engine: dict
    prompt: dict
    chat_template_kwargs: dict


def fingerprint(problems: list[dict], model: str, seed: int, settings: SampleSettings) -> dict:
    """What the samples of a shard depend on: parts of another fingerprint are never mixed."""
    digest = hashlib.sha256(
        json.dumps([[p["id"], p["problem"]] for p in problems]).encode()
    ).hexdigest()
    return {
        "sampling": dataclasses.asdict(settings.sampling),
        "prompt": settings.prompt,
        "chat_template_kwargs": settings.chat_template_kwargs,
        "model": str(model),
        "seed": seed,
        "problems": digest,
    }


# --------------------------------------------------------------------------------------------
# The stage


def sample_shard(
    problems: list[dict],
    out: str | os.PathLike,
    model: str,
    seed: int,
    settings: SampleSettings,
    log=print,
    engine=None,
    request_params: Callable[[dict], Mapping] | None = None,
    capture_in_engine: bool = True,
) -> None:
    """Generate every problem of ``problems`` (one shard) into ``out``, resuming if needed.

    ``engine``: an already started vLLM engine to use instead of starting one (benchmarks).
    ``request_params``: per-problem ``SamplingParams`` fields over the settings' (benchmarks:
    lengths that differ); ``max_tokens`` may not exceed the settings'.
    """
    out = Path(out)
    parts = Parts(out)
    s = settings.sampling
    fp = fingerprint(problems, model, seed, settings)
    rows = len(problems) * s.n
    if out.exists():
        check_output(out, rows, fp)
        if parts.dir.exists():
            shutil.rmtree(parts.dir)
            log(f"removed {parts.dir}, left over from the run that completed {out}")
        log(f"{out} is complete ({rows} samples): nothing to do")
        return
    parts.clean_strays(log)
    if parts.merged.exists():
        try:
            complete = stored_fingerprint(pq.read_schema(parts.merged)) == fp
        except (OSError, pa.ArrowException):
            complete = False  # written atomically: cannot happen short of a damaged disk
        if complete:
            parts.finish()
            log(f"{out}: finished the merge a killed run had completed ({rows} samples)")
            return
        # a complete merge of other settings: that run is over and superseded
        shutil.rmtree(parts.dir)
        log(f"removed {parts.dir}: it held a merged shard of other settings")

    order = {p["id"]: i for i, p in enumerate(problems)}
    where = parts.scan(order, s.n, fp)
    pending = [p for p in problems if p["id"] not in where]
    log(
        f"{len(problems)} problems in shard; {len(where)} already sampled in "
        f"{len(parts.files())} part(s); {len(pending)} to go"
    )

    if pending:
        llm = engine or make_engine(model, seed, settings.engine)
        tokenizer = llm.get_tokenizer()
        base = dataclasses.asdict(s)
        # delta outputs every STREAM_INTERVAL tokens: vLLM builds a RequestOutput per sample per
        # output, a per-token cost the stage does not need (confidences come every step anyway)
        common = {
            "output_kind": delta_output_kind(),
            "detokenize": False,
            "stream_interval": STREAM_INTERVAL,
        }

        def jobs():
            for p in pending:
                extra = dict(request_params(p)) if request_params else {}
                if extra.get("max_tokens", s.max_tokens) > s.max_tokens:
                    raise ValueError(f"problem {p['id']}: max_tokens above {s.max_tokens}")
                prompt = render(
                    tokenizer,
                    solver_messages(p["problem"], settings.prompt),
                    settings.chat_template_kwargs,
                )
                # the problem's own seed: see the module's docstring
                fields = {"seed": derive_seed(seed, p["id"]), **common, **extra}
                yield p["id"], prompt, sampling_params(base, **fields)

        sampler = StreamingSampler(
            llm, s.n, s.logprobs, s.max_tokens, settings.problems_in_flight, capture_in_engine
        )
        decode = decoder(tokenizer)
        t0 = last = time.perf_counter()
        written = 0
        for count, done in enumerate(sampler.run(jobs(), lambda: pause("first-step")), 1):
            table = finished_to_table(done, tokenizer, decode)
            path = parts.write(table, s.n, fp)
            where.update({d.problem_id: (path, rg) for rg, d in enumerate(done)})
            written += len(done)
            pause(f"part-{count}")
            now = time.perf_counter()
            if now - last >= _PROGRESS_S or written == len(pending):
                last = now
                log(
                    f"{len(where)}/{len(problems)} problems done; {sampler.tokens} tokens in "
                    f"{now - t0:.1f}s ({sampler.tokens / max(now - t0, 1e-9):.0f} tok/s)"
                )

    merged = parts.merge(where, [p["id"] for p in problems], fp)
    parts.finish()
    log(f"wrote {merged} samples to {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Sample one shard of a problem set with vLLM.")
    ap.add_argument("--problems", required=True, help="normalised problem JSONL")
    ap.add_argument("--dataset", required=True, help="data set name (part of the seed)")
    ap.add_argument("--shard", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True, help="run or evaluation seed")
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument(
        "--settings",
        required=True,
        help="JSON: sampling, problems_in_flight, shards, engine, prompt, chat_template_kwargs",
    )
    ap.add_argument("out")
    args = ap.parse_args(argv)
    settings = from_mapping(SampleSettings, json.loads(args.settings))
    problems = shard_of(read_problems(args.problems), args.shard, settings.shards)
    seed = derive_seed(args.seed, args.dataset, args.shard)
    try:
        sample_shard(
            problems,
            args.out,
            args.model,
            seed,
            settings,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except PartError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
