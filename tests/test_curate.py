"""AggLM set curation on small tables made here: the majority rule, hard/easy selection, the
split by problem, seeding, the contamination guard, the drop options and the CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from confagg import curate as c
from confagg.candidates import load_candidates
from confagg.confidence import METRICS
from confagg.config import validate
from confagg.grouping import group_answers
from confagg.problems import write_problems
from confagg.settings import for_rule
from confagg.tables import GRADES, SAMPLES, SCORES, SETS, read_table, write_table
from confagg.verifier import answer_equality
from conftest import REPO


def curate_settings(run_seed=0, max_prompt_tokens=None, **overrides) -> dict:
    """The rule curate_sets's settings for a config with these ``curation`` keys (schema
    defaults for the others), as ``confagg.settings.for_rule`` makes them."""
    config = {
        "run_name": "t",
        "seed": run_seed,
        "generator": {"model": "smollm2-135m-instruct"},
        "training_pool": {"source": {"demo": {"n": 1, "seed": 0}}},
        "benchmarks": {"b": {"source": {"demo": {"n": 1, "seed": 0}}}},
        "curation": overrides,
        "aggregator": {"prompt": {"max_prompt_tokens": max_prompt_tokens}},
    }
    validate(config, REPO / "workflow/schemas/config.schema.yaml")
    return for_rule(config, "curate_sets")


def curation(**overrides) -> dict:
    """The validated config's ``curation`` section (schema defaults + ``overrides``), its seed
    resolved as the rule's settings resolve it."""
    return curate_settings(**overrides)["curation"]


def make_pool(tmp_path, problems=20, samples=8, shards=2, seed=0):
    """Problems ``p00..`` with gold ``100 + i``; problem i has about ``i % (samples + 1)``
    correct samples, the others answer ``gold + 1`` or ``gold + 2`` or nothing (cut by the
    length limit). A problem's samples sit in one shard (problem i in shard i % shards), as the
    sample stage writes them. Returns (problems, samples, scores, grades paths)."""
    rng = random.Random(seed)
    pool = [
        {"id": f"p{i:02d}", "problem": f"Problem {i}: what is {100 + i}?", "answer": str(100 + i)}
        for i in range(problems)
    ]
    rows = []
    for i, p in enumerate(pool):
        gold = int(p["answer"])
        n_correct = i % (samples + 1)
        for j in range(samples):
            if j < n_correct:
                answer, status = rng.choice([str(gold), f"0{gold}"]), "correct"
            elif rng.random() < 0.15:
                answer, status = None, "no_answer"
            else:
                answer, status = str(gold + rng.choice([1, 1, 2])), "incorrect"
            rows.append((p["id"], j, answer, status))
    rng.shuffle(rows)  # shards need not be sorted
    paths = {"samples": [], "scores": [], "grades": []}
    for s in range(shards):
        part = [r for r in rows if int(r[0][1:]) % shards == s]
        n = len(part)
        ids, idx = [r[0] for r in part], [r[1] for r in part]
        texts = [
            f"<think>idea {r[1]}</think>So \\boxed{{{r[2]}}}." if r[2] else "<think>long..."
            for r in part
        ]
        samples_t = pa.table(
            {
                "problem_id": ids,
                "sample_idx": idx,
                "text": texts,
                "answer": [r[2] for r in part],
                "num_tokens": [10 + r[1] for r in part],
                "finish_reason": ["stop" if r[2] else "length" for r in part],
                "token_confidence": pa.array([np.ones(2, np.float16)] * n, pa.list_(pa.float16())),
            },
            schema=SAMPLES,
        )
        scores_t = pa.table(
            {
                "problem_id": ids,
                "sample_idx": idx,
                **{m: [rng.random() for _ in part] for m in METRICS},
            },
            schema=SCORES,
        )
        grades_t = pa.table(
            {
                "problem_id": ids,
                "sample_idx": idx,
                "correct": [r[3] == "correct" for r in part],
                "status": [r[3] for r in part],
                "answer": [r[2] for r in part],
                "answer_group": group_answers(ids, [r[2] for r in part], answer_equality()),
                "unfinished_thinking": [False] * n,
            },
            schema=GRADES,
        )
        for step, table, schema in (
            ("samples", samples_t, SAMPLES),
            ("scores", scores_t, SCORES),
            ("grades", grades_t, GRADES),
        ):
            path = tmp_path / step / f"shard{s}.parquet"
            write_table(table, path, schema)
            paths[step].append(str(path))
    write_problems(pool, tmp_path / "pool.jsonl")
    return pool, paths["samples"], paths["scores"], paths["grades"]


