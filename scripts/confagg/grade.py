"""Grade one samples shard: every sample's answer against its problem's gold answer.

    python -m confagg.grade --problems results/<run>/data/<dataset>.jsonl --processes N \\
        --settings JSON SAMPLES_SHARD OUT

Writes a ``tables.GRADES`` table (problem_id, sample_idx, correct, status, answer,
answer_group, unfinished_thinking) in the samples' row order. Every sample's answer is read
again from its text, a batch of texts at a time, by the configured reading
(``grading.extraction``: the last ``\\boxed{}``, or math-verify's own extraction as lighteval
reads answers; after ``grading.think_end``): ``confagg.verifier.read_and_verify``, which also
gives the verdict (math-verify, bounded time per check); a timed-out or unparseable answer is a
row with ``correct=False`` and its status, never a crash. ``answer_group`` groups each
problem's answers with one another, never with the gold answer (``confagg.grouping``). With
``require_think_end`` (thinking mode), a sample whose text never closes its thinking has no
answer: status ``no_answer``, group -1.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from confagg.answers import Reading
from confagg.grouping import group_answers
from confagg.problems import read_problems
from confagg.settings import load
from confagg.tables import GRADES, SAMPLES, iter_batches, read_table, write_table
from confagg.verifier import DEFAULT_TIMEOUT, answer_equality, read_and_verify


@dataclass(frozen=True)
class Settings:
    """What the rule grade_shard passes (``confagg.settings.for_rule``: the config's
    ``grading`` section, the worker count aside: that is the job's threads)."""

    timeout: float  # CPU seconds per math-verify check
    reading: Reading  # grading.extraction, grading.think_end, require_think_end (generator)


def grade(
    path,
    gold: dict[str, str],
    reading: Reading,
    processes: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
) -> pa.Table:
    """A GRADES table for the samples shard at ``path``: each text's answer and verdict by
    ``reading`` (texts read a batch at a time), then the answers grouped per problem."""
    keys = read_table(path, SAMPLES, ["problem_id", "sample_idx"])
    ids = keys.column("problem_id").to_pylist()
    unknown = sorted(set(ids) - gold.keys())
    if unknown:
        raise KeyError(f"samples of problems missing from the problem set: {unknown[:5]}")
    answers: list[str | None] = []
    statuses: list[str] = []
    closed: list[bool] = []
    for batch in iter_batches(path, SAMPLES, ["text"]):
        texts = batch.column(0).to_pylist()
        golds = [gold[i] for i in ids[len(answers) : len(answers) + len(texts)]]
        found, verdicts = read_and_verify(golds, texts, reading, processes, timeout)
        answers += found
        statuses += [v.status for v in verdicts]
        closed += [reading.closed(t) for t in texts]
    unfinished = ~np.array(closed, bool) if reading.require_think_end else np.zeros(len(ids), bool)
    return pa.table(
        {
            "problem_id": ids,
            "sample_idx": keys.column("sample_idx"),
            "correct": [s == "correct" for s in statuses],
            "status": statuses,
            "answer": answers,
            "answer_group": group_answers(ids, answers, answer_equality(processes, timeout)),
            "unfinished_thinking": unfinished,
        },
        schema=GRADES,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", required=True, help="the data set's problems JSONL")
    ap.add_argument("--processes", type=int, default=1, help="math-verify worker processes")
    ap.add_argument("--settings", required=True, help="JSON: timeout, reading")
    ap.add_argument("samples", help="a samples shard (parquet)")
    ap.add_argument("out", help="the grades table to write (parquet)")
    args = ap.parse_args(argv)
    settings = load(Settings, args.settings)
    gold = {p["id"]: p["answer"] for p in read_problems(args.problems)}
    try:
        grades = grade(args.samples, gold, settings.reading, args.processes, settings.timeout)
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
