"""Grade one samples shard: every sample's answer against its problem's gold answer.

    python -m confagg.grade --problems results/<run>/data/<dataset>.jsonl --processes N \\
        SAMPLES_SHARD OUT

Writes a ``tables.GRADES`` table (problem_id, sample_idx, correct, status) in the samples'
row order. Verdicts come from ``confagg.verify`` (math-verify, bounded time per check); a
timed-out or unparseable answer is a row with ``correct=False`` and its status, never a crash.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import pyarrow as pa

from confagg.problems import read_problems
from confagg.tables import GRADES, SAMPLES, read_table, write_table
from confagg.verify import DEFAULT_TIMEOUT, verify_many


def grade(
    samples: pa.Table, gold: dict[str, str], processes: int = 1, timeout: float = DEFAULT_TIMEOUT
) -> pa.Table:
    """A GRADES table for ``samples`` (needs problem_id, sample_idx, answer columns)."""
    ids = samples.column("problem_id").to_pylist()
    unknown = sorted(set(ids) - gold.keys())
    if unknown:
        raise KeyError(f"samples of problems missing from the problem set: {unknown[:5]}")
    verdicts = verify_many(
        [gold[i] for i in ids], samples.column("answer").to_pylist(), processes, timeout
    )
    return pa.table(
        {
            "problem_id": ids,
            "sample_idx": samples.column("sample_idx"),
            "correct": [v.correct for v in verdicts],
            "status": [v.status for v in verdicts],
        },
        schema=GRADES,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", required=True, help="the data set's problems JSONL")
    ap.add_argument("--processes", type=int, default=1, help="math-verify worker processes")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per check")
    ap.add_argument("samples", help="a samples shard (parquet)")
    ap.add_argument("out", help="the grades table to write (parquet)")
    args = ap.parse_args(argv)
    gold = {p["id"]: p["answer"] for p in read_problems(args.problems)}
    samples = read_table(args.samples, SAMPLES, ["problem_id", "sample_idx", "answer"])
    try:
        grades = grade(samples, gold, args.processes, args.timeout)
    except KeyError as e:
        raise SystemExit(f"{args.samples}: {e.args[0]} (problems: {args.problems})") from None
    write_table(grades, args.out, GRADES)
    counts = Counter(grades.column("status").to_pylist())
    print(
        f"graded {grades.num_rows} samples of {len(set(grades.column('problem_id').to_pylist()))}"
        f" problems: {dict(sorted(counts.items()))} -> {args.out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
