"""Answer grouping without the gold answer (confagg.grouping), and the grader's answer rules
(confagg.grade): groups, unfinished thinking, answers that normalise to nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from confagg import grade, methods
from confagg.answers import Reading, final_answer
from confagg.confidence import METRICS
from confagg.grouping import group_answers, normalise_answer
from confagg.problems import write_problems
from confagg.scoring import evaluate_benchmark
from confagg.tables import GRADES, SAMPLES, read_table, write_table
from confagg.verifier import answer_equality, verify_many

HALF_AND_THREE_QUARTERS = ["\\frac{1}{2}", "\\frac{3}{4}", "0.75", "0.5"]


def test_groups_are_the_same_whichever_answer_is_gold():
    """Two right answers written differently and two wrong ones written differently: the
    verifier groups both pairs, and the groups (so every vote) do not depend on the gold
    answer. The grader-as-oracle keys put right answers together but not the wrong ones."""
    groups = group_answers(["p"] * 4, HALF_AND_THREE_QUARTERS, answer_equality())
    assert groups.tolist() == [0, 1, 1, 0]
    table = {
        "problem_id": "p",
        "sample_idx": range(4),
        "answer_group": groups,
        "num_tokens": 1,
        **{m: 1.0 for m in METRICS},
    }
    accuracy = {}
    for gold in ("1/2", "3/4"):
        correct = [v.correct for v in verify_many([gold] * 4, HALF_AND_THREE_QUARTERS)]
        r = evaluate_benchmark(pd.DataFrame({**table, "correct": correct}), ks=[4], seed=0)
        accuracy[gold] = r["methods"]["majority"]["by_k"]["4"]["accuracy"]
    # a 2-2 tie: the first answer seen (1/2) wins, right for one gold answer only
    assert accuracy == {"1/2": 1.0, "3/4": 0.0}
    # the old keys ("gold" for every right answer, the string for wrong ones) won both times
    for gold in ("1/2", "3/4"):
        correct = [v.correct for v in verify_many([gold] * 4, HALF_AND_THREE_QUARTERS)]
        oracle = [
            "gold" if ok else normalise_answer(a)
            for a, ok in zip(HALF_AND_THREE_QUARTERS, correct, strict=True)
        ]
        assert methods.picked_correct(methods.majority_vote(oracle), [correct])[0]


def test_groups_per_problem_and_numbering():
    pids = ["a", "b", "a", "a", "b", "a"]
    answers = ["025", "7", "25", "x", "7.0", None]
    groups = group_answers(pids, answers, answer_equality())
    # a: 025 = 25 (group 0), x (group 1), no answer; b: 7 = 7.0
    assert groups.tolist() == [0, 0, 0, 1, 0, -1]
    assert groups.dtype == np.int32


@pytest.mark.parametrize("empty", [".", "\\text{ }", "$ $", " "])
def test_an_answer_that_normalises_to_nothing_abstains(empty):
    assert normalise_answer(empty) is None
    assert group_answers(["p"] * 3, ["5", empty, "5"], answer_equality()).tolist() == [0, -1, 0]


def test_final_answer_of_unfinished_thinking():
    thinking = "<think>maybe \\boxed{3}? let me check"
    assert final_answer(thinking, Reading("boxed", "</think>", False)) == "3"
    assert final_answer(thinking, Reading("boxed", "</think>", True)) is None
    assert (
        final_answer(thinking + "</think> so \\boxed{4}", Reading("boxed", "</think>", True)) == "4"
    )


def _shard(tmp_path):
    texts = [
        "<think>2+3</think> The answer is \\boxed{5}.",
        "<think>2+3 is \\boxed{5} or maybe",  # cut while thinking: no </think>
        "<think>hm</think> \\boxed{.}",
        "<think>ok</think> \\boxed{6}",
    ]
    answers = ["5", "5", ".", "6"]  # what extract_boxed gives (the whole text without </think>)
    table = pa.table(
        {
            "problem_id": ["p"] * 4,
            "sample_idx": list(range(4)),
            "text": texts,
            "answer": answers,
            "num_tokens": [6, 8, 4, 4],
            "finish_reason": ["stop", "length", "stop", "stop"],
            "token_confidence": pa.array(
                [np.linspace(1, 2, n).astype(np.float16) for n in (6, 8, 4, 4)],
                pa.list_(pa.float16()),
            ),
        },
        schema=SAMPLES,
    )
    write_table(table, tmp_path / "samples.parquet", SAMPLES)
    write_problems([{"id": "p", "problem": "2 + 3?", "answer": "5"}], tmp_path / "p.jsonl")
    return tmp_path / "samples.parquet", tmp_path / "p.jsonl"


def _reading(require_think_end: bool) -> dict:
    """The grade stage's ``reading`` settings: boxed answers after ``</think>``."""
    return {"extraction": "boxed", "think_end": "</think>", "require_think_end": require_think_end}


def test_grade_unfinished_thinking_has_no_answer_and_dot_does_not_crash(tmp_path):
    samples, problems = _shard(tmp_path)
    for think, name in ((False, "plain"), (True, "think")):
        out = tmp_path / f"{name}.parquet"
        settings = json.dumps({"timeout": 5.0, "reading": _reading(think)})
        grade.main(["--problems", str(problems), "--settings", settings, str(samples), str(out)])
        rows = read_table(out, GRADES).to_pylist()
        assert [r["status"] for r in rows][2:] == ["unparseable", "incorrect"]
        assert rows[2]["answer_group"] == -1  # "." abstains
        if name == "plain":  # the box written while thinking counts
            assert [r["correct"] for r in rows[:2]] == [True, True]
            assert [r["answer_group"] for r in rows] == [0, 0, -1, 1]
            assert not any(r["unfinished_thinking"] for r in rows)
        else:
            assert rows[1]["status"] == "no_answer" and not rows[1]["correct"]
            assert [r["answer_group"] for r in rows] == [0, -1, -1, 1]
            assert [r["unfinished_thinking"] for r in rows] == [False, True, False, False]


def test_evaluate_stage_counts_unfinished_thinking(tmp_path):
    from confagg import evaluate, score

    samples, problems = _shard(tmp_path)
    scoring = json.dumps({"window": 2, "tail_tokens": 2})
    score.main(["--settings", scoring, str(samples), str(tmp_path / "s.parquet")])
    grades = tmp_path / "g.parquet"
    grading = json.dumps({"timeout": 5.0, "reading": _reading(True)})
    grade.main(["--problems", str(problems), "--settings", grading, str(samples), str(grades)])
    settings = {"ks": [1, 2, 4], "window": 2,
                "online": {"warmup": 2, "etas": [10, 90], "consensus": 0.95}}  # fmt: skip
    out = tmp_path / "eval"
    evaluate.main(["--samples", str(samples), "--scores", str(tmp_path / "s.parquet"),
                   "--grades", str(grades), "--settings", json.dumps(settings), "--seed", "0",
                   "--metrics", str(out / "metrics.json"),
                   "--candidates", str(out / "candidates.parquet")])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sample_counts"] == {"no_answer": 2, "unfinished_thinking": 1, "truncated": 1}
    assert metrics["answered"] == 0.5
    assert set(metrics["methods"]["online10"]["by_k"]) == {"4"}  # k above the warm-up of 2
