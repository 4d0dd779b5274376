"""The aggregator runs' candidate sets, built a batch of whole problems at a time with texts
read only for that batch (memory follows the batch, not the benchmark)."""

from __future__ import annotations

import numpy as np
import pytest
from test_curate import make_pool
from test_curate_scale import _small_row_groups

from confagg import aggregate as a
from confagg.answers import after_think
from confagg.candidates import CandidateTexts, load_candidates
from confagg.tables import SAMPLES, read_table


def _whole_sets(samples, df, m):
    """The sets as the stage built them before batching: every text read at once, each
    problem's samples in sample order cut into consecutive sets of ``m``."""
    text = {}
    for path in samples:
        t = read_table(path, SAMPLES, ["problem_id", "sample_idx", "text"]).to_pylist()
        text.update(
            {(r["problem_id"], r["sample_idx"]): after_think(r["text"], "</think>") for r in t}
        )
    out = []
    for pid, group in df.groupby("problem_id", sort=False):
        rows = group.sort_values("sample_idx").to_dict("records")
        for j in range(len(rows) // m):
            cands = [
                {"text": text[(pid, r["sample_idx"])], "answer": r["answer"]}
                for r in rows[j * m : (j + 1) * m]
            ]
            out.append((pid, j, cands))
    return out


@pytest.mark.parametrize(("batch", "batches"), [(1, 12), (7, 12), (8, 12), (30, 3), (10_000, 1)])
def test_sets_in_batches_are_the_sets_of_the_whole_benchmark(tmp_path, batch, batches):
    _, samples, scores, grades = make_pool(tmp_path, problems=12, samples=8, shards=3)
    _small_row_groups(samples, 200)  # texts come from many row groups
    df = load_candidates(samples, scores, grades)
    texts = CandidateTexts(samples, "</think>")
    parts = a.problem_batches(df, batch)
    # 12 problems of 8 samples: whole problems, in order, reaching the bound or one problem
    assert len(parts) == batches
    assert np.array_equal(np.concatenate(parts), np.arange(len(df)))
    for positions in parts:
        pids = df["problem_id"].to_numpy()[positions]
        later = df["problem_id"].to_numpy()[positions[-1] + 1 :]
        assert not set(pids) & set(later)
    got = [s for positions in parts for s in a.candidate_sets(df, positions, texts, [3, 2])]
    # per problem: its sets of 3, then its sets of 2
    want = [
        (p, m, j, c)
        for pid in dict.fromkeys(df["problem_id"])
        for m in (3, 2)
        for p, j, c in _whole_sets(samples, df, m)
        if p == pid
    ]
    assert [(p, m, j) for p, m, j, _ in got] == [(p, m, j) for p, m, j, _ in want]
    assert len(got) == 12 * (2 + 4)  # 8 samples -> 2 sets of 3 (2 left over) and 4 of 2
    for (_, _, _, cands), (_, _, _, expected) in zip(got, want, strict=True):
        assert [c["text"] for c in cands] == [c["text"] for c in expected]
        assert [c["answer"] for c in cands] == [c["answer"] for c in expected]
        assert all(set(c) == {"text", "answer", "mean", "bottom_10_percent", "lowest_group",
                              "tail"} for c in cands)  # fmt: skip
    assert any("\\boxed" in c["text"] for *_, cands in got for c in cands)
    assert not any("<think>idea" in c["text"] for *_, cands in got for c in cands)


@pytest.mark.parametrize(
    ("sizes", "r", "expected"), [([8], 1, 8192), ([2, 4, 8, 16], 4, 273), ([4], 2, 2048)]
)
def test_a_batch_holds_about_the_same_completions_whatever_the_grid(sizes, r, expected):
    per_batch = a.batch_candidates(sizes, r)
    assert per_batch == expected
    calls = per_batch * r * sum(1 / m for m in sizes)
    assert a.BATCH_CALLS * 0.99 <= calls <= a.BATCH_CALLS


def _variant(name, trained=None, confidences="real"):
    return a.Variant(name, trained, confidences != "none", confidences, {})


def test_a_trained_variant_runs_once_per_training_seed_and_its_own_adapter():
    variants = [_variant("prompted"), _variant("trained", "plain")]
    runs = a.variant_runs(variants, [0, 3])
    assert [(v.name, s) for v, s in runs] == [("prompted", None), ("trained", 0), ("trained", 3)]
    adapters = {"plain/seed0": "ad0", "plain/seed3": "ad3"}
    lora = a._engine_plan("base", adapters, runs, "lora")
    assert [(m, [(v.name, s) for v, s in g], w) for m, g, w in lora] == [
        ("base", [("prompted", None), ("trained", 0), ("trained", 3)], True)
    ]
    merged = a._engine_plan("base", adapters, runs, "merged")
    assert [(m, [s for _, s in g]) for m, g, _ in merged] == [
        ("base", [None]),
        ("ad0", [0]),
        ("ad3", [3]),
    ]
    with pytest.raises(ValueError, match=r"plain/seed3"):
        a._engine_plan("base", {"plain/seed0": "ad0"}, runs, "lora")


def test_permuted_confidences_move_within_each_set_and_never_across(tmp_path):
    """The permuted control on a real benchmark's sets: each set shows exactly its own numbers,
    every candidate another's (where the numbers differ), seeded per set."""
    _, samples, scores, grades = make_pool(tmp_path, problems=6, samples=8, shards=2)
    df = load_candidates(samples, scores, grades)
    texts = CandidateTexts(samples, "</think>")
    sets = a.candidate_sets(df, np.arange(len(df)), texts, [2, 4, 8])
    permuted, real = _variant("p", confidences="permuted"), _variant("r")
    metrics = ("mean", "bottom_10_percent", "lowest_group", "tail")
    moved = 0
    for pid, m, j, cands in sets:
        shown = a.shown_candidates(permuted, pid, m, j, cands, seed=11)
        tuples = [tuple(c[k] for k in metrics) for c in cands]
        shown_tuples = [tuple(c[k] for k in metrics) for c in shown]
        # the same numbers (the whole tuple of one candidate, together), within the set
        assert sorted(shown_tuples) == sorted(tuples)
        # texts and answers stay; no candidate keeps its own numbers when they differ
        assert [c["text"] for c in shown] == [c["text"] for c in cands]
        assert [c["answer"] for c in shown] == [c["answer"] for c in cands]
        for own, got in zip(tuples, shown_tuples, strict=True):
            if len(set(tuples)) == len(tuples):
                assert got != own
        moved += sum(o != g for o, g in zip(tuples, shown_tuples, strict=True))
        # never across problems or sets: nothing shown comes from another set
        assert set(shown_tuples) <= set(tuples)
        # seeded per set: the same again, the real control unchanged
        again = a.shown_candidates(permuted, pid, m, j, cands, seed=11)
        assert again == shown
        assert a.shown_candidates(real, pid, m, j, cands, seed=11) is cands
    assert moved > len(sets)
    # another seed permutes some set differently
    other = [a.shown_candidates(permuted, p, m, j, c, seed=12) for p, m, j, c in sets]
    assert other != [a.shown_candidates(permuted, p, m, j, c, seed=11) for p, m, j, c in sets]


def test_equal_confidences_show_each_set_its_mean():
    from confagg.aggregator_prompt import aggregator_messages

    cands = [
        {"text": "a \\boxed{1}", "mean": 1.0, "bottom_10_percent": 2.0, "lowest_group": 0.5,
         "tail": 1.0},
        {"text": "b \\boxed{2}", "mean": 3.0, "bottom_10_percent": float("nan"),
         "lowest_group": 1.5, "tail": 2.0},
    ]  # fmt: skip
    shown = a.shown_candidates(_variant("e", confidences="equal"), "p", 2, 0, cands, seed=1)
    assert [c["mean"] for c in shown] == [2.0, 2.0]
    assert [c["bottom_10_percent"] for c in shown] == [2.0, 2.0]  # a missing value: the rest's
    assert cands[0]["mean"] == 1.0  # the set itself is not changed
    confidence = {"enabled": True, "metric": "mean", "scale": "rank", "decimals": 0}
    prompt = {"think_end": "</think>", "instruction": "Answer.", "confidence": confidence}
    text = aggregator_messages("1+1?", shown, prompt)[-1]["content"]
    assert text.count("(confidence: 50/100)") == 2


def test_no_candidates_no_batches():
    import pandas as pd

    assert a.problem_batches(pd.DataFrame({"problem_id": []}), 10) == []


def test_shards_split_the_problems_disjointly_and_cover_them_all():
    problems = {f"p{j}": {"id": f"p{j}"} for j in range(7)}
    shards = [a.shard_problems(problems, s, 3) for s in range(3)]
    assert [list(s) for s in shards] == [["p0", "p3", "p6"], ["p1", "p4"], ["p2", "p5"]]
    with pytest.raises(ValueError, match="shard 3: expected 0 <= shard < 3"):
        a.shard_problems(problems, 3, 3)


def test_merged_shards_hold_every_row_of_every_shard_once(tmp_path):
    import pyarrow as pa

    from confagg.tables import AGG_OUTPUTS, read_table, write_table

    def shard(path, problems):
        rows = [
            {"method": "m", "problem_id": p, "set_idx": j, "k": 2, "output_idx": 0,
             "train_seed": None, "text": f"{p}/{j}", "answer": "1", "correct": j == 0,
             "status": "ok", "num_tokens": 3, "prompt_tokens": 9, "prompt_truncated": False}
            for p in problems for j in range(2)
        ]  # fmt: skip
        write_table(pa.Table.from_pylist(rows), path, AGG_OUTPUTS)
        return path

    parts = [shard(tmp_path / "s0.parquet", ["p0", "p2"]), shard(tmp_path / "s1.parquet", ["p1"])]
    rows = a.merge_shards(parts, tmp_path / "all.parquet")
    merged = read_table(tmp_path / "all.parquet", AGG_OUTPUTS).to_pandas()
    assert rows == len(merged) == 6
    assert sorted(merged["text"]) == ["p0/0", "p0/1", "p1/0", "p1/1", "p2/0", "p2/1"]
