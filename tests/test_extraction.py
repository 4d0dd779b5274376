"""Answer extraction (``grading.extraction``) and the end-of-thinking marker
(``grading.think_end``): with ``math_verify``, scores equal math-verify's own parse-and-verify
loop (as lighteval reads answers); the choice and the marker reach grading, the aggregators'
outputs and the GRPO reward through ``confagg.settings.for_rule``; ``check_problems`` checks
the marker against each model's chat template."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest
import yaml

from confagg import aggregate, check, grade, train
from confagg.answers import Reading
from confagg.config import validate
from confagg.methods import pass_at_1
from confagg.problems import write_problems
from confagg.settings import POOL, for_rule, from_mapping, to_json
from confagg.tables import GRADES, SAMPLES, read_table, write_table
from confagg.verifier import read_and_verify
from conftest import REPO

# (gold, generation): final answers in the forms lighteval's extraction reads, and traps
GENERATIONS = [
    ("25", "<think>maybe \\boxed{24}</think>The final answer is $25$."),
    ("25", "So \\boxed{25}."),
    ("25", "The answer is 25"),
    ("25", "the answer is 24, not \\boxed{25}"),
    ("\\frac{1}{2}", "Therefore the answer is $\\frac{1}{2}$"),
    ("\\frac{1}{2}", "The answer: 0.5"),
    ("\\frac{1}{2}", "I am not sure"),
    ("\\frac{1}{2}", "<think>it is \\boxed{1/2}"),  # thinking never ended
    ("3\\sqrt{2}", "hence \\(3\\sqrt{2}\\)"),
    ("3\\sqrt{2}", "so it equals $$\\sqrt{18}$$"),
    ("3\\sqrt{2}", "maybe 7 or 8"),
    ("3\\sqrt{2}", "\\boxed{4} and later \\boxed{3\\sqrt{2}}"),
    ("10\\%", "answer is $10\\%$"),
    ("10\\%", "The area is $\\pi$ square units."),
    ("10\\%", "Thus, $a = 10$."),
    ("10\\%", "**Answer:** 10\\%"),
]
PER_PROBLEM = 4  # consecutive generations share a problem


def _config(**grading) -> dict:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["grading"].update(grading)
    validate(config, REPO / "workflow/schemas/config.schema.yaml")
    return config


def _math_verify_loop(golds: list[str], texts: list[str]) -> list[bool]:
    """math-verify's own parse-and-verify loop, as lighteval's math metrics run it: the gold
    answer in a box, the generation (after its thinking) with boxed-first extraction."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    targets = (ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0))
    return [
        bool(verify(parse("\\boxed{" + g + "}"), parse(t.split("</think>")[-1], targets)))
        for g, t in zip(golds, texts, strict=True)
    ]


