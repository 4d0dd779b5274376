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
    got = [s for positions in parts for s in a.candidate_sets(df, positions, texts, 3)]
    want = _whole_sets(samples, df, 3)
    assert [(p, j) for p, j, _ in got] == [(p, j) for p, j, _ in want]
    assert len(got) == 12 * 2  # 8 samples -> 2 sets of 3 per problem, 2 left over
    for (_, _, cands), (_, _, expected) in zip(got, want, strict=True):
        assert [c["text"] for c in cands] == [c["text"] for c in expected]
        assert [c["answer"] for c in cands] == [c["answer"] for c in expected]
        assert all(set(c) == {"text", "answer", "mean", "bottom_10_percent", "lowest_group",
                              "tail"} for c in cands)  # fmt: skip
    assert any("\\boxed" in c["text"] for _, _, cands in got for c in cands)
    assert not any("<think>idea" in c["text"] for _, _, cands in got for c in cands)


def test_no_candidates_no_batches():
    import pandas as pd

    assert a.problem_batches(pd.DataFrame({"problem_id": []}), 10) == []
