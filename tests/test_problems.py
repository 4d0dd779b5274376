import json

import pytest

from confagg import check, prepare
from confagg.check import check_prompts, model_max_len
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


@pytest.mark.parametrize(
    "answer, shown",
    [
        ("true", r"true \(bool\)"),
        ("[1, 2]", r"\[1, 2\] \(list\)"),
        ('{"a": 1}', r'\{"a": 1\} \(dict\)'),
    ],
)
def test_answers_must_be_strings_or_numbers(tmp_path, answer, shown):
    path = _write(tmp_path, [OK, f'{{"id": "b", "problem": "y", "answer": {answer}}}'.encode()])
    with pytest.raises(
        ProblemFileError,
        match=rf"p\.jsonl:2: field 'answer' must be a string or a number, got {shown}",
    ):
        load_file(path)


def test_numbers_are_written_out_and_nan_refused(tmp_path):
    rows = [
        b'{"id": 7, "problem": "a", "answer": 25}',
        b'{"id": "x", "problem": "b", "answer": 0.5}',
        b'{"id": "y", "problem": "c", "answer": -3}',
    ]
    assert [(p["id"], p["answer"]) for p in load_file(_write(tmp_path, rows))] == [
        ("7", "25"),
        ("x", "0.5"),
        ("y", "-3"),
    ]
    bad = _write(tmp_path, [OK, b'{"id": "b", "problem": "y", "answer": NaN}'], "nan.jsonl")
    with pytest.raises(ProblemFileError, match=r"nan\.jsonl:2: field 'answer' .* got NaN"):
        load_file(bad)


def test_parquet_answers_of_other_types_name_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table({"id": ["a", "b"], "problem": ["x", "y"], "answer": [[1], [1, 2]]}), path
    )
    with pytest.raises(
        ProblemFileError, match=r"p\.parquet row 0: field 'answer' .* \[1\] \(list\)"
    ):
        load_file(path)


# --- prompt lengths against the token budgets (python -m confagg.check) ---

PROMPT = {"system": None, "instruction": "Put the answer in \\boxed{}.", "example": None}
AGG_PROMPT = {
    "system": None,
    "instruction": "Write one solution.",
    "confidence": {"enabled": True, "metric": "tail", "scale": "rank", "decimals": 0, "note": None},
    "max_prompt_tokens": 480,
    "think_end": "</think>",
}


def _check_settings(source, max_model_len=512, max_tokens=64, budget=480):
    return {
        "source": source,
        "fields": {},
        "solver": {
            "prompt": PROMPT,
            "chat_template_kwargs": {},
            "max_model_len": max_model_len,
            "max_tokens": max_tokens,
            "require_think_end": False,
        },
        "aggregator": {
            "prompt": dict(AGG_PROMPT, max_prompt_tokens=budget),
            "chat_template_kwargs": {},
            "set_size": 4,
            "max_model_len": max_model_len,
            "max_tokens": 32,
            "require_think_end": False,
        },
        "think_end": "</think>",
        "think_end_auto": True,
    }


def _prepare(tmp_path, rows, name="src.jsonl"):
    """A source file (with a blank line first, so its lines differ from the normalised file's)
    and the normalised set prepared from it, as the rule does."""
    src = tmp_path / name
    src.write_text("\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "data" / "set.jsonl"
    settings = {"source": {"path": str(src)}, "fields": {}, "limit": None}
    record = out.with_name("set.source.json")
    prepare.main(["--settings", json.dumps(settings), "--source-record", str(record), str(out)])
    return src, out


def test_prompt_check_names_source_line_and_id_of_a_long_problem(tmp_path, tiny_model):
    rows = [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": 2 * i} for i in range(3)]
    rows.insert(2, {"id": "huge", "problem": "Compute " + "x + " * 250_000 + "1.", "answer": "1"})
    src, out = _prepare(tmp_path, rows)
    with pytest.raises(ProblemFileError) as err:
        check_prompts(out, _check_settings({"path": str(src)}), tiny_model, tiny_model)
    msg = str(err.value)
    assert msg.startswith("1 of 4 problems do not fit the token budgets")
    assert f"{src}:4 (normalised: {out}:3), problem id 'huge': solver prompt " in msg
    assert "> 448 (generator.engine.max_model_len 512 - sampling.max_tokens 64)" in msg
    assert "> 480 (aggregator.prompt.max_prompt_tokens 480)" in msg
    assert "'p0'" not in msg and "'p2'" not in msg


def test_prompt_check_passes_and_records_the_longest(tmp_path, tiny_model):
    rows = [{"id": "a", "problem": "What is 1 + 1?", "answer": "2"}]
    rows.append({"id": "b", "problem": "What is 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1?", "answer": "8"})
    src, out = _prepare(tmp_path, rows)
    record_path = tmp_path / "data" / "set.check.json"
    check.main(
        [
            "--problems",
            str(out),
            "--generator",
            str(tiny_model),
            "--aggregator",
            str(tiny_model),
            "--settings",
            json.dumps(_check_settings({"path": str(src)})),
            str(record_path),
        ]
    )
    record = json.loads(record_path.read_text())
    assert record["problems"] == 2
    assert record["solver"]["budget"] == 448 and record["solver"]["longest_id"] == "b"
    assert 0 < record["solver"]["longest_tokens"] <= 448
    assert "aggregator" not in record  # in the log only: the output must not change with it
    full = check_prompts(out, _check_settings({"path": str(src)}), tiny_model, tiny_model)
    assert full["aggregator"]["budget"] == 480 and full["aggregator"]["longest_id"] == "b"


def test_prompt_check_budget_edges(tmp_path, tiny_model):
    """A problem exactly at the solver budget passes; one token less of budget fails it."""
    src, out = _prepare(tmp_path, [{"id": "a", "problem": "What is 2 + 3?", "answer": "5"}])
    settings = _check_settings({"path": str(src)}, budget=4000)
    n = check_prompts(out, settings, tiny_model, tiny_model)["solver"]["longest_tokens"]
    ok = _check_settings({"path": str(src)}, max_model_len=n + 64, budget=4000)
    assert check_prompts(out, ok, tiny_model, tiny_model)["solver"]["budget"] == n
    short = _check_settings({"path": str(src)}, max_model_len=n + 63, budget=4000)
    with pytest.raises(ProblemFileError, match=rf"solver prompt {n} tokens > {n - 1}"):
        check_prompts(out, short, tiny_model, tiny_model)


def test_prompt_check_without_max_model_len_uses_the_models_context(tmp_path, tiny_model):
    src, out = _prepare(tmp_path, [{"id": "a", "problem": "y " * 5000, "answer": "1"}])
    settings = _check_settings({"path": str(src)}, max_model_len=None, budget=None)
    context = json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"]
    assert model_max_len(tiny_model) == context
    with pytest.raises(
        ProblemFileError, match=rf"> {context - 64} \(the model's context {context}"
    ):
        check_prompts(out, settings, tiny_model, tiny_model)
