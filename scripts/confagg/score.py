"""Score stage: the four DeepConf trace metrics for every sample of a shard.

Reads only the ids and the confidence arrays, batch by batch (``tables.iter_batches``), and
writes the scores as it goes: memory is about one batch, whatever the shard's size."""

from __future__ import annotations

import argparse
import sys

import pyarrow as pa

from confagg.confidence import METRICS, trace_metrics
from confagg.tables import SAMPLES, SCORES, TableWriter, flat_confidence, iter_batches


def score_table(samples: pa.Table, window: int, tail_tokens: int) -> pa.Table:
    """A SCORES table (ids + metrics) for a SAMPLES table."""
    conf, offsets = flat_confidence(samples)
    metrics = trace_metrics(conf, offsets, window=window, tail_tokens=tail_tokens)
    cols = {"problem_id": samples.column("problem_id"), "sample_idx": samples.column("sample_idx")}
    cols.update({m: pa.array(metrics[m]) for m in METRICS})
    return pa.table(cols, schema=SCORES)


def score_file(samples: str, out: str, window: int, tail_tokens: int) -> int:
    """Write the SCORES table of a samples file, in its row order; the number of rows."""
    columns = ["problem_id", "sample_idx", "token_confidence"]
    with TableWriter(out, SCORES) as writer:
        for batch in iter_batches(samples, SAMPLES, columns):
            writer.write(score_table(batch, window, tail_tokens))
    return writer.rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Score the samples of one shard.")
    ap.add_argument("--window", type=int, required=True, help="group window in tokens")
    ap.add_argument("--tail-tokens", type=int, required=True)
    ap.add_argument("samples")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    rows = score_file(args.samples, args.out, args.window, args.tail_tokens)
    print(f"scored {rows} samples -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
