"""Aggregator runs: every aggregator variant on the disjoint candidate sets of one benchmark x seed.

Sets are the ones every voting method at ``k = m`` uses (confagg.evaluate), for every set size
``m`` of ``evaluation.set_sizes``: per problem, ``confagg.methods.disjoint_sets`` of its samples
in ``sample_idx`` order, set ``j`` = samples ``j*m .. j*m+m-1``. Each variant (config
``evaluation.aggregators``) reads every set with or without the confidence scores in its prompt
(confagg.aggregator_prompt, the builder training uses; a control shows them permuted within the
set or all equal), with the base model or with the LoRA adapter of each training run of one
training variant (``training.variants`` x ``training.seeds``: e.g. Conf-AggLM trained with
confidences, plain AggLM without; rows carry the run's ``train_seed``), and writes
``outputs_per_set`` completions per set, each answer read and graded against the gold answer by
the shared verifier, the way the samples are (``grading.extraction`` after ``grading.think_end``:
``confagg.verifier.read_and_verify``). With thinking mode (``require_think_end``), a completion
that never closes its thinking has no answer.

One engine serves every variant, each training run's adapter applied per request (vLLM LoRA);
or, with ``evaluation.trained_model: merged``, the base variants run on one engine and each
training run's variants on an engine over its merged model (vLLM's LoRA is slow on CPU).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from confagg.answers import Reading
from confagg.candidates import CandidateTexts, load_candidates
from confagg.confidence import METRICS
from confagg.methods import disjoint_sets
from confagg.problems import read_problems
from confagg.seeds import derive_seed
from confagg.settings import load, run_key
from confagg.tables import AGG_OUTPUTS, TableWriter, iter_batches

# Sets are read, prompted, generated, graded and written a batch of whole problems at a time,
# about this many completions (sets x r, over every set size) per batch, so memory holds one
# batch's texts and outputs whatever the benchmark's size and grid. Each batch is one generate
# call per variant and run, which ends with its slowest completion: batches are large so that
# this wait is rare.
BATCH_CALLS = 1024


@dataclass(frozen=True)
class Variant:
    """One entry of ``evaluation.aggregators``."""

    name: str
    trained: str | None  # the training variant (a key of training.variants); None: the base model
    confidence: bool  # confidences shown in the prompt
    confidences: str  # real | permuted | equal (aggregator_prompt.control_confidences)
    prompt: dict  # aggregator.prompt with that choice made (confagg.aggregator_prompt reads it)


@dataclass(frozen=True)
class Settings:
    """What the rule aggregate_sets passes (``confagg.settings.for_rule``)."""

    set_sizes: tuple[int, ...]  # m of every set (evaluation.set_sizes)
    shard: int  # this job's shard of the problems (the rule's wildcard)
    shards: int  # evaluation.aggregate_shards: problem j of the benchmark file is in shard j % n
    variants: tuple[Variant, ...]
    train_seeds: tuple[int, ...]  # training.seeds: a trained variant runs once per seed
    # vllm.SamplingParams keywords: evaluation.aggregator_sampling, n = outputs_per_set
    sampling: dict
    engine: dict  # keyword arguments of vllm.LLM (generator.engine)
    chat_template_kwargs: dict
    lora_rank: int  # training.lora.r: the engine's max LoRA rank must hold it
    trained_model: str  # "lora" | "merged"
    reading: Reading  # grading.extraction, think_end, require_think_end (the aggregator's)
    verify_timeout: float  # grading.timeout: CPU seconds per math-verify check
    seed: int


def batch_candidates(set_sizes: Sequence[int], outputs_per_set: int) -> int:
    """Candidates per batch that make about :data:`BATCH_CALLS` completions: each candidate is in
    one set of each size, a set of ``m`` has ``r`` completions (m = 8, r = 1: 8192)."""
    calls_per_candidate = outputs_per_set * sum(1 / m for m in set_sizes)
    return max(1, int(BATCH_CALLS / calls_per_candidate))


def problem_batches(df: pd.DataFrame, max_candidates: int) -> list[np.ndarray]:
    """Row positions of ``df`` (candidates.load_candidates: sorted by problem) in batches of whole
    problems, about ``max_candidates`` rows each (a larger problem is a batch alone)."""
    pid = df["problem_id"].to_numpy(object)
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]]) if len(pid) else np.array([], int)
    bounds, first = [], 0
    for start in starts[1:].tolist():
        if start - first >= max_candidates:
            bounds.append((first, start))
            first = start
    if len(pid):
        bounds.append((first, len(pid)))
    # a batch may end past max_candidates by less than one problem
    return [np.arange(lo, hi) for lo, hi in bounds]


def candidate_sets(
    df: pd.DataFrame, positions: np.ndarray, texts: CandidateTexts, set_sizes: Sequence[int]
) -> list[tuple[str, int, int, list[dict]]]:
    """(problem_id, m, set_idx, candidates) of the disjoint sets of ``m`` samples, for every
    ``m`` of ``set_sizes``, of the problems at ``positions`` of ``df`` (whole problems, as
    :func:`problem_batches` gives them), with their texts (after the end-of-thinking marker)
    read once for these rows."""
    part = df.iloc[positions]
    text = texts.read(np.arange(len(part)), part[["shard", "row"]].to_numpy(np.int64))
    answers = part["answer"].to_numpy(object)
    metrics = {k: part[k].to_numpy() for k in METRICS}
    out = []
    for pid, rows in part.groupby("problem_id", sort=False).indices.items():
        # rows are in sample order (load_candidates sorts by problem, then sample)
        for m in set_sizes:
            for j, chosen in enumerate(disjoint_sets(len(rows), m)):
                cands = [
                    {
                        "text": text[i][0],
                        "answer": None if pd.isna(answers[i]) else answers[i],
                        **{k: float(metrics[k][i]) for k in METRICS},
                    }
                    for i in rows[chosen].tolist()
                ]
                out.append((pid, m, j, cands))
    return out


def shown_candidates(
    variant: Variant, pid: str, m: int, j: int, cands: list[dict], seed: int
) -> list[dict]:
    """The candidates of one set as ``variant`` shows them: a control's confidences
    (``aggregator_prompt.control_confidences``), permuted with a seed of the set's own, the same
    for every variant and run that permutes it (their outputs pair up set by set)."""
    from confagg.aggregator_prompt import control_confidences

    if variant.confidences == "real":
        return cands
    rng = np.random.default_rng(derive_seed(seed, "confidences", pid, m, j))
    return control_confidences(cands, variant.confidences, rng)


# One run of a variant: (variant, training seed; None for a prompted variant).
Run = tuple[Variant, int | None]


def variant_runs(variants: Sequence[Variant], train_seeds: Sequence[int]) -> list[Run]:
    """Every variant once, a trained one once per training seed."""
    return [(v, s) for v in variants for s in ([None] if v.trained is None else list(train_seeds))]


def _key(run: Run) -> str | None:
    """The training run's name (``settings.run_key``: ``--trained`` keys); None: prompted."""
    variant, seed = run
    return None if variant.trained is None else run_key(variant.trained, seed)


