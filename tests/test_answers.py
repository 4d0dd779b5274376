import pytest

from confagg.answers import after_think, extract_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{\\sqrt{\\frac{a}{b^{2}}}} done", "\\sqrt{\\frac{a}{b^{2}}}"),  # deeper nesting
        ("first \\boxed{1} then \\boxed{2}", "2"),  # the last box wins
        ("no box here, just 17", None),
        ("", None),
        ("\\boxed{ 7 }", "7"),  # stripped
        ("\\boxed{}", None),  # empty box: no answer
        ("\\fbox{5}", "5"),
        ("\\boxed {x+1}", "x+1"),  # space before the brace
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
        ("ok \\boxed{3} then truncated \\boxed{\\frac{1}{", "3"),  # unclosed last box
        # </think>: only the part after the last one counts
        ("<think>maybe \\boxed{5}</think>The answer is \\boxed{6}", "6"),
        ("<think>maybe \\boxed{5}</think>I am not sure.", None),
        ("<think>a</think><think>\\boxed{1}</think>\\boxed{2}", "2"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text, "</think>") == expected


def test_after_think():
    assert after_think("a</think>b", "</think>") == "b"
    assert after_think("no think", "</think>") == "no think"
    assert after_think("x</think>y</think>z", "</think>") == "z"
    # another model's marker
    assert after_think("a<|end_of_thought|>b\\boxed{1}", "<|end_of_thought|>") == "b\\boxed{1}"


def test_long_hostile_text_is_linear():
    # many unclosed boxes must not blow up (each scan is bounded by the text length)
    text = "\\boxed{" * 2000 + "1"
    assert extract_boxed(text, "</think>") is None
