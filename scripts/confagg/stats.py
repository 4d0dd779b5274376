"""Uncertainty over problems: bootstrap intervals, paired tests and the headline (pure numpy).

Every quantity here is a mean over a benchmark's problems of one value per problem (a method's
accuracy on that problem: the mean over its sets, completions, evaluation seeds and training
runs). Which problems were drawn is the largest source of variation with 30-500 problems, so
every interval resamples problems:

* **Intervals**: the percentile bootstrap (``RESAMPLES`` resamples of the problems with
  replacement, the 2.5 and 97.5 percentiles). Every quantity of one benchmark is resampled with
  the same draws (:func:`resample_weights` with the same seed), so a paired difference is
  resampled as a pair.
* **Paired tests**: two methods on the same problems (and the same sets of each problem): the
  difference of their means, its bootstrap interval, and the two-sided p-value of a paired
  sign-flip permutation test (under "no difference" each problem's difference is as likely
  negative as positive): exact over every sign pattern of the non-zero differences when there
  are at most ``RESAMPLES`` patterns, otherwise ``RESAMPLES`` random patterns with the observed
  one counted in (``(1 + hits) / (1 + RESAMPLES)``). Identical methods give 0 and p = 1.
  Significant: p below ``ALPHA``, no correction for the number of tests (the report says how
  many it ran).
* **The headline**: the smallest k at which a vote's accuracy (mean over problems) reaches an
  aggregator's, and the vote's tokens there as a multiple of the aggregator's. "Reaches" is
  ``>=`` (an equal accuracy counts as reached) up to ``TOLERANCE`` (float noise of a mean);
  None: not reached within the sampled k. In a bootstrap resample the same rule gives that
  resample's k; "not reached" there counts as above every k (and as an infinite token multiple).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
ALPHA = 0.05
TOLERANCE = 1e-9


@functools.lru_cache(maxsize=4)  # one benchmark's many quantities share the draws
def resample_weights(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(resamples, n)``: how often each of ``n`` problems is drawn in each bootstrap resample
    (divided by ``n``: a row times a per-problem vector is that resample's mean). Read-only."""
    if n < 1:
        raise ValueError("the bootstrap needs at least one problem")
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    draws += np.arange(resamples)[:, None] * n  # row r counts into r * n .. r * n + n - 1
    weights = np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n) / n
    weights.flags.writeable = False
    return weights


def _bounds(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval; with infinite replicates ("not reached") the interval's ends
    are replicates themselves (no interpolation towards infinity)."""
    q = [(1 - level) / 2, (1 + level) / 2]
    method = "inverted_cdf" if np.isinf(replicates).any() else "linear"
    lo, hi = np.quantile(replicates, q, method=method)
    return float(lo), float(hi)


def _clean(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or not np.isfinite(v).all():
        raise ValueError("per-problem values must be one finite number per problem")
    return v


def bootstrap_mean(values, *, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL):
    """``{"mean", "low", "high"}``: the mean over problems and its percentile interval."""
    v = _clean(values)
    reps = resample_weights(len(v), resamples, seed) @ v
    lo, hi = _bounds(reps, level)
    return {"mean": float(v.mean()), "low": lo, "high": hi}


def sign_flip_p(differences, *, resamples: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of a mean difference of 0."""
    d = _clean(differences)
    d = d[d != 0]  # a zero difference is the same under either sign
    if d.size == 0:
        return 1.0
    observed = abs(d.sum())
    slack = 1e-12 * np.abs(d).sum()  # the same sum added in another order
    if 2**d.size <= resamples:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) >= observed - slack))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, resamples, 1000):  # bounded memory for large benchmarks
        signs = rng.choice((1.0, -1.0), size=(min(1000, resamples - start), d.size))
        hits += int(np.sum(np.abs(signs @ d) >= observed - slack))
    return (1 + hits) / (1 + resamples)


def paired_test(
    a, b, *, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL, alpha=ALPHA
) -> dict:
    """``a`` against ``b`` on the same problems: ``difference`` (mean of a - b), ``low``,
    ``high`` (its bootstrap interval), ``p_value`` (sign-flip test), ``significant``,
    ``n_problems``."""
    a, b = _clean(a), _clean(b)
    if a.shape != b.shape:
        raise ValueError(f"a paired test needs the same problems: {a.shape} vs {b.shape}")
    d = a - b
    ci = bootstrap_mean(d, resamples=resamples, seed=seed, level=level)
    p = sign_flip_p(d, resamples=resamples, seed=seed)
    return {
        "difference": ci["mean"],
        "low": ci["low"],
        "high": ci["high"],
        "p_value": p,
        "significant": bool(p < alpha),
        "n_problems": len(d),
    }


