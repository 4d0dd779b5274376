"""Aggregator runs: every aggregator variant on the disjoint candidate sets of one benchmark x seed.

Sets are the ones every voting method at ``k = set_size`` uses (confagg.evaluate): per problem,
``confagg.methods.disjoint_sets`` of its samples in ``sample_idx`` order, set ``j`` = samples
``j*m .. j*m+m-1``. Each variant (config ``evaluation.aggregators``) reads every set with or
without the confidence scores in its prompt (confagg.aggregator_prompt, the builder training
uses), with the base model or with the trained LoRA adapter, and writes ``outputs_per_set``
completions per set, graded against the gold answer with the shared verifier.

One engine serves every variant, the trained adapter applied per request (vLLM LoRA); or, with
``evaluation.trained_model: merged``, the base variants run on one engine and the trained ones
on a second engine over the merged model (vLLM's LoRA is slow on CPU).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from confagg.answers import after_think, extract_boxed
from confagg.confidence import METRICS
from confagg.methods import disjoint_sets
from confagg.problems import read_problems
from confagg.settings import load
from confagg.tables import AGG_OUTPUTS, load_candidates, write_table


@dataclass(frozen=True)
class Variant:
    """One entry of ``evaluation.aggregators``."""

    name: str
    adapter: bool  # the trained aggregator (else the base model)
    confidence: bool  # confidences shown in the prompt


@dataclass(frozen=True)
class Sampling:
    """``evaluation.aggregator_sampling`` with ``n = evaluation.outputs_per_set``."""

    n: int
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int


@dataclass(frozen=True)
class Settings:
    """What the rule aggregate_sets passes (common.smk: aggregate_settings)."""

    set_size: int
    variants: tuple[Variant, ...]
    sampling: Sampling
    engine: dict  # keyword arguments of vllm.LLM (generator.engine)
    prompt: dict  # aggregator.prompt (confagg.aggregator_prompt)
    chat_template_kwargs: dict
    lora_rank: int  # training.lora.r: the engine's max LoRA rank must hold it
    trained_model: str  # "lora" | "merged"
    seed: int


def candidate_sets(df: pd.DataFrame, m: int) -> list[tuple[str, int, list[dict]]]:
    """(problem_id, set_idx, candidates) of every problem's disjoint sets of ``m`` samples
    (``df``: tables.load_candidates with text)."""
    out = []
    for pid, group in df.groupby("problem_id", sort=False):
        rows = group.sort_values("sample_idx").to_dict("records")
        for j, positions in enumerate(disjoint_sets(len(rows), m)):
            cands = [
                {
                    "text": after_think(rows[i]["text"]),
                    "answer": rows[i]["answer"],
                    **{k: rows[i][k] for k in METRICS},
                }
                for i in positions
            ]
            out.append((pid, j, cands))
    return out


def _engine_plan(model: str, trained: str | None, variants: Sequence[Variant], mode: str):
    """(engine model, its variants, with LoRA) per engine, started one after the other."""
    uses_training = [v for v in variants if v.adapter]
    if uses_training and trained is None:
        raise ValueError("a variant asks for the trained aggregator but none was given")
    if uses_training and mode == "merged":  # base model, then the merged model
        base = [v for v in variants if not v.adapter]
        return [(model, base, False), (trained, uses_training, False)]
    return [(model, list(variants), bool(uses_training))]  # the adapter applied per request


def _variant_rows(llm, variant, sets, problems, settings, params, lora, rows) -> None:
    """Generate one variant's completions for every set and append them to ``rows``."""
    from confagg.aggregator_prompt import render_prompt

    prompt_cfg = dict(settings.prompt)
    prompt_cfg["confidence"] = dict(prompt_cfg.get("confidence") or {}, enabled=variant.confidence)
    tokenizer = llm.get_tokenizer()
    rendered = [
        render_prompt(
            tokenizer,
            problems[pid]["problem"],
            cands,
            prompt_cfg,
            settings.chat_template_kwargs,
        )
        for pid, _, cands in sets
    ]
    outputs = llm.generate(
        [r.text for r in rendered],
        params,
        use_tqdm=False,
        lora_request=lora if variant.adapter else None,
    )
    for (pid, j, _), prompt, req in zip(sets, rendered, outputs, strict=True):
        for comp in req.outputs:
            rows["method"].append(variant.name)
            rows["problem_id"].append(pid)
            rows["set_idx"].append(j)
            rows["k"].append(settings.set_size)
            rows["output_idx"].append(comp.index)
            rows["text"].append(comp.text)
            rows["answer"].append(extract_boxed(comp.text))
            rows["num_tokens"].append(len(comp.token_ids))
            rows["prompt_tokens"].append(prompt.num_tokens)
            rows["prompt_truncated"].append(prompt.truncated)


