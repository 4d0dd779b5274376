"""Evaluation: run the aggregator variants on disjoint candidate sets of one benchmark x seed.

Sets are the ones every voting method at ``k = set_size`` uses (confagg.evaluate_methods):
per problem, consecutive samples in ``sample_idx`` order, set ``j`` = samples ``j*m .. j*m+m-1``.
Each variant (config ``evaluation.aggregators``) reads every set with or without the confidence
scores in its prompt (confagg.aggregator_prompt, the builder training uses), with the base model
or with the trained LoRA adapter, and writes ``outputs_per_set`` completions per set, graded
against the gold answer with the shared verifier.

One engine serves every variant, the trained adapter applied per request (vLLM LoRA); or, with
``evaluation.trained_model: merged``, the base variants run on one engine and the trained ones
on a second engine over the merged model (vLLM's LoRA is slow on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa

from confagg.answers import after_think, extract_boxed
from confagg.confidence import METRICS
from confagg.problems import read_problems
from confagg.tables import GRADES, SAMPLES, SCORES, read_table, write_table

# One row per aggregator completion.
AGG_OUTPUTS = pa.schema(
    [
        pa.field("method", pa.string(), nullable=False),  # the variant's name
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("set_idx", pa.int32(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("output_idx", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),  # generated tokens
        pa.field("prompt_tokens", pa.int32(), nullable=False),
        pa.field("prompt_truncated", pa.bool_(), nullable=False),
    ],
    metadata={"table": "aggregator_outputs"},
)


def load_candidates(
    samples: Sequence[str], scores: Sequence[str], grades: Sequence[str]
) -> pd.DataFrame:
    """One row per sample of a benchmark x seed: text, answer, tokens, metrics, verdict."""

    def cat(paths, schema, columns=None):
        tables = [read_table(p, schema) for p in paths]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        return table.select(columns or schema.names).to_pandas()

    df = cat(
        samples,
        SAMPLES,
        ["problem_id", "sample_idx", "text", "answer", "num_tokens", "finish_reason"],
    )
    df = df.merge(
        cat(scores, SCORES), on=["problem_id", "sample_idx"], how="left", validate="one_to_one"
    )
    df = df.merge(
        cat(grades, GRADES), on=["problem_id", "sample_idx"], how="left", validate="one_to_one"
    )
    if df["correct"].isna().any():
        raise ValueError("some samples have no grade: grades and samples do not match")
    return df.sort_values(["problem_id", "sample_idx"], kind="stable").reset_index(drop=True)


def disjoint_sets(df: pd.DataFrame, m: int) -> list[tuple[str, int, list[dict]]]:
    """(problem_id, set_idx, candidates) for consecutive disjoint sets of ``m`` samples."""
    out = []
    for pid, group in df.groupby("problem_id", sort=False):
        rows = group.sort_values("sample_idx").to_dict("records")
        for j in range(len(rows) // m):
            cands = [
                {
                    "text": after_think(r["text"]),
                    "answer": r["answer"],
                    **{k: r[k] for k in METRICS},
                }
                for r in rows[j * m : (j + 1) * m]
            ]
            out.append((pid, j, cands))
    return out


def _engine_plan(model: str, trained: str | None, variants: Sequence[Mapping], mode: str):
    """(engine model, its variants, with LoRA) per engine, started one after the other."""
    uses_training = [v for v in variants if v["adapter"]]
    if uses_training and trained is None:
        raise ValueError("a variant asks for the trained aggregator but none was given")
    if uses_training and mode == "merged":  # base model, then the merged model
        base = [v for v in variants if not v["adapter"]]
        return [(model, base, False), (trained, uses_training, False)]
    return [(model, list(variants), bool(uses_training))]  # the adapter applied per request


def _variant_rows(llm, variant, sets, problems, settings, params, lora, rows) -> None:
    """Generate one variant's completions for every set and append them to ``rows``."""
    from confagg.aggregator_prompt import render_prompt

    prompt_cfg = dict(settings["prompt"])
    prompt_cfg["confidence"] = dict(
        prompt_cfg.get("confidence") or {}, enabled=bool(variant["confidence"])
    )
    tokenizer = llm.get_tokenizer()
    rendered = [
        render_prompt(
            tokenizer,
            problems[pid]["problem"],
            cands,
            prompt_cfg,
            settings.get("chat_template_kwargs"),
        )
        for pid, _, cands in sets
    ]
    outputs = llm.generate(
        [r.text for r in rendered],
        params,
        use_tqdm=False,
        lora_request=lora if variant["adapter"] else None,
    )
    for (pid, j, _), prompt, req in zip(sets, rendered, outputs, strict=True):
        for comp in req.outputs:
            rows["method"].append(variant["name"])
            rows["problem_id"].append(pid)
            rows["set_idx"].append(j)
            rows["k"].append(settings["set_size"])
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
    variants: Sequence[Mapping],
    settings: Mapping,
    log=print,
) -> pa.Table:
    """Generate every variant's outputs for every set; graded AGG_OUTPUTS rows.

    ``trained`` is the LoRA adapter when ``settings["trained_model"]`` is "lora" (applied per
    request on the base model's engine), the merged model folder (confagg.merge) when it is
    "merged" (served by a second engine)."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from confagg.engine import make_engine, release_engine
    from confagg.verify import verify_many

    s = settings["sampling"]
    params = SamplingParams(
        n=s["n"],
        temperature=s["temperature"],
        top_p=s["top_p"],
        top_k=s["top_k"],
        max_tokens=s["max_tokens"],
    )
    rows: dict[str, list] = {n: [] for n in AGG_OUTPUTS.names}
    mode = settings.get("trained_model", "lora")
    for engine_model, group, with_lora in _engine_plan(model, trained, variants, mode):
        if not group:
            continue
        engine_kwargs = dict(settings["engine"])
        if with_lora:
            # vLLM accepts only some max ranks: the smallest one that holds the adapter's
            ranks = [
                r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= settings["lora_rank"]
            ]
            engine_kwargs.update(enable_lora=True, max_lora_rank=ranks[0] if ranks else 512)
        llm = make_engine(engine_model, settings["seed"], engine_kwargs)
        lora = LoRARequest("trained", 1, str(trained)) if with_lora else None
        for variant in group:
            _variant_rows(llm, variant, sets, problems, settings, params, lora, rows)
            log(f"{variant['name']}: {len(sets)} sets x {s['n']} outputs ({engine_model})")
        release_engine(llm)
        del llm
    golds = [problems[pid]["answer"] for pid in rows["problem_id"]]
    verdicts = verify_many(golds, rows["answer"], processes=settings.get("processes", 1))
    rows["correct"] = [v.correct for v in verdicts]
    rows["status"] = [v.status for v in verdicts]
    return pa.table(rows, schema=AGG_OUTPUTS)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Aggregator variants on one benchmark x seed.")
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
    ap.add_argument("--settings", required=True, help="JSON, see the rule evaluate_aggregators")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    settings = json.loads(args.settings)
    problems = {p["id"]: p for p in read_problems(args.problems)}
    df = load_candidates(args.samples, args.scores, args.grades)
    sets = disjoint_sets(df, settings["set_size"])
    table = run_variants(
        args.model,
        args.trained,
        problems,
        sets,
        settings["variants"],
        settings,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    write_table(table, args.out, AGG_OUTPUTS)
    print(f"wrote {table.num_rows} aggregator outputs to {Path(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
