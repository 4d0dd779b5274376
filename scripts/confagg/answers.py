"""Final-answer extraction from a model's solution text.

An answer is read from the part of the text after the last end-of-thinking marker
(``grading.think_end``, ``</think>`` for Qwen3 and DeepSeek-R1; the whole text when there is
none), in one of two ways (``grading.extraction``, :class:`Reading`):

- ``boxed`` (:func:`extract_boxed`): the content of the *last* ``\\boxed{...}`` (or
  ``\\fbox{...}``). Braces nest: ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. A box that
  never closes (a truncated sample) gives no answer. Plain string scanning only.
- ``math_verify``: math-verify's own extraction, as lighteval and open-r1 read answers
  (``confagg.verify.PREDICTION_EXTRACTION``: boxed first, then "final answer is", "answer:",
  LaTeX environments and plain expressions). It runs only in the verifier's worker processes,
  under a CPU-time bound (``confagg.verifier.read_and_verify``), never here.

With ``require_think_end`` (thinking mode) a text that never closes its thinking has no answer
in either way. Model output is never evaluated as code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
# The end-of-thinking marker of Qwen3 and DeepSeek-R1 (the schema's default of grading.think_end);
# the sample stage's own first reading (tables.SAMPLES.answer) uses it, every later stage the
# configured marker.
THINK_END = "</think>"
EXTRACTIONS = ("boxed", "math_verify")
_LATEX_SPACING = re.compile(r"\\(?:left|right|displaystyle|[,;:! ])|\s+")


def latex_skeleton(text: str) -> str:
    """``text`` without whitespace and LaTeX's spacing and sizing commands (``\\,``, ``\\!``,
    ``\\left``, ``\\right``, ``\\displaystyle``), ``\\dfrac`` and ``\\tfrac`` read as
    ``\\frac``: the one LaTeX normaliser behind answer grouping and problem matching."""
    return _LATEX_SPACING.sub("", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def after_think(text: str, think_end: str) -> str:
    """The part of ``text`` after the last ``think_end`` (all of it when there is none)."""
    cut = text.rfind(think_end)
    return text if cut < 0 else text[cut + len(think_end) :]


def brace_group(text: str, start: int) -> str | None:
    """Content of the brace group whose ``{`` is at ``start - 1``; None when it never closes."""
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # an escaped brace (\{ or \}) does not open or close a group
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def extract_boxed(text: str, think_end: str) -> str | None:
    """The stripped content of the last complete ``\\boxed{}`` after ``think_end``, else None."""
    body = after_think(text, think_end)
    for match in reversed(list(_BOX.finditer(body))):
        content = brace_group(body, match.end())
        if content is not None:
            content = content.strip()
            return content or None
    return None


@dataclass(frozen=True)
class Reading:
    """How a text's final answer is read: the config's ``grading.extraction`` and
    ``grading.think_end``, and ``require_think_end`` resolved for the text's role
    (``confagg.settings.reading``). Grading, the aggregators' outputs and the GRPO reward read
    answers by it alike."""

    extraction: str  # one of EXTRACTIONS
    think_end: str  # the end-of-thinking marker
    require_think_end: bool  # a text without think_end has no answer

    def __post_init__(self) -> None:
        if self.extraction not in EXTRACTIONS:
            raise ValueError(f"extraction {self.extraction!r}: expected one of {EXTRACTIONS}")
        if not self.think_end:
            raise ValueError("think_end: the end-of-thinking marker must not be empty")

    def closed(self, text: str) -> bool:
        """Whether ``text`` closes its thinking (holds the marker)."""
        return self.think_end in text

    def answer_part(self, text: str) -> str | None:
        """The part of ``text`` its answer is read from: after the last marker; None (no
        answer) when thinking must end and never does."""
        if self.require_think_end and not self.closed(text):
            return None
        return after_think(text, self.think_end)


def final_answer(text: str, reading: Reading) -> str | None:
    """The ``boxed`` reading of ``text``: :func:`extract_boxed`, except that with
    ``require_think_end`` (thinking mode) a text that never closes its thinking has no answer
    (a box written while still thinking is no answer). ``math_verify`` answers come from
    ``confagg.verifier.read_and_verify``, in its worker processes."""
    if reading.extraction != "boxed":
        raise ValueError(f"final_answer reads boxed answers, not {reading.extraction!r}")
    part = reading.answer_part(text)
    return None if part is None else extract_boxed(part, reading.think_end)