def run(tmp_path, pool_paths, settings=None, benchmarks=(), run_seed=0):
    """The curate CLI in-process; (train rows, val rows, summary)."""
    _, samples, scores, grades = pool_paths
    out = tmp_path / "curated"
    c.main(
        ["--problems", str(tmp_path / "pool.jsonl"), "--samples", *samples, "--scores", *scores,
         "--grades", *grades, "--benchmarks", *map(str, benchmarks),
         "--settings", json.dumps(curate_settings(run_seed, **(settings or {}))),
         "--train", str(out / "train.parquet"), "--val", str(out / "val.parquet"),
         "--summary", str(out / "summary.json")]
    )  # fmt: skip
    return (
        read_table(out / "train.parquet", SETS).to_pylist(),
        read_table(out / "val.parquet", SETS).to_pylist(),
        json.loads((out / "summary.json").read_text()),
    )


# ------------------------------------------------------------------- majority rule


@pytest.mark.parametrize(
    "groups, correct, kind, shown",
    [
        ([0, 0, 1], [True, True, False], "easy", 0),
        ([0, 0, 1], [False, False, True], "wrong", 0),
        ([0, 1], [True, False], "tie", 1),  # a tie is hard: the wrong one is shown
        ([0, 1, 2], [False, False, True], "tie", 0),  # 1-1-1: first seen of the tied wrong
        ([0, 1, 1, 0], [False, True, True, False], "tie", 0),
        ([-1, -1, 0], [False, False, True], "easy", 2),  # no answer abstains
        ([-1, -1], [False, False], "no_answer", None),  # nothing to vote for
        ([0, 1, 2, 3, 3], [False, False, False, True, True], "easy", 3),  # plurality
    ],
)
def test_majority_rule(groups, correct, kind, shown):
    answers = [f"a{i}" for i in range(len(groups))]
    assert c.majority(groups, answers, correct) == (kind, None if shown is None else f"a{shown}")


# --------------------------------------------------------------------- selection


def _sets(spec):
    """``{problem: [set, ...]}`` from ``{problem: (hard count, easy count)}``."""
    return {
        p: [{"set_id": f"{p}/{j}", "hard": j < h} for j in range(h + e)]
        for p, (h, e) in spec.items()
    }


@pytest.mark.parametrize("ratio, expected_easy", [(0, 0), (0.5, 5), (1, 9), (2, 18), (5, 20)])
def test_all_hard_sets_plus_easy_ratio(ratio, expected_easy):
    spec = {f"q{i}": (i % 3, 4) for i in range(5)}  # 0+1+2+0+1 = 4 hard, 20 easy
    spec.update({"hard_only": (5, 0)})  # 9 hard in all
    sets = _sets(spec)
    kept, counts = c.select_sets(sets, list(sets), ratio, seed=1)
    hard = [s for s in kept if s["hard"]]
    assert len(hard) == counts["hard"] == 9  # every hard set
    assert counts["easy"] == expected_easy == sum(not s["hard"] for s in kept)  # round(p * 9)
    assert counts["easy_available"] == 20


def test_easy_sets_spread_over_as_many_problems_as_possible():
    spec = {"h": (6, 0), **{f"e{i}": (0, 4) for i in range(5)}}
    sets = _sets(spec)
    kept, counts = c.select_sets(sets, list(sets), 0.5, seed=2)  # 3 easy of 5 problems
    easy_problems = [s["set_id"].split("/")[0] for s in kept if not s["hard"]]
    assert len(easy_problems) == len(set(easy_problems)) == counts["problems_with_easy"] == 3
    kept, counts = c.select_sets(sets, list(sets), 7 / 6, seed=2)  # 7 easy of 5 problems
    per_problem = np.unique([s["set_id"].split("/")[0] for s in kept if not s["hard"]],
                            return_counts=True)[1]  # fmt: skip
    assert counts["problems_with_easy"] == 5 and sorted(per_problem) == [1, 1, 1, 2, 2]


