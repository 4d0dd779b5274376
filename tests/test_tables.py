import numpy as np
import pyarrow as pa
import pytest

from confagg.score import score_table
from confagg.tables import SAMPLES, atomic_path, flat_confidence, read_table, write_table


def _samples(confs):
    n = len(confs)
    return pa.table(
        {
            "problem_id": [f"p{i // 2}" for i in range(n)],
            "sample_idx": [i % 2 for i in range(n)],
            "text": ["x \\boxed{1}"] * n,
            "answer": ["1" if i % 3 else None for i in range(n)],
            "num_tokens": [len(c) for c in confs],
            "finish_reason": ["stop"] * n,
            "token_confidence": pa.array(
                [np.asarray(c, np.float16) for c in confs], pa.list_(pa.float16())
            ),
        },
        schema=SAMPLES,
    )


def test_samples_round_trip(tmp_path):
    confs = [[1.5, 2.25, 3.0], [], [0.5] * 1000]
    table = _samples(confs)
    write_table(table, tmp_path / "s.parquet", SAMPLES)
    back = read_table(tmp_path / "s.parquet", SAMPLES)
    assert back.equals(table)
    assert back.schema.field("token_confidence").type == pa.list_(pa.float16())
    flat, offsets = flat_confidence(back)
    assert flat.dtype == np.float16
    assert offsets.tolist() == [0, 3, 3, 1003]
    np.testing.assert_array_equal(flat[:3], np.array([1.5, 2.25, 3.0], np.float16))


def test_flat_confidence_of_a_slice():
    table = _samples([[1.0], [2.0, 3.0], [4.0]]).slice(1, 2)
    flat, offsets = flat_confidence(table)
    assert offsets.tolist() == [0, 2, 3]
    assert flat.tolist() == [2.0, 3.0, 4.0]


def test_read_table_names_the_file_when_wrong(tmp_path):
    other = pa.schema([("problem_id", pa.string()), ("sample_idx", pa.int32())])
    write_table(pa.table({"problem_id": ["a"], "sample_idx": [0]}), tmp_path / "x.parquet", other)
    with pytest.raises(ValueError, match=r"x\.parquet: not a samples table"):
        read_table(tmp_path / "x.parquet", SAMPLES)


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


def test_read_table_columns_reads_only_those(tmp_path):
    table = _samples([[1.0, 2.0], [3.0]])
    write_table(table, tmp_path / "s.parquet", SAMPLES)
    part = read_table(tmp_path / "s.parquet", SAMPLES, ["answer", "problem_id"])
    assert part.column_names == ["answer", "problem_id"]
    assert part.schema.field("answer") == SAMPLES.field("answer")
    assert part.column("answer").to_pylist() == table.column("answer").to_pylist()
    with pytest.raises(ValueError, match=r"\['tokens'\] are not in the samples table"):
        read_table(tmp_path / "s.parquet", SAMPLES, ["tokens"])