def _engine_plan(
    model: str, trained: Mapping[str, str], runs: Sequence[Run], mode: str
) -> list[tuple[str, list[Run], bool]]:
    """(engine model, its runs, with LoRA) per engine, started one after the other.
    ``trained``: training run (``<variant>/seed<s>``) -> its adapter (mode "lora") or merged
    model (mode "merged")."""
    keys = list(dict.fromkeys(k for k in map(_key, runs) if k is not None))
    missing = sorted(set(keys) - set(trained))
    if missing:
        raise ValueError(f"variants use training runs {missing} but no --trained gives them")
    if keys and mode == "merged":  # the base model, then one engine per merged model
        plan = [(model, [r for r in runs if _key(r) is None], False)]
        return plan + [(trained[k], [r for r in runs if _key(r) == k], False) for k in keys]
    return [(model, list(runs), bool(keys))]  # the adapters applied per request


def _run_rows(llm, run, sets, problems, settings, loras, rows) -> None:
    """Generate one run's completions for every set and append them to ``rows``."""
    from vllm import SamplingParams

    from confagg.aggregator_prompt import render_prompt
    from confagg.seeds import derive_seed

    variant, train_seed = run
    tokenizer = llm.get_tokenizer()
    rendered = [
        render_prompt(
            tokenizer,
            problems[pid]["problem"],
            shown_candidates(variant, pid, m, j, cands, settings.seed),
            variant.prompt,
            settings.chat_template_kwargs,
        )
        for pid, m, j, cands in sets
    ]
    # each set its own seed (vLLM: output i gets seed + i): the outputs do not depend on how the
    # engine batches requests, which differs from run to run when its core is another process
    seeded = [
        SamplingParams(
            **settings.sampling,
            seed=derive_seed(settings.seed, variant.name, train_seed, pid, m, j),
        )
        for pid, m, j, _ in sets
    ]
    outputs = llm.generate(
        [r.text for r in rendered],
        seeded,
        use_tqdm=False,
        lora_request=loras.get(_key(run)),
    )
    for (pid, m, j, _), prompt, req in zip(sets, rendered, outputs, strict=True):
        for comp in req.outputs:
            rows["method"].append(variant.name)
            rows["problem_id"].append(pid)
            rows["set_idx"].append(j)
            rows["k"].append(m)
            rows["output_idx"].append(comp.index)
            rows["train_seed"].append(train_seed)
            rows["text"].append(comp.text)
            rows["num_tokens"].append(len(comp.token_ids))
            rows["prompt_tokens"].append(prompt.num_tokens)
            rows["prompt_truncated"].append(prompt.truncated)