def test_split_is_by_problem_seeded_and_near_the_fraction():
    ids = [f"p{i:03d}" for i in range(100)]
    train, val = c.split_problems(ids, 0.2, seed=5)
    assert len(val) == 20 and not set(train) & set(val) and sorted(train + val) == ids
    assert c.split_problems(ids, 0.2, seed=5) == (train, val)
    assert c.split_problems(ids, 0.2, seed=6) != (train, val)
    assert c.split_problems(ids[:3], 0.2, seed=5)[1]  # at least one problem to validation
    assert c.split_problems(ids[:1], 0.2, seed=5) == (ids[:1], [])


# ------------------------------------------------------------------- contamination


def test_problem_key_ignores_formatting_only():
    assert c.problem_key("Find $x$ if  $\\dfrac{x}{2} = 3$.") == c.problem_key(
        "find x if \\frac{x}{2}=3."
    )
    assert c.problem_key("What is \\left( 1+2 \\right)?") == c.problem_key("What is (1+2)?")
    assert c.problem_key("What is 12 + 34?") != c.problem_key("What is 1 + 234?")
    assert c.problem_key("What is 3 + 5?") != c.problem_key("What is 5 + 3?")


# ---------------------------------------------------------------------- end to end


def test_curate_end_to_end(tmp_path):
    pool_paths = make_pool(tmp_path)
    settings = {"sets_per_problem": 2, "set_size": 4, "easy_ratio": 0.5, "val_fraction": 0.2}
    train, val, summary = run(tmp_path, pool_paths, settings)
    pool = {p["id"]: p for p in pool_paths[0]}

    train_ids = {s["problem_id"] for s in train}
    val_ids = {s["problem_id"] for s in val}
    assert train_ids and val_ids and not train_ids & val_ids  # split by problem
    assert summary["problems"]["with_sets"] == 20
    assert summary["problems"]["val"] == 4 and summary["problems"]["train"] == 16

    for split, rows in (("train", train), ("val", val)):
        counts = summary["sets"][split]
        hard = sum(s["hard"] for s in rows)
        assert hard == counts["hard"]
        assert (
            len(rows) - hard
            == counts["easy"]
            == min(int(0.5 * hard + 0.5), counts["easy_available"])
        )
    built = summary["sets"]["built"]
    assert built["hard"] + built["easy"] == 20 * 2
    assert built["hard"] == built["wrong"] + built["tie"] + built["no_answer"]
    assert (
        summary["sets"]["built"]["hard"]
        == summary["sets"]["train"]["hard"] + summary["sets"]["val"]["hard"]
    )  # every hard set is kept

    for s in train + val:
        p = pool[s["problem_id"]]
        assert s["set_id"].startswith(p["id"] + "/")
        assert s["problem"] == p["problem"] and s["gold"] == p["answer"]
        cands = s["candidates"]
        assert len(cands) == 4 and len({x["sample_idx"] for x in cands}) == 4  # no repeats
        for x in cands:
            if x["answer"] is not None:  # the part after </think>
                assert x["text"] == f"So \\boxed{{{x['answer']}}}."
            else:  # thinking cut by the length limit: no </think>, the text as it is
                assert x["text"] == "<think>long..."
            assert x["num_tokens"] == 10 + x["sample_idx"]
            assert all(0 <= x[m] <= 1 for m in METRICS)
        correct = [x["correct"] for x in cands]
        assert s["hard"] == (sum(correct) <= max(
            [sum(1 for x in cands if x["answer"] == a and not x["correct"]) for a in
             {x["answer"] for x in cands if x["answer"] and not x["correct"]}] or [0]
        ))  # fmt: skip

    # problem i has i % 9 correct samples of 8: all-wrong problems give only hard sets
    assert all(s["hard"] for s in train + val if s["problem_id"] in ("p00", "p09"))
    assert not any(s["hard"] for s in train + val if s["problem_id"] in ("p08", "p17"))
    acc = summary["accuracy"]
    assert acc["problems"] == 20 and acc["all_wrong"] == 3 and acc["all_correct"] == 2
    assert sum(acc["histogram"].values()) == 20
    assert summary["samples"]["total"] == 160
    assert summary["samples"]["dropped"]["total"] == 0
    assert summary["samples"]["no_answer"] == summary["samples"]["truncated"] > 0


