import json

import pytest

from confagg.problems import (
    ProblemFileError,
    demo_problems,
    load_file,
    read_problems,
    shard_of,
    write_problems,
)
from conftest import SHARED_DATA

OK = b'{"id": "a", "problem": "x", "answer": "1"}'


def _write(tmp_path, lines, name="p.jsonl"):
    path = tmp_path / name
    path.write_bytes(
        b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)
    )
    return path


def test_round_trip_and_field_mapping(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"idx": 1, "question": "1+1?", "sol": "2"}),
            json.dumps({"idx": 2, "question": "2+2?", "sol": "4"}),
        ],
    )
    problems = load_file(path, {"id": "idx", "problem": "question", "answer": "sol"})
    assert problems == [
        {"id": "1", "problem": "1+1?", "answer": "2"},
        {"id": "2", "problem": "2+2?", "answer": "4"},
    ]
    write_problems(problems, tmp_path / "out.jsonl")
    assert read_problems(tmp_path / "out.jsonl") == problems


@pytest.mark.parametrize(
    "lines, message",
    [
        ([OK, b"{not json"], r"p\.jsonl:2: not valid JSON"),
        (
            [OK, b'{"id": "a", "problem": "y", "answer": "2"}'],
            r"p\.jsonl:2: duplicate problem id 'a' \(first at .*p\.jsonl:1\)",
        ),
        ([b'{"id": "a", "problem": "x", "answer": ""}'], r"p\.jsonl:1: field 'answer' is empty"),
        ([b'{"id": "a", "problem": "x"}'], r"p\.jsonl:1: missing field 'answer'"),
        ([b'{"id": "a", "problem": "\xff\xfe", "answer": "1"}'], r"p\.jsonl:1: not valid UTF-8"),
        ([b"[1, 2]"], r"p\.jsonl:1: expected a JSON object"),
        ([b""], r"p\.jsonl: no problems \(the file is empty\)"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(ProblemFileError, match=message):
        load_file(_write(tmp_path, lines))


def test_demo_problems_are_seeded_and_exact():
    a, b = demo_problems(20, seed=3), demo_problems(20, seed=3)
    assert a == b and a != demo_problems(20, seed=4)
    assert len({p["id"] for p in a}) == 20
    for p in a:
        if p["problem"].startswith("What is") and "+" in p["problem"]:
            x, y = p["problem"][8:-1].split(" + ")
            assert int(p["answer"]) == int(x) + int(y)


def test_shards_partition_the_problems():
    problems = [{"id": str(i)} for i in range(10)]
    shards = [shard_of(problems, s, 3) for s in range(3)]
    assert [p for s in shards for p in s] == problems
    assert sorted(map(len, shards)) == [3, 3, 4]
    with pytest.raises(ValueError):
        shard_of(problems, 3, 3)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (benchmark files) is absent")
def test_shared_benchmarks_load():
    for name in ("aime24", "aime25", "hmmt24", "hmmt25", "brumo25"):
        problems = load_file(SHARED_DATA / "benchmarks" / f"{name}.jsonl")
        assert len(problems) == 30


@pytest.mark.parametrize(
    "columns, message",
    [
        (
            {"id": ["a", "a"], "problem": ["x", "y"], "answer": ["1", "2"]},
            r"p\.parquet row 1: duplicate problem id 'a' \(first at .*p\.parquet row 0\)",
        ),
        ({"id": ["a", "b"], "problem": ["x", "y"], "answer": ["1", None]}, r"p\.parquet row 1"),
        ({"id": ["a"], "problem": ["x"], "answer": ["  "]}, r"row 0: field 'answer' is empty"),
        ({"id": [], "problem": [], "answer": []}, r"p\.parquet: no problems"),
    ],
)
def test_bad_parquet_files_name_file_and_row(tmp_path, columns, message):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()}), path)
    with pytest.raises(ProblemFileError, match=message):
        load_file(path)
