"""Hostile inputs, each expected to stop with a named error: config values (the checks the
Snakefile runs before any job, and three through a real dry-run), problem files and answers
(what rule prepare_problems and check_problems read), and the inputs a stage finds on disk
(torn parts, damaged or mismatched shards, settings a rule did not write).

A named error is the expected exception with a message naming what is wrong: the config key and
value, the file and line (or row) and problem id, the file to delete."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from confagg import prepare
from confagg.candidates import load_candidates
from confagg.check import check_prompts
from confagg.config import ConfigError, check_consistency, resolve_aggregator, validate
from confagg.parts import PartError, Parts, parts_dir
from confagg.problems import ProblemFileError, load_file, write_problems
from confagg.sample import SampleSettings, fingerprint, sample_shard
from confagg.settings import SettingsError, for_rule, from_mapping, load
from confagg.tables import GRADES, SAMPLES, SCORES, read_table, write_table
from conftest import REPO, snakemake

from .conftest import tiny_config

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def expect_named(figures, kind: str, name: str, run: Callable, exc, pattern: str) -> None:
    """``run()`` must raise ``exc`` with a message matching ``pattern``; counted either way."""
    try:
        run()
    except exc as e:
        named = re.search(pattern, str(e)) is not None
        figures.hostile.append((kind, name, named))
        assert named, f"{name}: the message does not name it ({pattern!r}):\n{e}"
        return
    except Exception as e:
        figures.hostile.append((kind, name, False))
        raise AssertionError(f"{name}: {type(e).__name__} instead of {exc.__name__}: {e}") from e
    figures.hostile.append((kind, name, False))
    raise AssertionError(f"{name}: accepted without an error")


# --------------------------------------------------------------------------------------------
# config values: what workflow/rules/common.smk checks before any job


def start(config: dict) -> None:
    """The Snakefile's checks at start (common.smk), in its order."""
    validate(config, SCHEMA)
    resolve_aggregator(config)
    check_consistency(config)


def _set(path: str, value):
    def change(cfg):
        *parents, last = path.split(".")
        for key in parents:
            cfg = cfg.setdefault(key, {})
        cfg[last] = value

    return change


def _both(*changes):
    def change(cfg):
        for c in changes:
            c(cfg)

    return change


_AGG = {"name": "prompted", "trained": None, "confidence": True}
CONFIG_CASES = [
    ("seed -1", _set("seed", -1), r"seed: -1 is less than the minimum of 0"),
    (
        "temperature 'hot'",
        _set("sampling.temperature", "hot"),
        r"sampling\.temperature: 'hot' is not of type 'number'",
    ),
    ("misspelt key", _set("sampling.temprature", 0.7), r"sampling\.temprature: unknown key"),
    ("no shards", _set("training_pool.shards", 0), r"training_pool\.shards: 0 is less than"),
    (
        "model folder missing",
        _set("generator.model", "/no/such/model"),
        r"generator\.model: '/no/such/model' is not an existing model folder",
    ),
    (
        "aggregator folder missing",
        _set("aggregator.model", "/no/such/aggregator"),
        r"aggregator\.model: '/no/such/aggregator' is not an existing model folder",
    ),
    ("logprobs 21", _set("sampling.logprobs", 21), r"sampling\.logprobs: 21 is greater than"),
    (
        "empty source",
        _set("benchmarks.mini.source", {}),
        r"benchmarks\.mini\.source: give exactly one of path, url, hub or demo",
    ),
    (
        "curation set above the pool's samples",
        _set("curation.set_size", 5),
        r"curation\.set_size 5 > training_pool\.samples_per_problem 4",
    ),
    (
        "disjoint sets above the pool's samples",
        _set("curation.sets_per_problem", 3),
        r"curation\.sets_per_problem 3 x curation\.set_size 2 = 6 > "
        r"training_pool\.samples_per_problem 4",
    ),
    (
        "evaluation set above the samples",
        _set("evaluation.set_sizes", [2, 5]),
        r"evaluation\.set_sizes \[5\] > evaluation\.samples_per_problem 4",
    ),
    (
        "k above the samples",
        _set("evaluation.ks", [1, 2, 8]),
        r"evaluation\.ks \[8\] > evaluation\.samples_per_problem 4",
    ),
    (
        "groups not dividing the generation batch",
        _set("training.num_generations", 3),
        r"training\.num_generations 3 does not divide the generation batch 4",
    ),
    (
        "no room for the prompt",
        _set("sampling.max_tokens", 1024),
        r"sampling\.max_tokens 1024 >= generator\.engine\.max_model_len 1024",
    ),
    (
        "logprobs above the engine's cap",
        _set("generator.engine.max_logprobs", 10),
        r"sampling\.logprobs 20 > generator\.engine\.max_logprobs 10",
    ),
    (
        "aggregator prompt budget above the context",
        _set("aggregator.prompt.max_prompt_tokens", 1020),
        r"aggregator\.prompt\.max_prompt_tokens 1020 \+ evaluation\.aggregator_sampling\."
        r"max_tokens 16 = 1036 > generator\.engine\.max_model_len 1024",
    ),
    (
        "no problem left for training",
        _set("curation.val_fraction", 1),
        r"curation\.val_fraction 1 leaves no problem for training",
    ),
    (
        "evaluation steps without validation sets",
        _both(_set("training.eval_steps", 1), _set("curation.val_fraction", 0)),
        r"training\.eval_steps 1 needs validation sets, but curation\.val_fraction is 0",
    ),
    (
        "two aggregators of one name",
        _set("evaluation.aggregators", [_AGG, _AGG]),
        r"evaluation\.aggregators: names \['prompted'\] appear more than once",
    ),
]


