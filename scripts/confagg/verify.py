"""Is a model's answer right? The rules of the one verifier used by grading, curation, the GRPO
reward and evaluation (``confagg.verifier`` runs them with a time bound, in worker processes).

A verdict is math-verify's ``verify(parse(gold), parse(pred))`` with both answers wrapped in
``\\boxed{}`` (``pred`` is an extracted final answer such as ``confagg.answers.extract_boxed``
gives, not a whole solution): :func:`check`, which may take unbounded time. Before it, the
**fast path** (:func:`fast_verdict`), for what needs no algebra and gives math-verify's verdict:
no answer; an integer gold answer against an integer written plainly or in a common variant
(``025``, ``25.0``, ``\\text{25}``, ``x = 25``, ``25^\\circ``, ``1{,}000``) or a fraction of
integers (``\\frac{50}{2}``), compared exactly as math-verify does; identical answers made of
ordinary math text (balanced braces, no ``$``, more than commands); an integer gold answer
against a closed form ``q * sqrt(r) * pi`` (``3\\sqrt{6}``, ``\\frac{5\\pi}{4}``), right exactly
when its value is that integer. tests/test_verify.py checks each rule against math-verify
itself.

A timed-out check is ``status="timeout"`` (``status_counts`` counts them), a crashed one
``"unparseable"``: both count as incorrect.

Never evaluates text as code: math-verify parses LaTeX with a grammar (latex2sympy2), and hands
sympy's ``parse_expr`` only what its plain-expression pattern admits (digits, ``.``, spaces,
``+-*/^()``, times and division signs), which names nothing that could run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

from confagg.answers import brace_group

STATUSES = ("correct", "incorrect", "no_answer", "timeout", "unparseable")


class Verdict(NamedTuple):
    """Whether a prediction matches the gold answer, and why (one of ``STATUSES``)."""

    correct: bool
    status: str


CORRECT = Verdict(True, "correct")
INCORRECT = Verdict(False, "incorrect")
NO_ANSWER = Verdict(False, "no_answer")
TIMEOUT = Verdict(False, "timeout")
UNPARSEABLE = Verdict(False, "unparseable")


# ---------------------------------------------------------------------------- fast path


_INT = re.compile(r"-?\d{1,50}")
# Ways of writing an integer that math-verify reads as that integer (each checked against it in
# tests/test_verify.py): 025, 25.0, \text{25}, x = 25, 25^\circ, 1,000.
_INT_LIKE = re.compile(
    r"(?P<plain>[+-]?\d{1,50})"
    r"|(?P<zero_fraction>[+-]?\d{1,12})\.0{1,6}"
    r"|\\(?:text|textbf|mathbf|mathrm)\{\s*(?P<wrapped>-?\d{1,50})\s*\}"
    r"|[A-Za-z]\s*=\s*(?P<assigned>-?\d{1,50})"
    r"|(?P<degrees>-?\d{1,50})\^(?:\\circ|\{\\circ\})"
    r"|(?P<thousands>[1-9]\d{0,2}(?:(?:,|\{,\})\d{3}){1,10})"
)
# A fraction of integers (\frac{7}{3}, -\dfrac{50}{2}, 7/3), which math-verify compares exactly.
_FRACTION = re.compile(
    r"(?P<sign>-?)(?:\\[dt]?frac\{(?P<a>-?\d{1,20})\}\{(?P<b>\d{1,20})\}"
    r"|(?P<c>\d{1,20})/(?P<d>\d{1,20}))"
)
# A closed form with an exact value, q * sqrt(r) * pi^e: 3\sqrt{6}, \pi, \frac{5\pi}{4},
# -\dfrac{\sqrt{3}}{2}. Against an integer gold answer it is right exactly when its value is
# that integer: math-verify compares such expressions symbolically (no float tolerance).
_CLOSED_FRAC = re.compile(r"\\[dt]?frac\{(?P<num>.{1,60})\}\{(?P<den>[1-9]\d{0,11})\}")
_CLOSED_TERM = re.compile(r"(?P<n>[1-9]\d{0,11}|0)?(?:\\sqrt\{(?P<r>\d{1,12})\})?(?P<pi>\\pi)?")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_SELF_EVIDENT_MAX = 200  # longer identical strings go to math-verify (which may time out)


def normalise(answer: str) -> str:
    """The form answers are deduplicated and cached under (verdict-preserving: strip only)."""
    return answer.strip()


def _balanced(text: str) -> bool:
    """Braces pair up (escaped ``\\{``/``\\}`` aside) and never close before opening."""
    return brace_group("{" + text + "}", 1) == text


def _self_evident(answer: str) -> bool:
    """Whether math-verify is sure to accept ``answer`` against itself.

    It rejects identical answers it cannot read at all: unbalanced braces, ``$`` (which ends
    its LaTeX match), nested boxes, or nothing but commands and punctuation (``\\text{}``).
    """
    if len(answer) > _SELF_EVIDENT_MAX or "$" in answer or "box" in answer:
        return False
    if not any(ch.isalnum() for ch in _COMMAND.sub("", answer)):
        return False
    return _balanced(answer)


def _value(answer: str) -> Fraction | None:
    """The number an integer-like answer or a fraction of integers stands for, else None."""
    match = _INT_LIKE.fullmatch(answer)
    if match is not None:
        digits = next(v for v in match.groupdict().values() if v is not None)
        return Fraction(int(digits.replace("{,}", "").replace(",", "")))
    match = _FRACTION.fullmatch(answer)
    if match is not None:
        num, den = int(match["a"] or match["c"]), int(match["b"] or match["d"])
        if den:
            return Fraction(-num if match["sign"] else num, den)
    return None


def _closed_form(answer: str) -> tuple[Fraction, bool] | None:
    """(q, irrational) of an answer worth q * sqrt(r) * pi^e (e in 0, 1): q the rational
    coefficient once a square radicand is taken out; irrational when sqrt(r) or pi remains
    (pi is transcendental, sqrt of a non-square irrational). None for any other text."""
    negative = answer.startswith("-")
    body = answer[1:] if negative else answer
    fraction = _CLOSED_FRAC.fullmatch(body)
    num, den = (fraction["num"], int(fraction["den"])) if fraction else (body, 1)
    term = _CLOSED_TERM.fullmatch(num)
    if term is None or not (term["n"] or term["r"] or term["pi"]):
        return None
    q = Fraction(int(term["n"] or 1), den) * (-1 if negative else 1)
    irrational = bool(term["pi"])
    if term["r"] is not None:
        r = int(term["r"])
        root = math.isqrt(r)
        if root * root == r:
            q *= root
        else:
            irrational = True
    return q, irrational and q != 0


def fast_verdict(gold: str, pred: str | None) -> Verdict | None:
    """math-verify's verdict when it is evident without algebra, else None."""
    if pred is None:
        return NO_ANSWER
    g, p = normalise(gold), normalise(pred)
    if not p:
        return NO_ANSWER
    if _INT.fullmatch(g):
        if (value := _value(p)) is not None:
            return CORRECT if int(g) == value else INCORRECT
        if (form := _closed_form(p)) is not None:
            q, irrational = form
            return CORRECT if not irrational and q == int(g) else INCORRECT
    if g == p and _self_evident(p):
        return CORRECT
    return None


