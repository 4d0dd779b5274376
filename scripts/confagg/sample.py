"""Sample stage: ``n`` solutions per problem of one shard with vLLM, with per-token confidence.

Resumable: problems are generated in chunks and each finished chunk is written atomically to
``<out>.parts/part-NNNNN.parquet``. A rerun after a kill reads the finished parts, generates only
the problems none of them holds, and finally merges everything into ``<out>`` (atomically) and
removes the parts. So no finished sample is lost and none is duplicated.

Seeding: vLLM is seeded once per engine (``LLM(seed=...)``; a per-request seed with ``n > 1``
crashes on the CPU build). The seed is derived from (run seed, data set, shard, number of
problems already finished), so an uninterrupted shard is reproducible, and so is a resumed one
given the same point of interruption.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from confagg.answers import extract_boxed
from confagg.confidence import token_confidence
from confagg.engine import make_engine, sampling_params
from confagg.problems import read_problems, shard_of
from confagg.prompts import render, solver_messages
from confagg.seeds import derive_seed
from confagg.tables import SAMPLES, read_table, write_table


def parts_dir(out: str | os.PathLike) -> Path:
    """Where a shard keeps its finished chunks until it is complete."""
    return Path(f"{out}.parts")


def outputs_to_table(problem_ids: list[str], request_outputs, k: int) -> pa.Table:
    """One SAMPLES row per completion of each vLLM ``RequestOutput``."""
    cols: dict[str, list] = {n: [] for n in SAMPLES.names}
    confs: list[np.ndarray] = []
    for pid, req in zip(problem_ids, request_outputs, strict=True):
        for comp in req.outputs:
            conf = token_confidence(comp.logprobs.logprobs, k)
            cols["problem_id"].append(pid)
            cols["sample_idx"].append(comp.index)
            cols["text"].append(comp.text)
            cols["answer"].append(extract_boxed(comp.text))
            cols["num_tokens"].append(len(comp.token_ids))
            cols["finish_reason"].append(comp.finish_reason or "unknown")
            confs.append(conf.astype(np.float16))
    lengths = np.fromiter((len(c) for c in confs), dtype=np.int32, count=len(confs))
    offsets = np.concatenate(([0], np.cumsum(lengths, dtype=np.int32)))
    flat = np.concatenate(confs) if confs else np.zeros(0, np.float16)
    cols["token_confidence"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    return pa.table(cols, schema=SAMPLES)


def _finished_parts(parts: Path) -> list[Path]:
    return sorted(parts.glob("part-*.parquet")) if parts.is_dir() else []


def sample_shard(
    problems: list[dict],
    out: str | os.PathLike,
    model: str,
    seed: int,
    settings: Mapping,
    log=print,
    engine=None,
) -> None:
    """Generate every problem of ``problems`` (one shard) into ``out``, resuming if needed.

    ``engine``: an already started vLLM engine to use instead of starting one (benchmarks).
    """
    out = Path(out)
    parts = parts_dir(out)
    order = {p["id"]: i for i, p in enumerate(problems)}
    finished = _finished_parts(parts)
    done: set[str] = set()
    for part in finished:
        done.update(read_table(part, SAMPLES).column("problem_id").unique().to_pylist())
    pending = [p for p in problems if p["id"] not in done]
    log(
        f"{len(problems)} problems in shard; {len(done)} already sampled in {len(finished)} "
        f"part(s); {len(pending)} to go"
    )

    if pending:
        llm = engine or make_engine(model, derive_seed(seed, len(done)), settings["engine"])
        tokenizer = llm.get_tokenizer()
        params = sampling_params(settings["sampling"])
        size = settings["problems_per_chunk"]
        next_part = len(finished)
        for start in range(0, len(pending), size):
            chunk = pending[start : start + size]
            prompts = [
                render(
                    tokenizer,
                    solver_messages(p["problem"], settings["prompt"]),
                    settings.get("chat_template_kwargs", {}),
                )
                for p in chunk
            ]
            t0 = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            table = outputs_to_table(
                [p["id"] for p in chunk], outputs, settings["sampling"]["logprobs"]
            )
            tokens = sum(table.column("num_tokens").to_pylist())
            dt = time.perf_counter() - t0
            write_table(table, parts / f"part-{next_part:05d}.parquet", SAMPLES)
            next_part += 1
            log(
                f"chunk of {len(chunk)} problems: {table.num_rows} samples, {tokens} tokens in "
                f"{dt:.1f}s ({tokens / max(dt, 1e-9):.0f} tok/s); "
                f"{len(done) + start + len(chunk)}/{len(problems)} done"
            )

    tables = [read_table(p, SAMPLES) for p in _finished_parts(parts)]
    merged = pa.concat_tables(tables) if tables else SAMPLES.empty_table()
    _check_complete(merged, order, settings["sampling"]["n"], out)
    rank = pa.array([order[i] for i in merged.column("problem_id").to_pylist()], pa.int64())
    merged = (
        merged.append_column("_order", rank)
        .sort_by([("_order", "ascending"), ("sample_idx", "ascending")])
        .drop_columns(["_order"])
    )
    write_table(merged, out, SAMPLES)
    shutil.rmtree(parts, ignore_errors=True)
    log(f"wrote {merged.num_rows} samples to {out}")


def _check_complete(table: pa.Table, order: Mapping[str, int], n: int, out: Path) -> None:
    """Every problem exactly ``n`` samples, no stray problem: else refuse to write ``out``."""
    pairs = set(
        zip(
            table.column("problem_id").to_pylist(),
            table.column("sample_idx").to_pylist(),
            strict=True,
        )
    )
    expected = {(pid, i) for pid in order for i in range(n)}
    if len(pairs) != table.num_rows or pairs != expected:
        raise RuntimeError(
            f"{out}: samples in {parts_dir(out)} do not match the shard (rows {table.num_rows}, "
            f"distinct {len(pairs)}, expected {len(expected)}); the problem set or n changed "
            f"since they were written: delete that folder to start the shard again"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Sample one shard of a problem set with vLLM.")
    ap.add_argument("--problems", required=True, help="normalised problem JSONL")
    ap.add_argument("--dataset", required=True, help="data set name (part of the seed)")
    ap.add_argument("--shard", type=int, required=True)
    ap.add_argument("--shards", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True, help="run or evaluation seed")
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument(
        "--settings",
        required=True,
        help="JSON: sampling, engine, prompt, chat_template_kwargs, problems_per_chunk",
    )
    ap.add_argument("out")
    args = ap.parse_args(argv)
    problems = shard_of(read_problems(args.problems), args.shard, args.shards)
    seed = derive_seed(args.seed, args.dataset, args.shard)
    sample_shard(
        problems,
        args.out,
        args.model,
        seed,
        json.loads(args.settings),
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )


if __name__ == "__main__":
    main()
