"""The aggregator's prompt: one builder shared by GRPO training and evaluation.

AggLM layout (Zhao et al. 2025), one user turn: the problem, then the ``m`` candidate solutions
(each cut to the part after the end-of-thinking marker), then the instruction that any, all or
none of them may be correct and that the model should review them and write one correct final
solution ending in ``\\boxed{}``. Confidence-aware (Conf-AggLLM): each candidate's header
carries its DeepConf confidence and a note before the instruction says what the number means.
The config section (``aggregator.prompt``) picks the metric and its scale;
``confidence.enabled: false`` gives plain AggLM.

Scales (``confidence.scale``), all "higher = more confident":

* ``raw``: the metric value itself (``-mean logprob`` averaged as the metric says);
* ``rank``: 0-100, the candidate's rank within its set (ties share their mean rank; the least
  confident gets 0, the most confident 100; a set of one gets 100);
* ``minmax``: 0-100, the value rescaled linearly between the set's minimum and maximum.

A candidate without a value (null / NaN) shows ``n/a`` and takes no part in the ranking.

Controls (``evaluation.aggregators[].confidences``, :func:`control_confidences`), to show
whether a trained aggregator uses the confidences: ``permuted`` moves each candidate's
confidences (every metric, as one) to another candidate of the same set (a seeded random cycle:
the same numbers, beside the wrong candidates; never across sets or problems); ``equal`` shows
every candidate of a set the set's mean (so ``rank`` shows 50 and ``minmax`` 100 for all).

Token budget (``max_prompt_tokens``, counted on the rendered prompt as the trainer tokenizes
it). When the prompt is too long, only candidate *texts* are cut, longest first ("water
filling": every text longer than a common cap ``L`` is cut down to ``L`` tokens, shorter ones are
left whole, and ``L`` is the largest cap that fits). A text is cut in its *middle*: its first
and last ``L/2`` tokens stay (the set-up and the final answer, which sits at the end) around a
marker ``[... N tokens omitted ...]``. The problem, the headers with the confidence scores, the
note and the instruction are never cut; if they alone do not fit, :class:`PromptTooLong` is
raised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from confagg.answers import after_think
from confagg.confidence import METRICS
from confagg.prompts import render

SCALES = ("raw", "rank", "minmax")
CONTROLS = ("real", "permuted", "equal")

DEFAULT_INSTRUCTION = (
    "Above are candidate solutions to the problem. Any, all or none of them may be correct. "
    "Review them carefully, reconcile their differences and mistakes, and write one correct, "
    "complete solution. Put your final answer within \\boxed{}."
)

# What a confidence score means, shown before the instruction (per scale).
_NOTES = {
    "raw": (
        "Each solution is shown with the solver's confidence in it ({metric} token confidence, "
        "computed from its token log-probabilities; higher means more confident). Confidence is "
        "a hint, not proof of correctness."
    ),
    "rank": (
        "Each solution is shown with the solver's confidence in it, from 0 to 100: its rank "
        "among these solutions by {metric} token confidence (100 = the most confident). "
        "Confidence is a hint, not proof of correctness."
    ),
    "minmax": (
        "Each solution is shown with the solver's confidence in it, from 0 to 100: its {metric} "
        "token confidence rescaled between the least (0) and the most (100) confident of these "
        "solutions. Confidence is a hint, not proof of correctness."
    ),
}

MARKER = "\n[... {n} tokens omitted ...]\n"


class PromptTooLong(ValueError):
    """Even with every candidate text cut away, the prompt exceeds its token budget."""


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt ready for generation: the text, its length in tokens, and what was cut."""

    text: str
    num_tokens: int
    cut_tokens: tuple[int, ...]  # tokens removed from each candidate's text (0: whole)

    @property
    def truncated(self) -> bool:
        return any(self.cut_tokens)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def confidence_scores(values: Sequence[float | None], scale: str) -> list[float | None]:
    """The displayed confidence of each candidate of one set (see the module docstring)."""
    if scale not in SCALES:
        raise ValueError(f"unknown confidence scale {scale!r} (expected one of {SCALES})")
    present = [float(v) for v in values if not _is_missing(v)]
    out: list[float | None] = []
    for v in values:
        if _is_missing(v):
            out.append(None)
        elif scale == "raw":
            out.append(float(v))
        elif scale == "rank":
            below = sum(p < v for p in present)
            ties = sum(p == v for p in present)
            rank = below + (ties - 1) / 2  # 0-based mean rank among ties
            out.append(100.0 if len(present) == 1 else 100.0 * rank / (len(present) - 1))
        else:
            lo, hi = min(present), max(present)
            out.append(100.0 if hi == lo else 100.0 * (v - lo) / (hi - lo))
    return out


def control_confidences(
    candidates: Sequence[Mapping], control: str, rng: np.random.Generator
) -> list[dict]:
    """The candidates of one set with their confidence metrics as ``control`` shows them (see
    the module docstring); texts and answers stay where they are. ``rng`` draws the cycle of
    ``permuted`` (seed it per set)."""
    if control not in CONTROLS:
        raise ValueError(f"unknown confidence control {control!r} (expected one of {CONTROLS})")
    out = [dict(c) for c in candidates]
    if control == "permuted" and len(out) > 1:
        # a random cycle through the set: candidate order[i] shows order[i + 1]'s numbers
        order = rng.permutation(len(out)).tolist()
        for i, dest in enumerate(order):
            src = candidates[order[(i + 1) % len(order)]]
            out[dest].update({m: src.get(m) for m in METRICS})
    elif control == "equal":
        for m in METRICS:
            values = [float(c[m]) for c in candidates if not _is_missing(c.get(m))]
            mean = sum(values) / len(values) if values else None
            for c in out:
                c[m] = mean
    return out