def run_variants(
    model: str,
    trained: str | None,
    problems: Mapping[str, dict],
    sets: list,
    settings: Settings,
    processes: int = 1,
    log=print,
) -> pa.Table:
    """Generate every variant's outputs for every set; AGG_OUTPUTS rows graded with
    ``processes`` verifier workers.

    ``trained`` is the LoRA adapter when ``settings.trained_model`` is "lora" (applied per
    request on the base model's engine), the merged model folder (confagg.merge) when it is
    "merged" (served by a second engine)."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from confagg.engine import make_engine, release_engine
    from confagg.verify import verify_many

    s = settings.sampling
    params = SamplingParams(
        n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens
    )
    rows: dict[str, list] = {n: [] for n in AGG_OUTPUTS.names}
    plan = _engine_plan(model, trained, settings.variants, settings.trained_model)
    for engine_model, group, with_lora in plan:
        if not group:
            continue
        engine_kwargs = dict(settings.engine)
        if with_lora:
            # vLLM accepts only some max ranks: the smallest one that holds the adapter's
            ranks = [r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= settings.lora_rank]
            engine_kwargs.update(enable_lora=True, max_lora_rank=ranks[0] if ranks else 512)
        llm = make_engine(engine_model, settings.seed, engine_kwargs)
        lora = LoRARequest("trained", 1, str(trained)) if with_lora else None
        for variant in group:
            _variant_rows(llm, variant, sets, problems, settings, params, lora, rows)
            log(f"{variant.name}: {len(sets)} sets x {s.n} outputs ({engine_model})")
        release_engine(llm)
        del llm
    golds = [problems[pid]["answer"] for pid in rows["problem_id"]]
    verdicts = verify_many(golds, rows["answer"], processes=processes)
    rows["correct"] = [v.correct for v in verdicts]
    rows["status"] = [v.status for v in verdicts]
    return pa.table(rows, schema=AGG_OUTPUTS)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", required=True)
    ap.add_argument("--samples", nargs="+", required=True)
    ap.add_argument("--scores", nargs="+", required=True)
    ap.add_argument("--grades", nargs="+", required=True)
    ap.add_argument("--model", required=True, help="aggregator base model folder")
    ap.add_argument(
        "--trained",
        default=None,
        help="the trained LoRA adapter, or the merged model (settings trained_model: merged)",
    )
    ap.add_argument("--settings", required=True, help="JSON, see the rule aggregate_sets")
    ap.add_argument("--processes", type=int, default=1, help="verifier processes for grading")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    settings = load(Settings, args.settings)
    problems = {p["id"]: p for p in read_problems(args.problems)}
    df = load_candidates(args.samples, args.scores, args.grades, text=True)
    table = run_variants(
        args.model,
        args.trained,
        problems,
        candidate_sets(df, settings.set_size),
        settings,
        processes=args.processes,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    write_table(table, args.out, AGG_OUTPUTS)
    print(f"wrote {table.num_rows} aggregator outputs to {Path(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
