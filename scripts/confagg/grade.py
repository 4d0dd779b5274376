"""Grade one samples shard: every sample's answer against its problem's gold answer.

    python -m confagg.grade --problems results/<run>/data/<dataset>.jsonl --processes N \\
        --settings JSON SAMPLES_SHARD OUT

Writes a ``tables.GRADES`` table (problem_id, sample_idx, correct, status, answer_group,
unfinished_thinking) in the samples' row order. Verdicts come from ``confagg.verifier``
(math-verify, bounded time per check); a timed-out or unparseable answer is a row with
``correct=False`` and its status, never a crash.
``answer_group`` groups each problem's answers with one another, never with the gold answer
(``confagg.grouping``). With ``require_think_end`` (thinking mode), a sample whose text never
closes its thinking (no ``</think>``) has no answer: status ``no_answer``, group -1.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from confagg.answers import THINK_END
from confagg.grouping import group_answers
from confagg.problems import read_problems
from confagg.settings import load
from confagg.tables import GRADES, SAMPLES, iter_batches, read_table, write_table
from confagg.verifier import DEFAULT_TIMEOUT, answer_equality, verify_many


@dataclass(frozen=True)
class Settings:
    """What the rule grade_shard passes (``confagg.settings.for_rule``: the config's
    ``grading`` section, the worker count aside: that is the job's threads)."""

    timeout: float  # CPU seconds per math-verify check
    require_think_end: bool  # a text that never closes its thinking has no answer


def thinking_closed(path) -> np.ndarray:
    """Whether each sample's text holds ``</think>``, read batch by batch (texts are large)."""
    batches = iter_batches(path, SAMPLES, ["text"])
    flags = [pc.match_substring(b.column(0), THINK_END).to_numpy() for b in batches]
    return np.concatenate(flags) if flags else np.zeros(0, bool)


def grade(
    samples: pa.Table,
    gold: dict[str, str],
    processes: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    closed: np.ndarray | None = None,
) -> pa.Table:
    """A GRADES table for ``samples`` (needs problem_id, sample_idx, answer columns); where
    ``closed`` is given, a sample with ``closed`` False has no answer."""
    ids = samples.column("problem_id").to_pylist()
    unknown = sorted(set(ids) - gold.keys())
    if unknown:
        raise KeyError(f"samples of problems missing from the problem set: {unknown[:5]}")
    answers = samples.column("answer").to_pylist()
    if closed is not None:
        answers = [a if ok else None for a, ok in zip(answers, closed.tolist(), strict=True)]
    verdicts = verify_many([gold[i] for i in ids], answers, processes, timeout)
    return pa.table(
        {
            "problem_id": ids,
            "sample_idx": samples.column("sample_idx"),
            "correct": [v.correct for v in verdicts],
            "status": [v.status for v in verdicts],
            "answer_group": group_answers(ids, answers, answer_equality(processes, timeout)),
            "unfinished_thinking": np.zeros(len(ids), bool) if closed is None else ~closed,
        },
        schema=GRADES,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", required=True, help="the data set's problems JSONL")
    ap.add_argument("--processes", type=int, default=1, help="math-verify worker processes")
    ap.add_argument("--settings", required=True, help="JSON: timeout, require_think_end")
    ap.add_argument("samples", help="a samples shard (parquet)")
    ap.add_argument("out", help="the grades table to write (parquet)")
    args = ap.parse_args(argv)
    settings = load(Settings, args.settings)
    gold = {p["id"]: p["answer"] for p in read_problems(args.problems)}
    samples = read_table(args.samples, SAMPLES, ["problem_id", "sample_idx", "answer"])
    try:
        closed = thinking_closed(args.samples) if settings.require_think_end else None
        grades = grade(samples, gold, args.processes, settings.timeout, closed)
    except KeyError as e:
        raise SystemExit(f"{args.samples}: {e.args[0]} (problems: {args.problems})") from None
    write_table(grades, args.out, GRADES)
    counts = Counter(grades.column("status").to_pylist())
    print(
        f"graded {grades.num_rows} samples of {len(set(grades.column('problem_id').to_pylist()))}"
        f" problems: {dict(sorted(counts.items()))}; {counts['timeout']} timeouts (out of CPU "
        f"time, counted incorrect) -> {args.out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