def reached_k(target: float, curve: Mapping[int, float]) -> int | None:
    """The smallest k whose accuracy reaches ``target`` (``>=`` up to ``TOLERANCE``); None
    when no sampled k does."""
    for k in sorted(curve):
        if curve[k] >= target - TOLERANCE:
            return int(k)
    return None


def headline(
    accuracy,
    tokens,
    vote: Mapping[int, tuple[Sequence[float], Sequence[float]]],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """An aggregator (per-problem ``accuracy`` and ``tokens``) against a vote (``{k:
    (per-problem accuracy, per-problem tokens)}``, the same problems): ``accuracy`` (with its
    interval), ``k`` (:func:`reached_k`; None: not reached), ``k_low``/``k_high`` (its interval
    over resamples; None: not reached there), ``token_ratio`` (the vote's tokens at ``k``
    over the aggregator's; None when not reached), ``ratio_low``/``ratio_high``,
    ``ratio_at_max_k`` (the vote's tokens at its largest k over the aggregator's: the ratio
    is above it when not reached), ``reached_share`` (of the resamples)."""
    acc, tok = _clean(accuracy), _clean(tokens)
    ks = sorted(vote)
    if not ks:
        raise ValueError("the headline needs the vote at one k at least")
    va = np.column_stack([_clean(vote[k][0]) for k in ks])
    vt = np.column_stack([_clean(vote[k][1]) for k in ks])
    curve = dict(zip(ks, va.mean(axis=0), strict=True))
    k = reached_k(float(acc.mean()), curve)
    ratio = None if k is None else float(vt[:, ks.index(k)].mean() / tok.mean())

    w = resample_weights(len(acc), resamples, seed)
    acc_r, tok_r = w @ acc, w @ tok
    reached = (w @ va) >= acc_r[:, None] - TOLERANCE
    first = np.argmax(reached, axis=1)
    any_reached = reached.any(axis=1)
    k_r = np.where(any_reached, np.asarray(ks, np.float64)[first], np.inf)
    ratio_r = np.where(any_reached, (w @ vt)[np.arange(len(w)), first] / tok_r, np.inf)
    lo, hi = _bounds(acc_r, level)
    k_lo, k_hi = _bounds(k_r, level)
    r_lo, r_hi = _bounds(ratio_r, level)

    def finite(x: float) -> float | None:
        return None if np.isinf(x) else x

    return {
        "accuracy": {"mean": float(acc.mean()), "low": lo, "high": hi},
        "tokens": float(tok.mean()),
        "k": k,
        "k_low": None if np.isinf(k_lo) else int(k_lo),
        "k_high": None if np.isinf(k_hi) else int(k_hi),
        "token_ratio": ratio,
        "ratio_low": finite(r_lo),
        "ratio_high": finite(r_hi),
        "ratio_at_max_k": float(vt[:, -1].mean() / tok.mean()),
        "reached_share": float(any_reached.mean()),
    }


def variant_pairs(variants: Sequence[Mapping]) -> list[tuple[str, str, str]]:
    """The aggregator variants' paired comparisons, ``(what, a, b)`` (a against b), from their
    config entries (``name``, ``trained``: a training variant or None for the prompted base
    model, ``confidence``: whether the prompt shows confidences, ``confidences``: "real"
    (default) or a control, "permuted" or "equal"):

    * "confidences shown vs not": same kind (trained or prompted), real confidences, only
      ``confidence`` differs (Conf-AggLM vs AggLM among the trained ones);
    * "trained vs prompted": the same prompt (``confidence``, ``confidences``), a trained
      variant against the first prompted one;
    * "real confidences vs <control>": a control against the first variant of the same kind
      and prompt with real confidences.
    """

    def kind(v: Mapping) -> tuple:
        return (v.get("trained") is not None, bool(v.get("confidence")))

    def control(v: Mapping) -> str:
        return v.get("confidences") or "real"

    pairs = []
    real = [v for v in variants if control(v) == "real"]
    for a in real:
        if a.get("confidence"):
            for b in real:
                if kind(b) == (kind(a)[0], False):
                    pairs.append(("confidences shown vs not", a["name"], b["name"]))
                    break
    for a in variants:
        if a.get("trained") is None:
            continue
        for b in variants:
            same = bool(b.get("confidence")) == bool(a.get("confidence"))
            if b.get("trained") is None and same and control(b) == control(a):
                pairs.append(("trained vs prompted", a["name"], b["name"]))
                break
    for a in variants:
        if control(a) == "real":
            continue
        for b in real:
            if kind(b) == kind(a) and b.get("trained") == a.get("trained"):
                pairs.append((f"real confidences vs {control(a)}", b["name"], a["name"]))
                break
    return pairs
