"""Answer grouping: which extracted answers of one problem count as the same answer.

Every vote (maj@k, weighted, filtered, best-of-k, DeepConf-online) and curation's majority of a
set use these groups, and nothing here ever sees the gold answer: the gold answer only grades.

Per problem (:func:`group_answers`):

1. An answer is first reduced by :func:`normalise_answer` (spacing, ``\\text{}``, ``025`` = ``25``,
   ...); one that normalises to nothing (``\\boxed{.}``, ``\\text{ }``, ``$ $``) abstains, like a
   sample without an answer: group ``-1``.
2. The distinct normalised answers are taken most frequent first (ties: first seen). Each one
   joins the first existing group whose representative (the group's first answer) the
   caller's ``equal`` finds equal to it (the stages pass ``confagg.verifier.answer_equality``:
   math-verify with the representative in the gold position, bounded in time; a timed-out or
   unparseable check counts as "different"), or
   starts a new group. So ``\\frac{1}{2}``, ``0.5`` and ``1/2`` form one group whether they are
   right or wrong; the result does not depend on which of them is correct.
3. Groups are numbered 0, 1, ... per problem in order of their first sample.

Checks run round by round over all problems at once (round ``r`` places every problem's
``r``-th distinct answer), so the verifier's worker processes stay busy; identical pairs are
checked once (the verifier's cache).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from confagg.answers import latex_skeleton

NO_GROUP = -1

_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\{([^{}]*)\}")
_INTEGER = re.compile(r"[+-]?\d+(?:\.0*)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+")


def normalise_answer(answer: str | None) -> str | None:
    """A light canonical string of an answer.

    Drops surrounding ``$``, spacing commands, ``\\left``/``\\right`` and whitespace, a trailing
    period, and ``\\text{}``-like wrappers; ``\\dfrac``/``\\tfrac`` become ``\\frac``; integers lose
    leading zeros, thousands separators and a ``.0`` (AIME's ``025`` is ``25``). ``None`` or an
    answer that is empty after this gives ``None``. Not a verifier: ``1/2`` and ``\\frac{1}{2}``
    stay different here (:func:`group_answers` asks the verifier).
    """
    if answer is None or (isinstance(answer, float) and np.isnan(answer)):
        return None
    s = str(answer).strip().rstrip(".").strip().strip("$")
    s = _TEXT_WRAP.sub(r"\1", s)
    s = latex_skeleton(s)
    s = s.rstrip(".")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if _INTEGER.fullmatch(s):
        s = str(int(s.split(".")[0]))
    return s or None


class _Problem:
    """One problem's distinct answers (in placing order) and the groups built so far."""

    def __init__(self) -> None:
        self.order: list[str] = []  # normalised answers, most frequent first
        self.text: dict[str, str] = {}  # normalised -> the first raw answer seen
        self.reps: list[str] = []  # normalised representative of each group
        self.group_of: dict[str, int] = {}


def group_answers(
    problem_ids: Sequence[str],
    answers: Sequence[str | None],
    equal: Callable[[Sequence[str], Sequence[str]], Sequence[bool]],
) -> np.ndarray:
    """The answer group of each sample (int32, ``NO_GROUP`` = abstains), as the module says.

    ``problem_ids`` and ``answers`` run in parallel, one entry per sample, in any order; a
    group number is only meaningful within its problem. ``equal(golds, preds)`` says for each
    pair whether ``preds[i]`` is the same answer as ``golds[i]`` (one call per round)."""
    if len(problem_ids) != len(answers):
        raise ValueError(f"{len(problem_ids)} problem ids but {len(answers)} answers")
    norms = [normalise_answer(a) for a in answers]
    problems: dict[str, _Problem] = {}
    counts: dict[tuple[str, str], int] = {}
    for pid, norm, raw in zip(problem_ids, norms, answers, strict=True):
        if norm is None:
            continue
        p = problems.setdefault(pid, _Problem())
        if norm not in p.text:
            p.text[norm] = raw
            p.order.append(norm)
        counts[pid, norm] = counts.get((pid, norm), 0) + 1
    for pid, p in problems.items():
        first = {a: i for i, a in enumerate(p.order)}
        p.order.sort(key=lambda a, pid=pid: (-counts[pid, a], first[a]))

    rounds = max((len(p.order) for p in problems.values()), default=0)
    for r in range(rounds):
        pending = [(pid, p, p.order[r]) for pid, p in problems.items() if r < len(p.order)]
        golds, preds, owner = [], [], []
        for i, (_, p, answer) in enumerate(pending):
            for rep in p.reps:
                golds.append(p.text[rep])
                preds.append(p.text[answer])
                owner.append(i)
        same = equal(golds, preds) if golds else []
        joined: dict[int, int] = {}
        position: dict[int, int] = {}
        for i, is_same in zip(owner, same, strict=True):
            g = position.get(i, 0)
            position[i] = g + 1
            if is_same and i not in joined:
                joined[i] = g  # the first representative that matches
        for i, (_, p, answer) in enumerate(pending):
            if i in joined:
                p.group_of[answer] = joined[i]
            else:
                p.group_of[answer] = len(p.reps)
                p.reps.append(answer)

    # renumber per problem by first sample, so the numbers read in sample order
    raw_groups = [
        NO_GROUP if norm is None else problems[pid].group_of[norm]
        for pid, norm in zip(problem_ids, norms, strict=True)
    ]
    renumber: dict[tuple[str, int], int] = {}
    next_id: dict[str, int] = {}
    out = np.full(len(norms), NO_GROUP, dtype=np.int32)
    for i, (pid, g) in enumerate(zip(problem_ids, raw_groups, strict=True)):
        if g == NO_GROUP:
            continue
        if (pid, g) not in renumber:
            renumber[pid, g] = next_id.get(pid, 0)
            next_id[pid] = renumber[pid, g] + 1
        out[i] = renumber[pid, g]
    return out