def grade_outputs(
    rows: dict[str, list], problems: Mapping[str, dict], settings: Settings, processes: int
) -> None:
    """Fill ``rows``' answer, correct and status columns (AGG_OUTPUTS) from their texts: each
    answer read by ``settings.reading`` and verified against its problem's gold answer, as the
    samples are graded (``confagg.verifier.read_and_verify``)."""
    from confagg.verifier import read_and_verify

    golds = [problems[pid]["answer"] for pid in rows["problem_id"]]
    rows["answer"], verdicts = read_and_verify(
        golds, rows["text"], settings.reading, processes, settings.verify_timeout
    )
    rows["correct"] = [v.correct for v in verdicts]
    rows["status"] = [v.status for v in verdicts]


def run_variants(
    model: str,
    trained: Mapping[str, str],
    problems: Mapping[str, dict],
    candidates: pd.DataFrame,
    texts: CandidateTexts,
    settings: Settings,
    writer: TableWriter,
    processes: int = 1,
    log=print,
) -> None:
    """Generate every variant's outputs for every set of ``candidates`` (candidates.load_candidates,
    texts read from ``texts`` a batch of problems at a time) and write them to ``writer`` as
    AGG_OUTPUTS rows graded with ``processes`` verifier workers.

    ``trained`` maps each training run (``<variant>/seed<s>``) to its LoRA adapter when
    ``settings.trained_model`` is "lora" (applied per request on the base model's engine), to
    its merged model folder (confagg.merge) when it is "merged" (one engine each)."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from confagg.engine import make_engine, release_engine

    params = SamplingParams(**settings.sampling)  # checked here, seeded per set
    runs = variant_runs(settings.variants, settings.train_seeds)
    plan = _engine_plan(model, trained, runs, settings.trained_model)
    per_batch = batch_candidates(settings.set_sizes, params.n)
    batches = problem_batches(candidates, per_batch)
    for engine_model, group, with_lora in plan:
        if not group:
            continue
        engine_kwargs = dict(settings.engine)
        loras = {}
        if with_lora:
            # vLLM accepts only some max ranks: the smallest one that holds the adapter's
            ranks = [r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= settings.lora_rank]
            engine_kwargs.update(enable_lora=True, max_lora_rank=ranks[0] if ranks else 512)
            keys = dict.fromkeys(k for k in map(_key, group) if k is not None)
            loras = {k: LoRARequest(k, i, str(trained[k])) for i, k in enumerate(keys, start=1)}
        llm = make_engine(engine_model, settings.seed, engine_kwargs)
        for b, positions in enumerate(batches, start=1):
            sets = candidate_sets(candidates, positions, texts, settings.set_sizes)
            rows: dict[str, list] = {n: [] for n in AGG_OUTPUTS.names}
            for run in group:
                _run_rows(llm, run, sets, problems, settings, loras, rows)
            grade_outputs(rows, problems, settings, processes)
            writer.write(pa.table(rows, schema=AGG_OUTPUTS))
            names = ", ".join(dict.fromkeys(v.name for v, _ in group))
            log(f"{names}: batch {b}/{len(batches)}, {len(sets)} sets x {params.n} outputs "
                f"({engine_model})")  # fmt: skip
        release_engine(llm)
        del llm


def shard_problems(problems: Mapping[str, dict], shard: int, shards: int) -> dict[str, dict]:
    """The problems of one aggregation job: problem ``j`` of the benchmark file (in its order)
    belongs to shard ``j % shards``, so shards are disjoint, cover every problem and are about
    equal in size."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard}: expected 0 <= shard < {shards} (aggregate_shards)")
    return {pid: p for j, (pid, p) in enumerate(problems.items()) if j % shards == shard}


