"""Score stage: the four DeepConf trace metrics for every sample of a shard.

Reads only the ids and the confidence arrays, batch by batch (``tables.iter_batches``), and
writes the scores as it goes: memory is about one batch, whatever the shard's size."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import pyarrow as pa

from confagg.confidence import METRICS, trace_metrics
from confagg.settings import load
from confagg.tables import SAMPLES, SCORES, TableWriter, flat_confidence, iter_batches


@dataclass(frozen=True)
class Settings:
    """What the rule score_shard passes (``confagg.settings.for_rule``): the config's
    ``confidence`` section."""

    window: int  # group window in tokens
    tail_tokens: int  # the tail metric's last tokens


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
    ap.add_argument("--settings", required=True, help="JSON: window, tail_tokens")
    ap.add_argument("samples")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    settings = load(Settings, args.settings)
    rows = score_file(args.samples, args.out, settings.window, settings.tail_tokens)
    print(f"scored {rows} samples -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
