"""Score stage: the four DeepConf trace metrics for every sample of a shard."""

from __future__ import annotations

import argparse
import sys

import pyarrow as pa

from confagg.confidence import METRICS, trace_metrics
from confagg.tables import SAMPLES, SCORES, flat_confidence, read_table, write_table


def score_table(samples: pa.Table, window: int, tail_tokens: int) -> pa.Table:
    """A SCORES table (ids + metrics) for a SAMPLES table."""
    conf, offsets = flat_confidence(samples)
    metrics = trace_metrics(conf, offsets, window=window, tail_tokens=tail_tokens)
    cols = {"problem_id": samples.column("problem_id"), "sample_idx": samples.column("sample_idx")}
    cols.update({m: pa.array(metrics[m]) for m in METRICS})
    return pa.table(cols, schema=SCORES)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Score the samples of one shard.")
    ap.add_argument("--window", type=int, required=True, help="group window in tokens")
    ap.add_argument("--tail-tokens", type=int, required=True)
    ap.add_argument("samples")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    samples = read_table(args.samples, SAMPLES, ["problem_id", "sample_idx", "token_confidence"])
    scores = score_table(samples, args.window, args.tail_tokens)
    write_table(scores, args.out, SCORES)
    print(f"scored {scores.num_rows} samples -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