def test_same_seed_same_sets_other_seed_other_sets(tmp_path):
    pool_paths = make_pool(tmp_path)
    settings = {"sets_per_problem": 4, "set_size": 3}
    first = run(tmp_path, pool_paths, settings, run_seed=1)
    again = run(tmp_path, pool_paths, settings, run_seed=1)
    assert first[:2] == again[:2]
    other = run(tmp_path, pool_paths, settings, run_seed=2)
    assert other[:2] != first[:2]
    explicit = run(tmp_path, pool_paths, {**settings, "seed": first[2]["settings"]["seed"]})
    assert explicit[:2] == first[:2]  # a null seed is derived from the run seed


def test_shard_order_does_not_change_the_sets(tmp_path):
    pool_paths = make_pool(tmp_path, shards=3)
    problems, samples, scores, grades = pool_paths
    settings = {"sets_per_problem": 3, "set_size": 4}
    a = run(tmp_path, pool_paths, settings)
    b = run(tmp_path, (problems, samples[::-1], scores[::-1], grades[::-1]), settings)
    assert a == b


def test_contaminated_problems_are_removed_and_listed(tmp_path):
    pool_paths = make_pool(tmp_path)
    bench = tmp_path / "aime99.jsonl"
    write_problems(
        [
            {"id": "b1", "problem": "problem 3:  what is $103$?", "answer": "103"},
            {"id": "b2", "problem": "Something else entirely.", "answer": "1"},
            {"id": "b3", "problem": "PROBLEM 7: What is 107?", "answer": "107"},
        ],
        bench,
    )
    train, val, summary = run(tmp_path, pool_paths, {"set_size": 4}, benchmarks=[bench])
    assert summary["problems"]["contaminated"] == 2
    assert summary["contaminated"] == [
        {"id": "p03", "matches": ["aime99:b1"], "how": "exact", "ngram": None},
        {"id": "p07", "matches": ["aime99:b3"], "how": "exact", "ngram": None},
    ]
    used = {s["problem_id"] for s in train + val}
    assert "p03" not in used and "p07" not in used
    assert summary["problems"]["with_sets"] == 18
    assert summary["samples"]["total"] == 18 * 8  # their samples are gone from every count


@pytest.mark.parametrize("no_answer, truncated", [(False, False), (True, False), (False, True)])
def test_drop_options_and_their_counts(tmp_path, no_answer, truncated):
    pool_paths = make_pool(tmp_path, samples=8)
    settings = {"set_size": 4, "drop_no_answer": no_answer, "drop_truncated": truncated}
    train, val, summary = run(tmp_path, pool_paths, settings)
    counts = summary["samples"]
    assert counts["no_answer"] > 0 and counts["truncated"] > 0  # reported either way
    dropped = counts["dropped"]
    assert dropped["no_answer"] == (counts["no_answer"] if no_answer else 0)
    assert dropped["truncated"] == (counts["truncated"] if truncated else 0)
    assert dropped["total"] == counts["total"] - counts["used"]
    answers = [x["answer"] for s in train + val for x in s["candidates"]]
    assert (None in answers) == (not no_answer and not truncated)
    # problems left with fewer than m = 4 samples get no sets, and are counted
    problems = summary["problems"]
    assert problems["with_sets"] + problems["too_few_samples"] == 20


def test_mismatched_shards_are_refused_with_the_file(tmp_path):
    _, samples, scores, grades = make_pool(tmp_path)
    with pytest.raises(
        ValueError, match=r"grades/shard1\.parquet: its rows do not match .*samples/shard0"
    ):
        load_candidates(samples, scores, grades[::-1])
    with pytest.raises(ValueError, match="one of each per shard"):
        load_candidates(samples, scores[:1], grades)
    with pytest.raises(ValueError, match="more than one shard"):
        load_candidates(samples * 2, scores * 2, grades * 2)


# ------------------------------------------------------------------- issue 11: AggLM's sets


