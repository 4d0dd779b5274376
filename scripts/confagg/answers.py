"""Final-answer extraction from a model's solution text.

The answer is the content of the *last* ``\\boxed{...}`` (or ``\\fbox{...}``) in the part of the
text after the last ``</think>`` (the whole text when there is none). Braces nest:
``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. A box that never closes (a truncated sample)
gives no answer. Plain string scanning only: model output is never evaluated.
"""

from __future__ import annotations

import re

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
THINK_END = "</think>"
_LATEX_SPACING = re.compile(r"\\(?:left|right|displaystyle|[,;:! ])|\s+")


def latex_skeleton(text: str) -> str:
    """``text`` without whitespace and LaTeX's spacing and sizing commands (``\\,``, ``\\!``,
    ``\\left``, ``\\right``, ``\\displaystyle``), ``\\dfrac`` and ``\\tfrac`` read as
    ``\\frac``: the one LaTeX normaliser behind answer grouping and problem matching."""
    return _LATEX_SPACING.sub("", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def after_think(text: str) -> str:
    """The part of ``text`` after the last ``</think>`` (all of it when there is none)."""
    cut = text.rfind(THINK_END)
    return text if cut < 0 else text[cut + len(THINK_END) :]


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


def extract_boxed(text: str) -> str | None:
    """The stripped content of the last complete ``\\boxed{}`` after ``</think>``, else None."""
    body = after_think(text)
    for match in reversed(list(_BOX.finditer(body))):
        content = brace_group(body, match.end())
        if content is not None:
            content = content.strip()
            return content or None
    return None


def final_answer(text: str, require_think_end: bool) -> str | None:
    """:func:`extract_boxed`, except that with ``require_think_end`` (thinking mode) a text that
    never closes its thinking has no answer: a box written while still thinking is no answer."""
    if require_think_end and THINK_END not in text:
        return None
    return extract_boxed(text)
