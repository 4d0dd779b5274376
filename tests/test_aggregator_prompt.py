"""The aggregator prompt: confidences shown or not, chat template, token budget."""

from __future__ import annotations

import re

import pytest
import yaml

from confagg.aggregator_prompt import (
    DEFAULT_INSTRUCTION,
    MARKER,
    PromptTooLong,
    aggregator_messages,
    confidence_scores,
    count_tokens,
    render_prompt,
)
from conftest import REPO

PROBLEM = "What is 12 + 30?"


def _cfg(enabled=True, scale="rank", metric="tail", decimals=0, budget=None, **extra):
    return {
        "system": None,
        "instruction": DEFAULT_INSTRUCTION,
        "confidence": {"enabled": enabled, "metric": metric, "scale": scale, "decimals": decimals},
        "max_prompt_tokens": budget,
        "think_end": "</think>",
        **extra,
    }


def _cand(text, tail=None, **metrics):
    return {
        "sample_idx": 0,
        "text": text,
        "answer": None,
        "correct": False,
        "tail": tail,
        **metrics,
    }


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def _user(messages):
    assert messages[-1]["role"] == "user"
    return messages[-1]["content"]


def test_confidences_shown_as_rank_in_each_header():
    cands = [_cand("A \\boxed{42}", 3.0), _cand("B \\boxed{41}", 9.5), _cand("C \\boxed{42}", 5.0)]
    text = _user(aggregator_messages(PROBLEM, cands, _cfg()))
    headers = re.findall(r"^Solution (\d) \(confidence: (\S+)\):$", text, re.M)
    assert headers == [("1", "0/100"), ("2", "100/100"), ("3", "50/100")]
    # order: problem, candidates in their order, note naming the metric, instruction last
    assert text.startswith(f"Problem:\n{PROBLEM}\n\nCandidate solutions:")
    assert text.index("A \\boxed{42}") < text.index("B \\boxed") < text.index("C \\boxed")
    assert "tail token confidence" in text
    assert text.endswith(DEFAULT_INSTRUCTION)


def test_raw_scale_with_decimals_and_other_metric():
    cands = [_cand("x", 1.0, mean=1.23456), _cand("y", 2.0, mean=0.5)]
    text = _user(aggregator_messages(PROBLEM, cands, _cfg(scale="raw", metric="mean", decimals=2)))
    assert "Solution 1 (confidence: 1.23):" in text
    assert "Solution 2 (confidence: 0.50):" in text
    assert "mean token confidence" in text


def test_confidences_off_reproduces_plain_agglm():
    cands = [_cand("first \\boxed{1}", 3.0), _cand("second \\boxed{2}", 1.0)]
    text = _user(aggregator_messages(PROBLEM, cands, _cfg(enabled=False)))
    assert "confidence" not in text.lower()
    assert "Solution 1:\nfirst \\boxed{1}" in text
    assert "Solution 2:\nsecond \\boxed{2}" in text
    assert text.endswith(DEFAULT_INSTRUCTION)


def test_scales_ties_and_missing_values():
    assert confidence_scores([1.0, 2.0, 2.0, 3.0], "rank") == [0.0, 50.0, 50.0, 100.0]
    assert confidence_scores([None, 4.0, float("nan"), 2.0], "rank") == [None, 100.0, None, 0.0]
    assert confidence_scores([7.0], "rank") == [100.0]
    assert confidence_scores([1.0, 3.0, 2.0], "minmax") == [0.0, 100.0, 50.0]
    assert confidence_scores([2.0, 2.0], "minmax") == [100.0, 100.0]
    assert confidence_scores([0.25, None], "raw") == [0.25, None]
    text = _user(aggregator_messages(PROBLEM, [_cand("a", None), _cand("b", 1.0)], _cfg()))
    assert "Solution 1 (confidence: n/a):" in text
    with pytest.raises(ValueError, match="unknown confidence scale"):
        confidence_scores([1.0], "percent")


def test_candidates_cut_after_think_and_system_message():
    cands = [_cand("<think>long private reasoning</think>\nShown part \\boxed{3}", 1.0)]
    messages = aggregator_messages(PROBLEM, cands, _cfg(system="Be careful."))
    assert messages[0] == {"role": "system", "content": "Be careful."}
    assert "private reasoning" not in _user(messages)
    assert "Solution 1 (confidence: 100/100):\nShown part \\boxed{3}" in _user(messages)


