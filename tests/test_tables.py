import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from confagg.answers import Reading, final_answer
from confagg.candidates import CandidateTexts, load_candidates
from confagg.files import atomic_path
from confagg.grade import grade
from confagg.score import score_file, score_table
from confagg.tables import (
    CANDIDATE,
    GRADES,
    SAMPLES,
    SCORES,
    SETS,
    TableWriter,
    flat_confidence,
    iter_batches,
    read_table,
    row_group_starts,
    row_nbytes,
    write_table,
)


def _samples(confs, texts=None):
    n = len(confs)
    return pa.table(
        {
            "problem_id": [f"p{i // 2}" for i in range(n)],
            "sample_idx": [i % 2 for i in range(n)],
            "text": texts or ["x \\boxed{1}"] * n,
            "answer": ["1" if i % 3 else None for i in range(n)],
            "num_tokens": [len(c) for c in confs],
            "finish_reason": ["stop"] * n,
            "token_confidence": pa.array(
                [np.asarray(c, np.float16) for c in confs], pa.large_list(pa.float16())
            ),
        },
        schema=SAMPLES,
    )


def _varied(n=300, seed=0):
    """Samples of very different sizes (texts 0-3,000 bytes, 0-2,000 tokens)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 2000, n)
    texts = [
        f"<think>{'y' * int(k)}</think> \\boxed{{{i}}}" if i % 4 else "z" * int(k)
        for i, k in enumerate(lengths)
    ]
    return _samples([rng.random(int(k)) * 10 for k in lengths], texts)


def test_samples_round_trip(tmp_path):
    confs = [[1.5, 2.25, 3.0], [], [0.5] * 1000]
    table = _samples(confs)
    write_table(table, tmp_path / "s.parquet", SAMPLES)
    back = read_table(tmp_path / "s.parquet", SAMPLES)
    assert back.equals(table)
    # 64-bit offsets where one column of a shard passes 2 GiB
    assert back.schema.field("token_confidence").type == pa.large_list(pa.float16())
    assert back.schema.field("text").type == pa.large_string()
    assert SETS.field("candidates").type == pa.large_list(CANDIDATE)
    assert CANDIDATE.field("text").type == pa.large_string()
    flat, offsets = flat_confidence(back)
    assert flat.dtype == np.float16
    assert offsets.tolist() == [0, 3, 3, 1003]
    np.testing.assert_array_equal(flat[:3], np.array([1.5, 2.25, 3.0], np.float16))


def test_files_written_with_32_bit_types_still_read(tmp_path):
    """Shards written before the 64-bit types: read (whole or in batches) as the schema says."""
    table = _samples([[1.0, 2.0], [3.0]])
    old = pa.schema(
        [
            pa.field(f.name, {pa.large_string(): pa.string()}.get(f.type, f.type))
            if f.name != "token_confidence"
            else pa.field(f.name, pa.list_(pa.float16()))
            for f in SAMPLES
        ]
    )
    pq.write_table(table.cast(old), tmp_path / "old.parquet")
    assert pq.read_schema(tmp_path / "old.parquet").field("text").type == pa.string()
    back = read_table(tmp_path / "old.parquet", SAMPLES)
    assert back.schema == SAMPLES and back.equals(table)
    (batch,) = iter_batches(tmp_path / "old.parquet", SAMPLES, ["token_confidence", "text"])
    assert batch.schema.field("token_confidence").type == pa.large_list(pa.float16())
    assert batch.column("text").to_pylist() == table.column("text").to_pylist()
    # an old training-sets file: list<struct<..., text: string>>
    old_cand = pa.struct(
        [pa.field(f.name, pa.string()) if f.name == "text" else f for f in CANDIDATE]
    )
    cand = {"sample_idx": 0, "text": "t", "answer": "1", "correct": True, "num_tokens": 1}
    cand |= {m: 0.5 for m in ("mean", "bottom_10_percent", "lowest_group", "tail")}
    sets = pa.table(
        {
            "set_id": ["a/0"],
            "problem_id": ["a"],
            "problem": ["p"],
            "gold": ["1"],
            "hard": [True],
            "majority_answer": [None],
            "candidates": pa.array([[cand]], pa.list_(old_cand)),
        }
    )
    pq.write_table(sets, tmp_path / "sets.parquet")
    back = read_table(tmp_path / "sets.parquet", SETS)
    assert back.schema.field("candidates").type == pa.large_list(CANDIDATE)
    assert back.column("candidates").to_pylist() == [[cand]]


def test_a_file_that_does_not_cast_names_the_file(tmp_path):
    bad = _samples([[1.0]]).set_column(1, "sample_idx", pa.array(["zero"]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: not a samples table"):
        read_table(tmp_path / "bad.parquet", SAMPLES)


def test_row_nbytes_counts_each_rows_values():
    table = _samples([[1.0, 2.0, 3.0], []], texts=["abcd", ""])
    sizes = row_nbytes(table.slice(0, 2))
    # problem_id "p0" (2 + 4), sample_idx 4, text (4 + 8), answer (0 + 4), num_tokens 4,
    # finish_reason (4 + 4), token_confidence (3 * 2 + 8)
    assert sizes.tolist() == [6 + 4 + 12 + 4 + 4 + 8 + 14, 6 + 4 + 8 + 5 + 4 + 8 + 8]
    assert row_nbytes(table.slice(1)).tolist() == sizes[1:].tolist()  # a slice counts its own
    cand = {"sample_idx": 0, "answer": None, "correct": True, "num_tokens": 1}
    cand |= {m: 0.5 for m in ("mean", "bottom_10_percent", "lowest_group", "tail")}
    sets = pa.table(
        {"candidates": pa.array([[{**cand, "text": "x" * 100}] * 3, []], pa.large_list(CANDIDATE))}
    )
    nested = row_nbytes(sets)
    assert nested[0] > 3 * 100 and nested[1] == 8  # only the offsets of an empty list
    assert row_nbytes(sets.slice(1)).tolist() == [8]


def test_writer_bounds_row_groups_and_keeps_order(tmp_path):
    table = _varied()
    sizes = row_nbytes(table)
    limit = 40_000
    with TableWriter(tmp_path / "s.parquet", SAMPLES, row_group_bytes=limit) as writer:
        for start in range(0, table.num_rows, 37):  # pieces that do not align with groups
            writer.write(table.slice(start, 37).to_batches()[0])
    assert writer.rows == table.num_rows
    pf = pq.ParquetFile(tmp_path / "s.parquet")
    groups = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    assert len(groups) > 5 and sum(groups) == table.num_rows
    starts = row_group_starts(tmp_path / "s.parquet")
    assert starts.tolist() == [0, *np.cumsum(groups).tolist()]
    for a, b in itertools.pairwise(starts):
        assert sizes[a:b].sum() <= limit or b - a == 1  # a row larger than a group: alone
        if b < table.num_rows:
            assert sizes[a : b + 1].sum() > limit  # and groups are filled
    assert read_table(tmp_path / "s.parquet", SAMPLES).equals(table)


def test_writer_puts_a_huge_row_alone_and_writes_empty_tables(tmp_path):
    table = _samples([[1.0], [2.0] * 5000, [3.0]])
    with TableWriter(tmp_path / "s.parquet", SAMPLES, row_group_bytes=1000) as writer:
        writer.write(table)
    md = pq.ParquetFile(tmp_path / "s.parquet").metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [1, 1, 1]
    write_table(table.slice(0, 0), tmp_path / "empty.parquet", SAMPLES)
    assert read_table(tmp_path / "empty.parquet", SAMPLES).num_rows == 0
    assert list(iter_batches(tmp_path / "empty.parquet", SAMPLES)) == []


def test_writer_leaves_nothing_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError), TableWriter(tmp_path / "s.parquet", SAMPLES) as writer:
        writer.write(_samples([[1.0]]))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    wrong = pytest.raises(ValueError, match=r"s\.parquet: rows do not fit the samples table")
    with wrong, TableWriter(tmp_path / "s.parquet", SAMPLES) as writer:
        writer.write(pa.table({"problem_id": ["a"]}))
    assert list(tmp_path.iterdir()) == []


def test_iter_batches_bounds_batches_and_reads_only_the_columns(tmp_path):
    table = _varied()
    with TableWriter(tmp_path / "s.parquet", SAMPLES, row_group_bytes=200_000) as writer:
        writer.write(table)
    starts = row_group_starts(tmp_path / "s.parquet")
    batches = list(iter_batches(tmp_path / "s.parquet", SAMPLES, ["text", "problem_id"], 20_000))
    assert all(b.column_names == ["text", "problem_id"] for b in batches)
    assert len(batches) > len(starts) - 1  # groups split into batches
    assert max(b.nbytes for b in batches) < 3 * 20_000
    both = pa.concat_tables(batches)
    assert both.equals(table.select(["text", "problem_id"]))
    # batches never span two row groups: every group start is a batch start
    batch_starts = np.cumsum([0] + [b.num_rows for b in batches])
    assert set(starts.tolist()) <= set(batch_starts.tolist())
    # one row group alone
    only = list(iter_batches(tmp_path / "s.parquet", SAMPLES, ["sample_idx"], row_groups=[1]))
    idx = pa.concat_tables(only).column(0)
    assert idx.equals(table.column("sample_idx").slice(starts[1], starts[2] - starts[1]))


def test_read_table_names_the_file_when_wrong(tmp_path):
    other = pa.schema([("problem_id", pa.string()), ("sample_idx", pa.int32())])
    write_table(pa.table({"problem_id": ["a"], "sample_idx": [0]}), tmp_path / "x.parquet", other)
    with pytest.raises(ValueError, match=r"x\.parquet: not a samples table"):
        read_table(tmp_path / "x.parquet", SAMPLES)
    with pytest.raises(ValueError, match=r"x\.parquet: not a samples table"):
        next(iter_batches(tmp_path / "x.parquet", SAMPLES))


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_score_table(tmp_path):
    scores = score_table(_samples([[1.0, 3.0], [2.0, 2.0, 2.0, 8.0]]), window=2, tail_tokens=1)
    assert scores.column("mean").to_pylist() == [2.0, 3.5]
    assert scores.column("tail").to_pylist() == [3.0, 8.0]
    assert scores.column("lowest_group").to_pylist() == [2.0, 2.0]


def test_score_file_streams_the_same_scores(tmp_path):
    """Scored batch by batch (small row groups): the same as the whole table at once."""
    table = _varied()
    with TableWriter(tmp_path / "s.parquet", SAMPLES, row_group_bytes=100_000) as writer:
        writer.write(table)
    assert pq.ParquetFile(tmp_path / "s.parquet").metadata.num_row_groups > 3
    assert score_file(tmp_path / "s.parquet", tmp_path / "sc.parquet", 64, 32) == table.num_rows
    streamed = read_table(tmp_path / "sc.parquet", SCORES)
    assert streamed.equals(score_table(table, 64, 32))


def test_grade_reads_every_answer_of_a_shard_in_batches(tmp_path):
    table = _varied()
    with TableWriter(tmp_path / "s.parquet", SAMPLES, row_group_bytes=50_000) as writer:
        writer.write(table)
    assert pq.ParquetFile(tmp_path / "s.parquet").metadata.num_row_groups > 3
    reading = Reading("boxed", "</think>", True)
    gold = {p: "0" for p in table.column("problem_id").to_pylist()}
    grades = grade(tmp_path / "s.parquet", gold, reading)
    texts = table.column("text").to_pylist()
    assert grades.column("answer").to_pylist() == [final_answer(t, reading) for t in texts]
    unfinished = grades.column("unfinished_thinking").to_numpy(zero_copy_only=False)
    closed = pc.match_substring(table.column("text"), "</think>").to_numpy(zero_copy_only=False)
    assert (unfinished == ~closed).all() and 0 < unfinished.sum() < len(texts)


def test_candidate_texts_are_the_part_after_thinking(tmp_path):
    table = _samples([[1.0], [2.0], [3.0]], texts=["<think>a</think>B", "no close", "C"])
    write_table(table, tmp_path / "s.parquet", SAMPLES)
    write_table(score_table(table, 2, 2), tmp_path / "sc.parquet", SCORES)
    grades = table.select(["problem_id", "sample_idx"]).append_column(
        "correct", pa.array([True, False, True])
    )
    grades = grades.append_column("status", pa.array(["correct", "incorrect", "correct"]))
    grades = grades.append_column("answer", pa.array(["1", "2", "1"]))
    grades = grades.append_column("answer_group", pa.array([0, 1, 0], pa.int32()))
    grades = grades.append_column("unfinished_thinking", pa.array([False] * 3))
    write_table(grades, tmp_path / "g.parquet", GRADES)
    paths = [tmp_path / "s.parquet"], [tmp_path / "sc.parquet"], [tmp_path / "g.parquet"]
    df = load_candidates(*paths)
    assert "text" not in df.columns  # texts are read only where asked for
    where = df[["shard", "row"]].to_numpy(np.int64)
    texts = CandidateTexts(paths[0], "</think>")
    assert texts.read(np.array([2, 0]), where) == {0: ("B", 17), 2: ("C", 1)}
    assert texts.read(np.arange(3), where)[1] == ("no close", 8)
    with pytest.raises(ValueError, match=r"s.parquet: has 3 rows, row 5 asked for"):
        texts.read(np.array([0]), np.array([[0, 5]]))


def test_read_table_columns_reads_only_those(tmp_path):
    table = _samples([[1.0, 2.0], [3.0]])
    write_table(table, tmp_path / "s.parquet", SAMPLES)
    part = read_table(tmp_path / "s.parquet", SAMPLES, ["answer", "problem_id"])
    assert part.column_names == ["answer", "problem_id"]
    assert part.schema.field("answer") == SAMPLES.field("answer")
    assert part.column("answer").to_pylist() == table.column("answer").to_pylist()
    with pytest.raises(ValueError, match=r"\['tokens'\] are not in the samples table"):
        read_table(tmp_path / "s.parquet", SAMPLES, ["tokens"])


def test_files_get_the_umask_permissions_and_importing_changes_no_umask(tmp_path):
    """Written files get 0o666 & ~umask (mkstemp makes 0600), and importing the tables
    or files module leaves the process umask alone."""
    import subprocess
    import sys

    code = (
        "import os, sys; os.umask(0o027); import pyarrow as pa; "
        "from confagg import files, tables; assert os.umask(0o027) == 0o027; "
        "files.write_json({'a': 1}, sys.argv[1])"
    )
    out = tmp_path / "x.json"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=120)
    assert out.stat().st_mode & 0o777 == 0o640


def test_table_role_from_the_path_and_files_without_checksums_still_read(tmp_path):
    from confagg.files import table_role

    run = tmp_path / "results/r"
    assert table_role(run / "samples/aime25/seed1/shard0.parquet") == (
        "samples of aime25 seed 1, shard 0"
    )
    assert (
        table_role(run / "grades/pool/seed0/shard12.parquet") == "grades of pool seed 0, shard 12"
    )
    assert table_role(run / "curated/train.parquet") == "curated training sets"
    assert table_role(run / "eval/aime25/seed2/metrics.json") == "metrics of aime25 seed 2"
    assert table_role(tmp_path / "x.parquet", SCORES) == "scores table"
    table = _samples([[1.0, 2.0]] * 4)
    write_table(table, tmp_path / "new.parquet", SAMPLES)
    pq.write_table(table, tmp_path / "old.parquet")  # written before the page checksums
    assert read_table(tmp_path / "old.parquet", SAMPLES).equals(table)
    assert read_table(tmp_path / "new.parquet", SAMPLES).equals(table)
