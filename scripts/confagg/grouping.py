"""Answer grouping: which extracted answers of one problem count as the same answer.

Every vote (maj@k, weighted, filtered, best-of-k), and curation's majority of a set, groups
answers here and nowhere else. An answer that normalises to nothing abstains (no key).

Keys: the grader's verdict makes every correct answer one group ("gold": the verifier already
decided they all equal the gold answer, however written); wrong answers group by
:func:`normalise_answer`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

GOLD = "gold"

_LATEX_NOISE = re.compile(r"\\left|\\right|\\[,;:! ]|\\displaystyle|\s+")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\{([^{}]*)\}")
_INTEGER = re.compile(r"[+-]?\d+(?:\.0*)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+")


def normalise_answer(answer: str | None) -> str | None:
    """A light canonical string of an answer.

    Drops surrounding ``$``, spacing commands, ``\\left``/``\\right`` and whitespace, a trailing
    period, and ``\\text{}``-like wrappers; ``\\dfrac``/``\\tfrac`` become ``\\frac``; integers lose
    leading zeros, thousands separators and a ``.0`` (AIME's ``025`` is ``25``). ``None`` or an
    answer that is empty after this gives ``None``. Not a verifier: ``1/2`` and ``\\frac{1}{2}``
    stay different.
    """
    if answer is None or (isinstance(answer, float) and np.isnan(answer)):
        return None
    s = str(answer).strip().rstrip(".").strip().strip("$")
    s = _TEXT_WRAP.sub(r"\1", s)
    s = _LATEX_NOISE.sub("", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.rstrip(".")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if _INTEGER.fullmatch(s):
        s = str(int(s.split(".")[0]))
    return s or None


def answer_keys(answers: Sequence[str | None], correct: Sequence[bool]) -> list[str | None]:
    """The group key of each answer of one problem (``None``: abstains): :data:`GOLD` for a
    correct answer, else ``"n:"`` + its normalised string."""
    keys: list[str | None] = []
    for answer, ok in zip(answers, correct, strict=True):
        norm = normalise_answer(answer)
        keys.append(None if norm is None else GOLD if ok else "n:" + norm)
    return keys