def _boxed(answer: str) -> str:
    return "\\boxed{" + answer + "}"


def _parsed_gold(gold: str, parsed_golds: dict | None) -> list:
    """math-verify's parse of ``\\boxed{gold}`` (the gold answer as every check reads it),
    cached in ``parsed_golds`` (per worker) where given."""
    from math_verify import parse

    if parsed_golds is not None and gold in parsed_golds:
        return parsed_golds[gold]
    g = parse(_boxed(gold), parsing_timeout=None)
    if parsed_golds is not None:
        if len(parsed_golds) >= 4096:
            parsed_golds.clear()
        parsed_golds[gold] = g
    return g


def _verdict(g: list, p: list) -> Verdict:
    """math-verify's ``verify(g, p)`` as a verdict: a prediction of nothing but math-verify's
    string fallback that does not match is ``unparseable``."""
    from math_verify import verify
    from sympy import Basic, MatrixBase

    if verify(g, p, timeout_seconds=None):
        return CORRECT
    if not any(isinstance(x, Basic | MatrixBase) for x in p):
        return UNPARSEABLE  # only math-verify's string fallback, or nothing
    return INCORRECT


def check(gold: str, pred: str, parsed_golds: dict | None = None) -> Verdict:
    """One math-verify check, without a time bound (runs inside a worker process)."""
    from math_verify import parse

    try:
        g = _parsed_gold(gold, parsed_golds)
        return _verdict(g, parse(_boxed(pred), parsing_timeout=None))
    except (Exception, RecursionError, MemoryError):
        return UNPARSEABLE


def prediction_extraction() -> tuple:
    """math-verify's extraction targets for a whole model answer, as lighteval's math metrics
    (``latex_gold_metric``, ``expr_gold_metric``) and open-r1 read one: LaTeX with
    ``\\boxed{}`` matched first (``boxed_match_priority=0``), then the other final-answer forms
    ("final answer is", "answer:", ``$...$`` and other environments), and plain expressions."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return (ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0))


def check_text(gold: str, text: str, parsed_golds: dict | None = None, found=None) -> Verdict:
    """math-verify's own reading of a model answer: ``verify(parse(\\boxed{gold}),
    parse(text, prediction_extraction()))``, without a time bound (runs inside a worker
    process). ``found(answer)`` is told the extracted answer's text (math-verify's string of
    its match) as soon as it is known, so that a check that then runs out of time keeps it.
    No answer found: ``no_answer``."""
    from math_verify import parse

    try:
        p = parse(text, prediction_extraction(), parsing_timeout=None)
        answer = next((x for x in reversed(p) if isinstance(x, str)), None)
        if not p or answer is None or not answer.strip():
            return NO_ANSWER
        if found is not None:
            found(answer.strip())
        return _verdict(_parsed_gold(gold, parsed_golds), p)
    except (Exception, RecursionError, MemoryError):
        return UNPARSEABLE


def status_counts(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """How many verdicts have each status, every status named (``timeout``: 0 included)."""
    counts = dict.fromkeys(STATUSES, 0)
    for verdict in verdicts:
        counts[verdict.status] += 1
    return counts