def test_schema_default_instruction_is_the_builtin_one():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    prompt = schema["properties"]["aggregator"]["properties"]["prompt"]["properties"]
    assert prompt["instruction"]["default"] == DEFAULT_INSTRUCTION


def test_chat_template_applied(tokenizer):
    cands = [_cand("A \\boxed{42}", 1.0), _cand("B \\boxed{40}", 2.0)]
    cfg = _cfg(system="Sys.")
    rendered = render_prompt(tokenizer, PROBLEM, cands, cfg)
    expected = tokenizer.apply_chat_template(
        aggregator_messages(PROBLEM, cands, cfg), tokenize=False, add_generation_prompt=True
    )
    assert rendered.text == expected
    assert rendered.text.startswith("<|im_start|>system\nSys.<|im_end|>\n<|im_start|>user\n")
    assert rendered.text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert rendered.num_tokens == len(tokenizer(rendered.text)["input_ids"])
    assert not rendered.truncated


def _words(n, tag):
    return " ".join(f"{tag}{i}" for i in range(n))


def test_truncation_cuts_longest_candidates_in_the_middle(tokenizer):
    short = f"short start {_words(5, 's')} \\boxed{{7}}"
    medium = f"medium start {_words(150, 'm')} \\boxed{{8}}"
    long = f"long start {_words(400, 'l')} \\boxed{{9}}"
    cands = [_cand(short, 1.0), _cand(long, 3.0), _cand(medium, 2.0)]
    full = render_prompt(tokenizer, PROBLEM, cands, _cfg())
    budget = full.num_tokens - 500
    rendered = render_prompt(tokenizer, PROBLEM, cands, _cfg(budget=budget))

    assert rendered.num_tokens <= budget
    assert rendered.num_tokens == count_tokens(tokenizer, rendered.text)
    assert rendered.truncated
    cut_short, cut_long, cut_medium = rendered.cut_tokens
    assert cut_short == 0 and cut_long > cut_medium  # the longest loses the most
    assert cut_long + cut_medium >= 500
    text = rendered.text
    # never cut: problem, every confidence header, the note, the instruction
    assert PROBLEM in text and DEFAULT_INSTRUCTION in text
    for header in ("Solution 1 (confidence: 0/100):", "Solution 2 (confidence: 100/100):"):
        assert header in text
    assert "Solution 3 (confidence: 50/100):" in text and "tail token confidence" in text
    assert short in text  # the short candidate is whole
    # a cut candidate keeps its start and its end (the final answer) around the marker
    body = text[text.index("Solution 2 (confidence") :]
    body = body[: body.index("Solution 3")]
    assert "long start l0" in body and "\\boxed{9}" in body
    assert MARKER.format(n=cut_long).strip() in body
    assert "l200 " not in body  # the middle is gone


def test_truncation_never_cuts_problem_or_scores_and_raises(tokenizer):
    cands = [_cand(_words(100, "w"), 1.0), _cand(_words(100, "v"), 2.0)]
    fixed = render_prompt(tokenizer, PROBLEM, [{**c, "text": ""} for c in cands], _cfg())
    with pytest.raises(PromptTooLong, match="max_prompt_tokens"):
        render_prompt(tokenizer, PROBLEM, cands, _cfg(budget=fixed.num_tokens - 5))
    # above the fixed part (and two cut markers), the candidate texts give way, the rest stays
    budget = fixed.num_tokens + 2 * count_tokens(tokenizer, MARKER.format(n=100)) + 20
    rendered = render_prompt(tokenizer, PROBLEM, cands, _cfg(budget=budget))
    assert rendered.num_tokens <= budget and all(rendered.cut_tokens)
    assert PROBLEM in rendered.text and "confidence: 100/100" in rendered.text


def test_no_budget_means_no_cut(tokenizer):
    cands = [_cand(_words(300, "w"), 1.0)]
    rendered = render_prompt(tokenizer, PROBLEM, cands, _cfg(budget=None))
    assert not rendered.truncated and _words(300, "w") in rendered.text