@pytest.mark.parametrize("name, change, pattern", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_hostile_config_values(figures, tiny_model, name, change, pattern):
    config = copy.deepcopy(tiny_config(tiny_model))
    start(copy.deepcopy(config))  # the unchanged config passes
    change(config)
    expect_named(figures, "config", name, lambda: start(config), ConfigError, pattern)


# the same, through the real Snakefile (a dry-run): the run stops before any job
DRY_RUN_CASES = [
    ("seed -1 (dry-run)", _set("seed", -1), r"seed: -1 is less than the minimum of 0"),
    (
        "evaluation set above the samples (dry-run)",
        _set("evaluation.set_sizes", [2, 5]),
        r"evaluation\.set_sizes \[5\] > evaluation\.samples_per_problem 4",
    ),
    (
        "unknown training run (dry-run)",
        _set("evaluation.aggregators", [dict(_AGG, name="t", trained="nosuch")]),
        r"evaluation\.aggregators: 't' uses training variant 'nosuch', not one of "
        r"training\.variants \(confidence\)",
    ),
]


class DryRunError(Exception):
    pass


@pytest.mark.parametrize("name, change, pattern", DRY_RUN_CASES, ids=[c[0] for c in DRY_RUN_CASES])
def test_hostile_config_stops_the_dry_run(figures, tiny_model, tmp_path, name, change, pattern):
    shutil.copytree(REPO / "config", tmp_path / "config")
    config = tiny_config(tiny_model)
    change(config)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))

    def dry_run():
        proc = snakemake(
            "--configfile", "bad.yaml", "--replace-workflow-config", "-n", "--cores", "1",
            cwd=tmp_path, check=False, timeout=300,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        if proc.returncode == 0:
            return
        assert "Job stats" not in out and "MissingInputException" not in out, out[-3000:]
        raise DryRunError(out)

    expect_named(figures, "config", name, dry_run, DryRunError, pattern)


# --------------------------------------------------------------------------------------------
# problem files and answers (rule prepare_problems: confagg.prepare)

OK = '{"id": "a", "problem": "What is 1 + 1?", "answer": "2"}'


def _file(tmp_path: Path, lines: list[str | bytes], name: str = "p.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines))
    return path


def _parquet(tmp_path: Path, columns: dict) -> Path:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def rec(**fields) -> str:
    """One JSONL line (``NaN`` as Python's json writes it: the JSON that some tools emit)."""
    return json.dumps(fields)


FILE_CASES = [
    ("problems", "not JSON", [OK, "{not json"], r"p\.jsonl:2: not valid JSON"),
    (
        "problems",
        "duplicate id",
        [OK, rec(id="a", problem="y", answer="3")],
        r"p\.jsonl:2: duplicate problem id 'a' \(first at .*p\.jsonl:1\)",
    ),
    ("problems", "no answer field", [rec(id="a", problem="x")], r":1: missing field 'answer'"),
    ("problems", "null id", [rec(id=None, problem="x", answer="1")], r":1: missing field 'id'"),
    (
        "problems",
        "blank problem",
        [rec(id="a", problem="  ", answer="1")],
        r":1: field 'problem' is empty",
    ),
    (
        "problems",
        "not UTF-8",
        [OK, b'{"id": "b", "problem": "\xff", "answer": "1"}'],
        r":2: not valid UTF-8",
    ),
    ("problems", "not an object", [OK, "[1, 2]"], r"p\.jsonl:2: expected a JSON object"),
    ("problems", "empty file", [""], r"p\.jsonl: no problems \(the file is empty\)"),
    (
        "answers",
        "answer true",
        [rec(id="a", problem="x", answer=True)],
        r":1: field 'answer' must be a string or a number, got true \(bool\)",
    ),
    (
        "answers",
        "answer [1, 2]",
        [rec(id="a", problem="x", answer=[1, 2])],
        r":1: field 'answer' .* got \[1, 2\] \(list\)",
    ),
    (
        "answers",
        'answer {"a": 1}',
        [rec(id="a", problem="x", answer={"a": 1})],
        r":1: field 'answer' .* got \{\"a\": 1\} \(dict\)",
    ),
    (
        "answers",
        "answer NaN",
        [OK, rec(id="b", problem="x", answer=float("nan"))],
        r":2: field 'answer' .* got NaN",
    ),
    (
        "answers",
        "answer empty",
        [rec(id="a", problem="x", answer="")],
        r":1: field 'answer' is empty",
    ),
    (
        "answers",
        "answer null",
        [rec(id="a", problem="x", answer=None)],
        r":1: missing field 'answer'",
    ),
]


@pytest.mark.parametrize("kind, name, lines, pattern", FILE_CASES, ids=[c[1] for c in FILE_CASES])
def test_hostile_problem_files(figures, tmp_path, kind, name, lines, pattern):
    path = _file(tmp_path, lines)
    expect_named(figures, kind, name, lambda: load_file(path), ProblemFileError, pattern)


def test_hostile_problem_sources(figures, tmp_path):
    """A missing file, a field mapped to a column the file lacks, parquet rows."""
    missing = tmp_path / "nowhere.jsonl"
    expect_named(
        figures, "problems", "missing file", lambda: load_file(missing), ProblemFileError,
        re.escape(f"{missing}: no such file"),
    )  # fmt: skip
    path = _file(tmp_path, [OK])
    expect_named(
        figures, "problems", "field mapped to no column",
        lambda: load_file(path, {"problem": "question"}), ProblemFileError,
        r"p\.jsonl:1: missing field 'question' \(mapped to 'problem'\)",
    )  # fmt: skip
    dup = _parquet(tmp_path, {"id": ["a", "a"], "problem": ["x", "y"], "answer": ["1", "2"]})
    expect_named(
        figures, "problems", "duplicate id (parquet)", lambda: load_file(dup), ProblemFileError,
        r"p\.parquet row 1: duplicate problem id 'a' \(first at .*p\.parquet row 0\)",
    )  # fmt: skip
    lists = _parquet(tmp_path, {"id": ["a"], "problem": ["x"], "answer": [[1, 2]]})
    expect_named(
        figures, "answers", "answer a list (parquet)", lambda: load_file(lists),
        ProblemFileError, r"p\.parquet row 0: field 'answer' .* \[1, 2\] \(list\)",
    )  # fmt: skip


def test_a_1mb_problem_is_named_at_preparation(figures, tmp_path, tiny_model):
    """A problem far over the engine's context is named (source file, line, id) by the check
    that runs before any sampling job, not by vLLM inside one."""
    rows = [
        {"id": "small", "problem": "What is 2 + 2?", "answer": 4},
        {"id": "huge", "problem": "Add these: " + "1 + " * 250_000 + "1.", "answer": "250001"},
    ]
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "data/set.jsonl"
    settings = {"source": {"path": str(src)}, "fields": {}, "limit": None}
    record = out.with_name("set.source.json")
    prepare.main(["--settings", json.dumps(settings), "--source-record", str(record), str(out)])
    cfg = tiny_config(tiny_model)
    validate(cfg, SCHEMA)
    # the rule's settings (confagg.settings.for_rule), the source this test's file
    settings = for_rule(cfg, "check_problems", dataset=next(iter(cfg["benchmarks"])))
    settings["source"] = {"path": str(src)}
    expect_named(
        figures, "problems", "a 1 MB problem",
        lambda: check_prompts(out, settings, tiny_model, tiny_model, log=lambda _: None),
        ProblemFileError, re.escape(f"{src}:2 (normalised: {out}:2), problem id 'huge'"),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# what a stage finds on disk


def _samples(ids: list[str], n: int) -> pa.Table:
    rows = [(p, i) for p in ids for i in range(n)]
    return pa.table(
        {
            "problem_id": [p for p, _ in rows],
            "sample_idx": pa.array([i for _, i in rows], pa.int32()),
            "text": [f"\\boxed{{{i}}}" for _, i in rows],
            "answer": [str(i) for _, i in rows],
            "num_tokens": pa.array([2] * len(rows), pa.int32()),
            "finish_reason": ["stop"] * len(rows),
            "token_confidence": [np.ones(2, np.float16)] * len(rows),
        }
    ).cast(SAMPLES)


def _sample_settings(n: int = 2) -> SampleSettings:
    return from_mapping(
        SampleSettings,
        {
            "sampling": {"n": n, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                         "max_tokens": 8, "logprobs": 20},
            "problems_in_flight": 2,
            "shards": 1,
            "engine": {},
            "prompt": {"instruction": "x", "system": None, "example": None},
            "chat_template_kwargs": {},
        },
    )  # fmt: skip


def test_hostile_files_on_disk(figures, tmp_path):
    problems = [{"id": f"p{i}", "problem": f"What is {i}?", "answer": str(i)} for i in range(3)]
    order = {p["id"]: i for i, p in enumerate(problems)}
    settings = _sample_settings()
    fp = fingerprint(problems, "model", 1, settings)
    out = tmp_path / "shard0.parquet"

    # a part torn by a full disk or a copy cut short: the file to delete, and nothing else lost
    parts = Parts(out)
    parts.write(_samples(["p0"], 2), 2, fp)
    torn = parts.write(_samples(["p1"], 2), 2, fp)
    torn.write_bytes(torn.read_bytes()[:100])
    expect_named(
        figures, "on disk", "torn part", lambda: Parts(out).scan(order, 2, fp), PartError,
        re.escape(str(torn)) + r".*Delete that one file.*nothing else is lost",
    )  # fmt: skip
    torn.unlink()
    other = fingerprint(problems, "model", 2, settings)  # another seed
    expect_named(
        figures, "on disk", "parts of other settings", lambda: Parts(out).scan(order, 2, other),
        PartError,
        re.escape(f"{parts_dir(out)} holds samples of other settings") + r".*seed: 1 -> 2",
    )  # fmt: skip

    # a complete-looking output that does not read: named, before any engine starts
    shutil.rmtree(parts_dir(out))
    out.write_bytes(b"PAR1 not really")
    expect_named(
        figures, "on disk", "damaged shard output",
        lambda: sample_shard(problems, out, "model", 1, settings, log=lambda _: None),
        RuntimeError, re.escape(f"{out} exists but does not read") + r".*delete it",
    )  # fmt: skip

    # shards read by the later stages
    samples, scores, grades = (tmp_path / f"{n}.parquet" for n in ("sa", "sc", "gr"))
    table = _samples(["p0", "p1"], 2)
    write_table(table, samples, SAMPLES)
    ids = {"problem_id": table.column("problem_id"), "sample_idx": table.column("sample_idx")}
    write_table(pa.table({**ids, **{m: [0.5] * 4 for m in SCORES.names[2:]}}), scores, SCORES)
    write_table(
        pa.table(
            {**ids, "correct": [True] * 4, "status": ["correct"] * 4,
             "answer": table.column("answer"), "answer_group": [0] * 4,
             "unfinished_thinking": [False] * 4}
        ),
        grades,
        GRADES,
    )  # fmt: skip
    load_candidates([samples], [scores], [grades])  # as written: fine
    torn_shard = tmp_path / "torn.parquet"
    torn_shard.write_bytes(samples.read_bytes()[:-200])
    expect_named(
        figures, "on disk", "truncated samples shard",
        lambda: read_table(torn_shard, SAMPLES), ValueError,
        re.escape(f"{torn_shard}: not a readable parquet file"),
    )  # fmt: skip
    expect_named(
        figures, "on disk", "scores of another shard",
        lambda: load_candidates([samples], [grades], [scores]), ValueError,
        re.escape(f"{grades}: not a scores table"),
    )  # fmt: skip
    write_table(
        pa.table({"problem_id": ["p0"], "sample_idx": [0], **{m: [0.5] for m in SCORES.names[2:]}}),
        scores,
        SCORES,
    )
    expect_named(
        figures, "on disk", "scores missing rows",
        lambda: load_candidates([samples], [scores], [grades]), ValueError,
        re.escape(f"{scores}: its rows do not match the samples of {samples}"),
    )  # fmt: skip

    # settings a rule did not write (a stage run by hand with an old command line)
    text = json.dumps(dict(dataclasses.asdict(settings), problems_in_flgiht=3))
    expect_named(
        figures, "on disk", "unknown settings key",
        lambda: load(SampleSettings, text), SettingsError, r"unknown keys \['problems_in_flgiht'\]",
    )  # fmt: skip
    write_problems(problems, tmp_path / "ok.jsonl")  # (the problem set itself is fine)