def _format_score(score: float | None, scale: str, decimals: int) -> str:
    if score is None:
        return "n/a"
    text = f"{score:.{decimals}f}"
    return text if scale == "raw" else f"{text}/100"


def aggregator_messages(
    problem: str, candidates: Sequence[Mapping], cfg: Mapping
) -> list[dict[str, str]]:
    """Chat messages asking the aggregator for one final solution of ``problem``.

    ``candidates``: mappings with ``text`` (cut after the marker ``cfg["think_end"]`` here
    again, which changes nothing for text already cut) and the confidence metrics
    (``tables.CANDIDATE``). ``cfg``: the config's ``aggregator.prompt`` section (``system``,
    ``instruction``, ``confidence``) and ``think_end`` (``confagg.settings.aggregator_prompt``).
    """
    conf = cfg.get("confidence") or {}
    enabled = bool(conf.get("enabled", False))
    parts = [f"Problem:\n{problem.strip()}", "Candidate solutions:"]
    if enabled:
        metric, scale = conf["metric"], conf["scale"]
        scores = confidence_scores([c.get(metric) for c in candidates], scale)
    for i, cand in enumerate(candidates, start=1):
        header = f"Solution {i}"
        if enabled:
            header += f" (confidence: {_format_score(scores[i - 1], scale, conf['decimals'])})"
        parts.append(f"{header}:\n{after_think(cand['text'], cfg['think_end']).strip()}")
    if enabled:
        note = conf.get("note") or _NOTES[scale]
        parts.append(note.replace("{metric}", metric))
    parts.append(cfg.get("instruction") or DEFAULT_INSTRUCTION)
    messages = []
    if cfg.get("system"):
        messages.append({"role": "system", "content": cfg["system"]})
    messages.append({"role": "user", "content": "\n\n".join(parts)})
    return messages


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of a rendered prompt, counted as TRL's GRPOTrainer tokenizes a text prompt."""
    return len(tokenizer(text=text)["input_ids"])


def _largest_cap(lengths: Sequence[int], need: int, marker_tokens: int) -> int | None:
    """The largest cap ``L`` such that cutting every text longer than ``L`` down to ``L`` tokens
    (plus a marker each) saves at least ``need`` tokens; None when even ``L = 0`` does not.
    Only texts longer than ``L`` plus a marker are cut (so ``saved`` falls as ``L`` grows)."""

    def saved(cap: int) -> int:
        return sum(t - cap - marker_tokens for t in lengths if t > cap + marker_tokens)

    if saved(0) < need:
        return None
    lo, hi = 0, max(lengths)  # saved(lo) >= need; saved(hi) == 0 < need
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if saved(mid) >= need:
            lo = mid
        else:
            hi = mid
    return lo


def _cut_middle(
    text: str, offsets: Sequence[tuple[int, int]], keep: int, marker_tokens: int
) -> tuple[str, int]:
    """``text`` with its middle tokens replaced by the marker, ``keep`` tokens kept in all
    (unchanged when the marker would not make it shorter)."""
    n = len(offsets)
    if n <= keep + marker_tokens:
        return text, 0
    head, tail = (keep + 1) // 2, keep // 2
    head_end = offsets[head - 1][1] if head else 0
    tail_start = offsets[n - tail][0] if tail else len(text)
    removed = n - head - tail
    return text[:head_end] + MARKER.format(n=removed) + text[tail_start:], removed


def render_prompt(
    tokenizer,
    problem: str,
    candidates: Sequence[Mapping],
    cfg: Mapping,
    chat_template_kwargs: Mapping | None = None,
) -> RenderedPrompt:
    """The aggregator prompt with the model's chat template applied, within the token budget
    ``cfg["max_prompt_tokens"]`` (null: no budget) by the truncation rule of the module
    docstring. Raises :class:`PromptTooLong` when the uncuttable parts alone exceed it."""
    kwargs = chat_template_kwargs or {}
    budget = cfg.get("max_prompt_tokens")
    texts = [after_think(c["text"], cfg["think_end"]).strip() for c in candidates]

    def build(cut_texts: Sequence[str]) -> tuple[str, int]:
        cands = [{**c, "text": t} for c, t in zip(candidates, cut_texts, strict=True)]
        text = render(tokenizer, aggregator_messages(problem, cands, cfg), kwargs)
        return text, count_tokens(tokenizer, text)

    text, n = build(texts)
    if budget is None or n <= budget:
        return RenderedPrompt(text, n, (0,) * len(texts))

    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    lengths = [len(o) for o in offsets]
    marker_tokens = len(
        tokenizer(MARKER.format(n=max(lengths)), add_special_tokens=False)["input_ids"]
    )
    need = n - budget
    for _ in range(16):  # re-tokenising the joined text may differ by a few tokens: retry
        cap = _largest_cap(lengths, need, marker_tokens)
        if cap is None:
            break
        cut = [_cut_middle(t, o, cap, marker_tokens) for t, o in zip(texts, offsets, strict=True)]
        text, n = build([c[0] for c in cut])
        if n <= budget:
            return RenderedPrompt(text, n, tuple(c[1] for c in cut))
        need += n - budget
    _, fixed = build([MARKER.format(n=t).strip() for t in lengths])
    raise PromptTooLong(
        f"aggregator prompt does not fit max_prompt_tokens={budget}: with every candidate "
        f"text cut away it still has {fixed} tokens (problem, {len(texts)} confidence headers "
        f"and cut markers, instruction, chat template); raise "
        f"aggregator.prompt.max_prompt_tokens or shorten the problem (starts {problem[:80]!r})"
    )