def _shard(tmp_path):
    n = len(GENERATIONS)
    ids = [f"p{i // PER_PROBLEM}" for i in range(n)]
    table = pa.table(
        {
            "problem_id": ids,
            "sample_idx": [i % PER_PROBLEM for i in range(n)],
            "text": [t for _, t in GENERATIONS],
            "answer": [None] * n,  # the sampler's reading: the grader reads again
            "num_tokens": [8] * n,
            "finish_reason": ["stop"] * n,
            "token_confidence": pa.array([np.ones(8, np.float16)] * n, pa.list_(pa.float16())),
        },
        schema=SAMPLES,
    )
    write_table(table, tmp_path / "samples.parquet", SAMPLES)
    problems = [
        {"id": f"p{j}", "problem": "?", "answer": GENERATIONS[j * PER_PROBLEM][0]}
        for j in range(n // PER_PROBLEM)
    ]
    write_problems(problems, tmp_path / "problems.jsonl")
    return tmp_path / "samples.parquet", tmp_path / "problems.jsonl"


def _grade(tmp_path, config, name: str) -> dict:
    samples, problems = _shard(tmp_path)
    out = tmp_path / f"{name}.parquet"
    settings = to_json(for_rule(config, "grade_shard", dataset=POOL))
    grade.main(["--problems", str(problems), "--settings", settings, str(samples), str(out)])
    return read_table(out, GRADES).to_pydict()


def test_math_verify_pass_at_1_equals_math_verifys_own_loop(tmp_path):
    golds, texts = [g for g, _ in GENERATIONS], [t for _, t in GENERATIONS]
    expected = _math_verify_loop(golds, texts)
    config = _config(extraction="math_verify", require_think_end=False)
    grades = _grade(tmp_path, config, "math_verify")
    assert grades["correct"] == expected
    assert pass_at_1(grades["correct"]) == pass_at_1(expected) == 12 / 16
    # the answers math-verify read, grouped within each problem (abstaining where none)
    assert grades["answer"][:3] == ["25", "25", "25"]
    assert grades["answer"][6] is None and grades["status"][6] == "no_answer"
    assert grades["answer_group"][:4] == [0, 0, 0, 0]
    # the same generations read as boxed answers: another, lower, score
    boxed = _grade(tmp_path, _config(extraction="boxed", require_think_end=False), "boxed")
    assert boxed["answer"][:4] == [None, "25", None, "25"]
    assert pass_at_1(boxed["correct"]) == 4 / 16


def test_extraction_and_marker_reach_the_aggregators_outputs_and_the_reward():
    config = _config(extraction="math_verify", think_end="<|/reason|>", require_think_end=True)
    agg = from_mapping(
        aggregate.Settings,
        for_rule(config, "aggregate_sets", benchmark="aime24", seed="0", shard="0"),
    )
    tr = from_mapping(train.Settings, for_rule(config, "train_aggregator", variant="confidence"))
    texts = [
        "<reason>\\boxed{41}<|/reason|>The final answer is $42$.",  # read after the marker
        "<reason>the answer is 42",  # never ends its thinking: no answer
        "<reason>ok<|/reason|>**Answer:** 41",
    ]
    rows = {"problem_id": ["p"] * 3, "text": texts}
    aggregate.grade_outputs(rows, {"p": {"answer": "42"}}, agg, processes=1)
    assert rows["answer"] == ["42", None, "41"]
    assert rows["correct"] == [True, False, False]
    assert rows["status"] == ["correct", "no_answer", "incorrect"]
    assert train.reward(tr.reading, tr.verify_timeout)(texts, ["42"] * 3) == [1.0, 0.0, 0.0]
    # boxed: the first text's last box after the marker is none, so no answer there
    config = _config(extraction="boxed", think_end="<|/reason|>", require_think_end=True)
    tr = from_mapping(train.Settings, for_rule(config, "train_aggregator", variant="confidence"))
    assert train.reward(tr.reading, tr.verify_timeout)(texts, ["42"] * 3) == [0.0, 0.0, 0.0]


def test_grading_cuts_at_the_configured_marker(tmp_path):
    config = _config(think_end="<|end_of_thought|>", require_think_end=True)
    texts = ["\\boxed{3}<|end_of_thought|>so \\boxed{5}", "\\boxed{5}</think>\\boxed{5}"]
    reading = from_mapping(grade.Settings, for_rule(config, "grade_shard", dataset=POOL)).reading
    answers, verdicts = read_and_verify(["5", "5"], texts, reading)
    assert answers == ["5", None]  # </think> is not this model's marker: thinking never ended
    assert [v.status for v in verdicts] == ["correct", "no_answer"]


def test_reading_names_a_bad_choice():
    with pytest.raises(ValueError, match="extraction 'last_number'"):
        Reading("last_number", "</think>", False)
    with pytest.raises(ValueError, match="think_end"):
        Reading("boxed", "", False)


# --------------------------------------------------------------------------------------------
# check_problems: the marker against each model's chat template

TURNS = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
)
# plain ChatML (the tiny model's own, SmolLM2's): no thinking
CHATML = TURNS + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
# Qwen3: a thinking switch, and an empty thinking block when it is off
QWEN3_LIKE = TURNS + (
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}"
)
# a DeepSeek-R1 distill: always thinks, no switch; earlier turns keep only what follows </think>
R1_LIKE = (
    "{% for message in messages %}{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' %}{% set content = content.split('</think>')[-1] %}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}"
    "{% endif %}"
)


