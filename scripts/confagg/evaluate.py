"""Evaluation stage (rule ``evaluate_seed``): every method's accuracy and tokens at every k for
one benchmark x seed.

    python -m confagg.evaluate --samples S... --scores S... --grades G... \\
        [--aggregator aggregators.parquet] --settings JSON --seed N \\
        --metrics metrics.json --candidates candidates.parquet

reads the candidates (samples, scores, grades, no texts) and the aggregator outputs, scores them
(:func:`confagg.scoring.evaluate_benchmark`: the methods, the sets and the conventions) and
writes ``metrics.json`` and ``candidates.parquet`` (``tables.EVAL_CANDIDATES``: one row per
sample, for the report's histograms). DeepConf-online needs every trace's token confidences,
read shard by shard (:func:`streamed_spend`).
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

from confagg import methods as mt
from confagg.candidates import load_candidates
from confagg.files import OutputSet, write_json
from confagg.scoring import Online, Spend, evaluate_benchmark
from confagg.settings import load
from confagg.tables import (
    AGG_OUTPUTS,
    EVAL_CANDIDATES,
    SAMPLES,
    flat_confidence,
    iter_batches,
    read_table,
    write_table,
)


@dataclass(frozen=True)
class Settings:
    """What the rule evaluate_seed passes (``confagg.settings.for_rule``): ``evaluation.ks``,
    ``confidence.window`` and ``evaluation.deepconf_online``."""

    ks: tuple[int, ...]
    window: int
    online: Online


def streamed_spend(samples: Sequence[str], df: pd.DataFrame, window: int) -> Spend:
    """A :data:`Spend` reading the token confidences of the samples shards batch by batch
    (``df``: the sorted sample table whose rows the requests number)."""

    def spend(requests: Mapping[int, Sequence[float]]) -> dict[int, np.ndarray]:
        keys = zip(df["problem_id"].tolist(), df["sample_idx"].tolist(), strict=True)
        row_of = {key: r for r, key in enumerate(keys) if r in requests}
        out = {}
        columns = ["problem_id", "sample_idx", "token_confidence"]
        for path in samples:
            for batch in iter_batches(path, SAMPLES, columns):
                conf, offsets = flat_confidence(batch)
                pids, idxs = batch["problem_id"].to_pylist(), batch["sample_idx"].to_pylist()
                keys = zip(pids, idxs, strict=True)
                for i, key in enumerate(keys):
                    r = row_of.get(key)
                    if r is not None:
                        trace = conf[offsets[i] : offsets[i + 1]]
                        out[r] = mt.online_spent(trace, window, requests[r])
        return out

    return spend


def evaluate_seed(
    samples: Sequence[str],
    scores: Sequence[str],
    grades: Sequence[str],
    aggregator: str | None,
    settings: Settings,
    seed: int,
    metrics_out: Path,
    candidates_out: Path,
) -> dict:
    """The metrics (JSON) and the candidates' table of one benchmark x seed (returns the
    metrics)."""
    df = load_candidates(samples, scores, grades)
    # every column but the completions' texts, which no metric reads
    columns = [c for c in AGG_OUTPUTS.names if c != "text"]
    agg = read_table(aggregator, AGG_OUTPUTS, columns).to_pandas() if aggregator else None
    result = evaluate_benchmark(
        df,
        settings.ks,
        seed,
        aggregator=agg,
        online=settings.online,
        spend=streamed_spend(samples, df, settings.window),
    )
    result["sample_counts"] = {
        "no_answer": int((df["answer_group"] < 0).sum()),
        "unfinished_thinking": int(df["unfinished_thinking"].sum()),
        "truncated": int((df["finish_reason"] == "length").sum()),
    }
    if agg is not None:
        result["aggregator_calls"] = {
            name: {
                "calls": len(g),
                "mean_prompt_tokens": float(g["prompt_tokens"].mean()),
                "truncated_prompts": int(g["prompt_truncated"].sum()),
                "no_answer": int(g["answer"].isna().sum()),
            }
            for name, g in agg.groupby("method")
        }
    table = pa.Table.from_pandas(df[EVAL_CANDIDATES.names], preserve_index=False)
    # published together, the metrics last
    with OutputSet([candidates_out, metrics_out]) as outputs:
        write_table(table, candidates_out, EVAL_CANDIDATES, outputs)
        write_json(result, metrics_out, outputs)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", nargs="+", required=True)
    ap.add_argument("--scores", nargs="+", required=True)
    ap.add_argument("--grades", nargs="+", required=True)
    ap.add_argument("--aggregator", default=None, help="the aggregator outputs (parquet)")
    ap.add_argument("--settings", required=True, help="JSON, see the rule evaluate_seed")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--metrics", type=Path, required=True, help="metrics.json to write")
    ap.add_argument("--candidates", type=Path, required=True, help="candidates table to write")
    args = ap.parse_args(argv)
    settings = load(Settings, args.settings)
    result = evaluate_seed(
        args.samples,
        args.scores,
        args.grades,
        args.aggregator,
        settings,
        args.seed,
        args.metrics,
        args.candidates,
    )
    print(
        f"{result['n_problems']} problems, {result['n_samples']} samples, "
        f"{len(result['methods'])} methods -> {args.metrics}, {args.candidates}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