def _pool_frame(tmp_path, **kw):
    _, samples, scores, grades = make_pool(tmp_path, **kw)
    return load_candidates(samples, scores, grades)


def test_disjoint_sets_partition_each_problems_samples(tmp_path):
    df = _pool_frame(tmp_path, problems=6, samples=8)
    settings = c.Settings(**{**curation(sets_per_problem=2, set_size=4), "seed": 5})
    sets = c.build_sets(df, sorted(set(df["problem_id"])), settings)
    for pid, group in sets.items():
        taken = [df["sample_idx"].iloc[i] for s in group for i in s["rows"]]
        assert len(group) == 2 and sorted(taken) == list(range(8)), pid  # s * m = all 8
        assert all(list(s["rows"]) == sorted(s["rows"]) for s in group)  # sample order
    # asking for more sets than the samples hold gives the partition, never a repeat
    more = c.build_sets(
        df, ["p03"], c.Settings(**{**curation(sets_per_problem=5, set_size=3), "seed": 5})
    )
    taken = [i for s in more["p03"] for i in s["rows"]]
    assert len(more["p03"]) == 2 and len(set(taken)) == len(taken) == 6
    # the old overlapping draw, as an explicit option: sets share samples
    overlap = c.Settings(
        **{**curation(sets_per_problem=6, set_size=4, set_sampling="overlapping"), "seed": 5}
    )
    drawn = c.build_sets(df, ["p03"], overlap)["p03"]
    taken = [i for s in drawn for i in s["rows"]]
    assert len(drawn) == 6 and len(set(taken)) < len(taken)


def test_majority_uses_the_answer_groups_not_the_verdicts(tmp_path):
    """Two wrong answers written differently but equal (grouped by the grader) outvote one
    right answer: the set is hard although each wrong spelling alone has one vote."""
    kind, shown = c.majority([0, 1, 1], ["7", "0.5", "\\frac{1}{2}"], [True, False, False])
    assert (kind, shown) == ("wrong", "0.5")


def test_reworded_benchmark_problem_sharing_an_8gram_is_dropped(tmp_path):
    bench = [{"id": "b1", "problem": "Let $x$ be the number of ways to tile a 2 by 10 board "
              "with dominoes. Find $x$ modulo 1000.", "answer": "89"}]  # fmt: skip
    pool = [
        # reworded: another start and end, the same 8-word run "number of ways to tile a 2 by"
        {
            "id": "q1",
            "problem": "Compute the number of ways to tile a 2 by 10 board using "
            "dominoes, modulo 1000.",
            "answer": "89",
        },
        # the same topic without a shared run of 8 words
        {
            "id": "q2",
            "problem": "In how many ways can dominoes cover a 2 x 10 board?",
            "answer": "89",
        },
        {
            "id": "q3",
            "problem": "LET x BE THE NUMBER OF WAYS TO TILE A 2 BY 10 BOARD WITH "
            "DOMINOES. FIND x MODULO 1000.",
            "answer": "89",
        },
    ]
    found = c.contaminated(pool, {"aime": bench}, ngram=8)
    assert found["q1"]["how"] == "ngram" and found["q1"]["matches"] == ["aime:b1"]
    assert len(found["q1"]["ngram"].split()) == 8
    assert found["q3"]["how"] == "exact"
    assert "q2" not in found
    assert set(c.contaminated(pool, {"aime": bench}, ngram=None)) == {"q3"}  # exact only


def test_ngram_contamination_in_the_summary(tmp_path):
    pool_paths = make_pool(tmp_path)
    bench = tmp_path / "aime98.jsonl"
    # pool problem i is "Problem i: what is 100+i?": 5 words; the benchmark shares a 4-gram
    write_problems([{"id": "b1", "problem": "Tell me: problem 4: what is 104? Now.",
                     "answer": "1"}], bench)  # fmt: skip
    _, _, summary = run(tmp_path, pool_paths, {"set_size": 4, "decontamination_ngram": 4},
                        benchmarks=[bench])  # fmt: skip
    assert summary["problems"]["contaminated_ngram"] == 1
    assert summary["contaminated"] == [
        {"id": "p04", "matches": ["aime98:b1"], "how": "ngram", "ngram": "problem 4 what is"}
    ]