@pytest.fixture(scope="module")
def templated(tiny_model, tmp_path_factory):
    """The tiny model's tokenizer saved with each chat template (name -> folder)."""
    from transformers import AutoTokenizer

    out = {}
    for name, template in (("chatml", CHATML), ("qwen3", QWEN3_LIKE), ("r1", R1_LIKE)):
        tok = AutoTokenizer.from_pretrained(tiny_model)
        tok.chat_template = template
        out[name] = tmp_path_factory.mktemp(name)
        tok.save_pretrained(out[name])
    return out


def _check(tmp_path, generator, agg_model=None, think_end="</think>", auto=True, **roles):
    from test_problems import _check_settings

    write_problems([{"id": "a", "problem": "What is 1 + 1?", "answer": "2"}], tmp_path / "p.jsonl")
    settings = _check_settings({"path": str(tmp_path / "p.jsonl")}, budget=None)
    settings.update(think_end=think_end, think_end_auto=auto)
    settings["aggregator"]["prompt"]["think_end"] = think_end
    for role in ("solver", "aggregator"):
        settings[role].update(roles.get(role, {}))
    logged: list[str] = []
    record = check.check_prompts(
        tmp_path / "p.jsonl", settings, generator, agg_model or generator, log=logged.append
    )
    return record, logged


def test_thinking_mode_without_the_marker_in_the_template_stops_naming_the_keys(
    tmp_path, templated
):
    thinking = {"chat_template_kwargs": {"enable_thinking": True}, "require_think_end": True}
    with pytest.raises(check.ThinkingError, match=r"generator: grading.think_end '</think>'"):
        _check(tmp_path, templated["chatml"], solver=thinking)
    # the aggregator is checked with its own template and switches
    required = {"require_think_end": True}
    with pytest.raises(check.ThinkingError, match=r"aggregator: .*grading.require_think_end"):
        _check(tmp_path, templated["qwen3"], templated["chatml"], aggregator=required)
    # a marker the template does not hold
    with pytest.raises(check.ThinkingError, match=re.escape("'<|end_of_thought|>'")):
        _check(tmp_path, templated["qwen3"], think_end="<|end_of_thought|>", solver=thinking)


def test_thinking_templates_pass_and_a_template_without_a_switch_is_warned_about(
    tmp_path, templated
):
    thinking = {"chat_template_kwargs": {"enable_thinking": True}, "require_think_end": True}
    record, logged = _check(tmp_path, templated["qwen3"], solver=thinking)
    assert record["solver"]["warnings"] == record["aggregator"]["warnings"] == []
    assert not any("warning" in line for line in logged)
    # a non-thinking model with nothing set: nothing to say
    record, _ = _check(tmp_path, templated["chatml"])
    assert record["solver"]["warnings"] == []
    # an R1 distill with require_think_end null: it thinks, but nothing turns the rule on
    record, logged = _check(tmp_path, templated["r1"])
    (warning,) = record["solver"]["warnings"]
    assert "no enable_thinking switch" in warning and "grading.require_think_end: true" in warning
    assert any(line.startswith("warning: generator:") for line in logged)
    # set explicitly: no warning
    record, _ = _check(tmp_path, templated["r1"], auto=False, solver={"require_think_end": True})
    assert record["solver"]["warnings"] == []


def test_the_check_stage_records_its_warnings(tmp_path, templated):
    from test_problems import _check_settings

    write_problems([{"id": "a", "problem": "1 + 1?", "answer": "2"}], tmp_path / "p.jsonl")
    settings = _check_settings({"path": str(tmp_path / "p.jsonl")}, budget=None)
    out = tmp_path / "check.json"
    check.main(
        ["--problems", str(tmp_path / "p.jsonl"), "--generator", str(templated["r1"]),
         "--aggregator", str(templated["r1"]), "--settings", json.dumps(settings), str(out)]
    )  # fmt: skip
    assert "no enable_thinking switch" in json.loads(out.read_text())["solver"]["warnings"][0]