def merge_shards(shards: Sequence[str | Path], out: str | Path) -> int:
    """The aggregation jobs' tables as one table of a benchmark x seed (streamed row group by
    row group, written atomically); returns its rows."""
    with TableWriter(out, AGG_OUTPUTS) as writer:
        for path in shards:
            for batch in iter_batches(path, AGG_OUTPUTS):
                writer.write(batch)
    return writer.rows


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["merge"]:  # python -m confagg.aggregate merge OUT SHARD...
        merge = argparse.ArgumentParser(description="the shards' tables as one table")
        merge.add_argument("out")
        merge.add_argument("shards", nargs="+")
        args = merge.parse_args(argv[1:])
        rows = merge_shards(args.shards, args.out)
        print(f"wrote {rows} aggregator outputs to {args.out}", file=sys.stderr)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", required=True)
    ap.add_argument("--samples", nargs="+", required=True)
    ap.add_argument("--scores", nargs="+", required=True)
    ap.add_argument("--grades", nargs="+", required=True)
    ap.add_argument("--model", required=True, help="aggregator base model folder")
    ap.add_argument(
        "--trained",
        action="append",
        default=[],
        metavar="RUN=PATH",
        help="a training run's LoRA adapter, or its merged model (trained_model: merged), RUN "
        "as <variant>/seed<s>; once per run the variants use",
    )
    ap.add_argument("--settings", required=True, help="JSON, see the rule aggregate_sets")
    ap.add_argument("--processes", type=int, default=1, help="verifier processes for grading")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    settings = load(Settings, args.settings)
    bad = [t for t in args.trained if "=" not in t]
    if bad:
        ap.error(f"--trained takes RUN=PATH, got {bad}")
    trained = dict(t.split("=", 1) for t in args.trained)
    problems = {p["id"]: p for p in read_problems(args.problems)}
    problems = shard_problems(problems, settings.shard, settings.shards)
    candidates = load_candidates(args.samples, args.scores, args.grades)
    candidates = candidates[candidates["problem_id"].isin(problems.keys())].reset_index(drop=True)
    with TableWriter(args.out, AGG_OUTPUTS) as writer:
        run_variants(
            args.model,
            trained,
            problems,
            candidates,
            CandidateTexts(args.samples, settings.reading.think_end),
            settings,
            writer,
            processes=args.processes,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    print(f"wrote {writer.rows} aggregator outputs to {Path(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
