"""Aggregation methods and their metrics: pure, vectorised numpy over sets of candidates.

A *set* is ``k`` candidate solutions of one problem. Set-level functions take arrays of shape
``(n_sets, k)`` (one row per set; a 1-D array is one set) holding, per candidate:

* ``keys``: the answer's equivalence id, an int code with ``-1`` for "no answer" (strings or
  ``None`` are accepted too and coded with :func:`answer_codes`). Two candidates vote for the same
  answer exactly when their keys are equal: callers group answers with confagg.grouping.
* ``conf``: one DeepConf confidence metric (``confagg.confidence.METRICS``), higher = more
  confident, non-negative (``C_i = -mean(top-k logprobs) >= 0``); NaN counts as weight 0 and
  ranks last.

A method returns, per set, the *position* (column) of the candidate whose answer it picks, or
``-1`` when it picks nothing; :func:`picked_correct` turns that into right/wrong.

Rules shared by every method (one rule everywhere, so the methods differ only in the weights):

* A candidate without an answer never votes and is never picked; a set whose candidates have no
  answer at all picks nothing and counts as wrong.
* **Tie rule.** Votes: the answer with the highest total wins; among answers with equal totals,
  the one whose earliest candidate sits first in the set wins. Ranking by confidence (filtering,
  best-of-k): higher confidence first, equal confidences in set order. Sets are built in
  ascending sample index (:func:`disjoint_sets`), so "first in the set" means "lowest sample
  index". Confidence never breaks a tie in plain majority voting: that baseline stays free of
  the signal it is compared against.
* **DeepConf filtering** keeps, of the ``n`` answered candidates of a set, the
  ``keep = 1 + floor(eta/100 * (n - 1))`` most confident (so at least 1, at most ``n``), then
  votes weighted by confidence. That is the number of traces at or above the ``(100 - eta)``-th
  percentile (linear interpolation) of the set's confidences, the threshold DeepConf's reference
  code uses, when the confidences are distinct; we keep exactly ``keep`` (ties at the cut in set
  order) where that code would keep every tied trace. Examples: eta = 10 keeps 1 of 8 and 13 of
  128; eta = 90 keeps 7 of 8 and 115 of 128.
* **DeepConf-online**, simulated exactly from stored traces, one set of ``k`` traces (the
  budget) at a time, traces drawn in set order, in two definitions that share steps 1, 2 and 4:
  the paper's (Fu et al. 2025, Algorithm 2, with step 3) and the released code's
  (facebookresearch/deepconf ``deepconf-online.py`` and its vLLM logits processor: no step 3,
  every one of the ``k`` traces is drawn; its final vote is ``weighted_majority_vote`` over the
  same voters with the same weights, so step 4 is shared).

  1. The first ``N_init`` traces (all of them when ``k <= N_init``) are the warm-up, generated
     in full. The threshold ``s`` is the ``(100 - eta)``-th percentile (numpy's linear
     interpolation, as that code) of their lowest group confidence, so about eta % of them
     are at or above it.
  2. Every later trace is generated until its first full window of ``w`` tokens whose mean
     token confidence is below ``s`` (the processor checks the window ending at each new
     token once ``w`` tokens exist, and forces the end of the text there): it spends the
     tokens up to and including that window's last token (:func:`online_spent`), and it does
     not vote. A trace shorter than ``w`` has no full window and is never stopped.
  3. (The paper only.) Before each new trace, and after the warm-up, the vote so far is
     checked: voters are the warm-up traces with lowest group confidence ``>= s`` and the
     later traces that finished (not stopped, lowest group confidence ``>= s``, which only
     matters for a trace shorter than ``w``, as in that code's post-filter), each weighing its
     lowest group confidence. When the leading answer holds at least ``tau`` of the total
     weight, no more traces are drawn (adaptive sampling).
  4. The answer is the weighted vote of those voters (tie rule as above).

  Tokens spent: the warm-up's, the stopped traces' prefixes and the finished traces'; traces
  never drawn cost nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NO_ANSWER = -1


# ---------------------------------------------------------------------------------------------
# Answers


def answer_codes(keys) -> np.ndarray:
    """Int codes (same shape as ``keys``) equal exactly where the keys are equal; ``None``/NaN
    give ``NO_ANSWER`` (-1). Int input is returned as int64 unchanged (negative = no answer)."""
    arr = np.asarray(keys)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    codes, _ = pd.factorize(pd.Series(arr.ravel(), dtype=object), use_na_sentinel=True)
    return codes.astype(np.int64).reshape(arr.shape)


# ---------------------------------------------------------------------------------------------
# pass@k


def pass_at_k(n, c, k: int):
    """Unbiased pass@k (Chen et al. 2021): ``1 - C(n-c, k) / C(n, k)``, vectorised over problems.

    ``n`` samples of which ``c`` are correct (scalars or arrays). Computed as
    ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``: a product of at most n factors, no huge binomials.
    It is exactly 0 when ``c = 0`` and exactly 1 when ``n - c < k`` (every k-subset holds a correct
    sample: ``c = n``, or ``k = n`` with ``c > 0``). Undefined for ``k > n``: NaN there, so one
    call covers problems with different ``n``. Raises ValueError for ``k < 1`` or ``c`` outside
    ``[0, n]``.
    """
    n_arr, c_arr = np.broadcast_arrays(np.asarray(n, np.int64), np.asarray(c, np.int64))
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got {k}")
    if np.any(c_arr < 0) or np.any(c_arr > n_arr):
        raise ValueError("pass@k needs 0 <= c <= n")
    nf, cf = n_arr.ravel(), c_arr.ravel()
    i = np.arange(1, int(nf.max(initial=0)) + 1)
    # factors for i in (n - c, n]; when n - c < k that range holds i = k, whose factor is 0
    inside = (i > (nf - cf)[:, None]) & (i <= nf[:, None])
    fail = np.where(inside, 1.0 - k / i, 1.0).prod(axis=1)
    out = np.where(k > nf, np.nan, 1.0 - fail).reshape(n_arr.shape)
    return float(out) if out.ndim == 0 else out


def pass_at_1(correct) -> float:
    """pass@1: the mean correctness of the samples (equal to :func:`pass_at_k` with k = 1)."""
    return float(np.mean(np.asarray(correct, dtype=bool)))


# ---------------------------------------------------------------------------------------------
# Sets


def disjoint_sets(n: int, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Positions ``(n // k, k)`` splitting ``n`` samples into disjoint sets of ``k``.

    Consecutive samples by default (samples are i.i.d., so this is already a random split and it
    matches sets built elsewhere in the same order); with ``rng``, a random permutation first.
    Each row is ascending, so a set's order is sample order. The ``n % k`` leftovers are unused.
    """
    if k < 1:
        raise ValueError(f"set size k must be >= 1, got {k}")
    s = n // k
    idx = np.arange(n) if rng is None else rng.permutation(n)
    return np.sort(idx[: s * k].reshape(s, k), axis=1)


def _batch(keys, *arrays):
    """Promote one set (1-D) to a batch of one; code keys; check shapes."""
    k_arr = answer_codes(keys)
    single = k_arr.ndim == 1
    k_arr = np.atleast_2d(k_arr)
    out = [k_arr]
    for array in arrays:
        a = np.atleast_2d(np.asarray(array, dtype=np.float64))
        if a.shape != k_arr.shape:
            raise ValueError(f"shape {a.shape} does not match keys {k_arr.shape}")
        out.append(a)
    return single, out


def _weights(conf: np.ndarray) -> np.ndarray:
    if np.any(conf < 0):
        raise ValueError("confidence weights must be >= 0 (higher = more confident)")
    return np.nan_to_num(conf, nan=0.0)


def _vote(keys: np.ndarray, weights: np.ndarray, voters: np.ndarray) -> np.ndarray:
    """Winner position per set of a vote where ``voters`` cast ``weights`` for their key.

    Groups every (set, key) pair at once; the winner is the highest total, ties to the group
    whose first candidate comes first. Returns the position of that first candidate, or -1.
    """
    n_sets, k = keys.shape
    winners = np.full(n_sets, NO_ANSWER, dtype=np.int64)
    flat = np.flatnonzero(voters.ravel())
    if flat.size == 0:
        return winners
    rows = flat // k
    _, key_ids = np.unique(keys.ravel()[flat], return_inverse=True)
    group = rows * (int(key_ids.max()) + 1) + key_ids
    # ``first`` indexes the earliest candidate of each group, as ``flat`` is ascending
    _, first, inverse = np.unique(group, return_index=True, return_inverse=True)
    totals = np.bincount(inverse, weights=weights.ravel()[flat], minlength=first.size)
    g_rows = rows[first]
    g_pos = flat[first]
    order = np.lexsort((g_pos, -totals, g_rows))
    sorted_rows = g_rows[order]
    head = np.r_[True, sorted_rows[1:] != sorted_rows[:-1]]
    winners[sorted_rows[head]] = g_pos[order[head]] % k
    return winners


def _unpack(single: bool, winners: np.ndarray):
    return int(winners[0]) if single else winners


def majority_vote(keys):
    """maj: the most frequent answer of each set (ties: the answer seen first in the set)."""
    single, (k_arr,) = _batch(keys)
    voters = k_arr >= 0
    return _unpack(single, _vote(k_arr, voters.astype(np.float64), voters))


def majority_top(keys) -> list[int]:
    """Of one set: the position of the first candidate of every answer with the most votes, in
    set order (empty when nobody answered). The first is :func:`majority_vote`'s pick; more than
    one means the majority is tied."""
    codes = answer_codes(keys)
    answered = codes[codes >= 0]
    if answered.size == 0:
        return []
    values, counts = np.unique(answered, return_counts=True)
    top = set(values[counts == counts.max()].tolist())
    firsts = {}
    for pos, code in enumerate(codes.tolist()):
        if code in top:
            firsts.setdefault(code, pos)
    return sorted(firsts.values())


def weighted_vote(keys, conf):
    """Confidence-weighted vote: ``V(a) = sum of conf over candidates answering a``."""
    single, (k_arr, c_arr) = _batch(keys, conf)
    return _unpack(single, _vote(k_arr, _weights(c_arr), k_arr >= 0))


def keep_count(n_answered, eta: float):
    """How many of ``n_answered`` candidates DeepConf filtering at ``eta`` % keeps:
    ``1 + floor(eta/100 * (n - 1))`` (0 when none answered). See the module docstring."""
    if not 0 < eta <= 100:
        raise ValueError(f"eta must be in (0, 100], got {eta}")
    n = np.asarray(n_answered, dtype=np.int64)
    keep = np.where(n > 0, 1 + np.floor(eta * (n - 1) / 100).astype(np.int64), 0)
    return int(keep) if keep.ndim == 0 else keep


def confidence_rank(keys, conf) -> np.ndarray:
    """Rank (0 = most confident) of each candidate within its set: answered candidates first,
    then by confidence descending (NaN last), ties in set order."""
    single, (k_arr, c_arr) = _batch(keys, conf)
    n_sets, k = k_arr.shape
    pos = np.broadcast_to(np.arange(k), (n_sets, k))
    score = np.where(np.isnan(c_arr), -np.inf, c_arr)
    order = np.lexsort((pos, -score, k_arr < 0), axis=-1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, pos, axis=1)
    return ranks[0] if single else ranks


def filtered_vote(keys, conf, eta: float):
    """DeepConf filtering: keep the top ``eta`` % of answered candidates by confidence
    (:func:`keep_count`), then a confidence-weighted vote among them."""
    single, (k_arr, c_arr) = _batch(keys, conf)
    answered = k_arr >= 0
    keep = keep_count(answered.sum(axis=1), eta)
    kept = answered & (confidence_rank(k_arr, c_arr) < keep[:, None])
    return _unpack(single, _vote(k_arr, _weights(c_arr), kept))


def best_of(keys, conf):
    """Best-of-k by confidence: the answer of the single most confident answered candidate."""
    single, (k_arr, c_arr) = _batch(keys, conf)
    _weights(c_arr)  # same input check as the votes
    ranks = confidence_rank(k_arr, c_arr)
    top = np.argmin(ranks, axis=1)
    top = np.where((k_arr >= 0).any(axis=1), top, NO_ANSWER)
    return _unpack(single, top)


def picked_correct(winners, correct) -> np.ndarray:
    """Whether each set's pick is correct: ``correct[set, winner]``; a pick of -1 is wrong.

    The winner is the first candidate of the winning answer, so when equal keys disagree on
    correctness (a key coarser than the verifier) that candidate's verdict counts."""
    correct = np.atleast_2d(np.asarray(correct, dtype=bool))
    w = np.atleast_1d(np.asarray(winners, dtype=np.int64))
    got = np.take_along_axis(correct, np.maximum(w, 0)[:, None], axis=1)[:, 0]
    return got & (w >= 0)


def maj_at_k(keys, correct, k: int, rng: np.random.Generator | None = None) -> float:
    """maj@k of one problem: majority-vote accuracy averaged over its ``n // k`` disjoint sets of
    ``k`` samples (:func:`disjoint_sets`). NaN when ``k > n``."""
    keys = answer_codes(keys)
    sets = disjoint_sets(len(keys), k, rng)
    if len(sets) == 0:
        return float("nan")
    correct = np.asarray(correct, dtype=bool)
    return float(picked_correct(majority_vote(keys[sets]), correct[sets]).mean())


# ---------------------------------------------------------------------------------------------
# DeepConf-online


def online_threshold(warmup_lowest, eta: float) -> float:
    """The stopping threshold ``s``: the ``(100 - eta)``-th percentile of the warm-up traces'
    lowest group confidences (NaN: none)."""
    values = np.asarray(warmup_lowest, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.percentile(values, 100 - eta)) if values.size else float("nan")


def online_spent(conf, window: int, thresholds) -> np.ndarray:
    """Tokens one trace spends when generated online against each threshold: up to and
    including the last token of its first full ``window`` whose mean is below the threshold,
    or all of it when there is none (a trace shorter than ``window`` is never stopped)."""
    conf = np.asarray(conf, dtype=np.float64)
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    n = len(conf)
    if n < window:
        return np.full(len(thresholds), n, dtype=np.int64)
    cs = np.concatenate(([0.0], np.cumsum(conf)))
    groups = (cs[window:] - cs[:-window]) / window  # group j ends at token j + window - 1
    running_min = np.minimum.accumulate(groups)
    # the first group below t is where the running minimum first drops below t
    first = np.searchsorted(-running_min, -thresholds, side="right")
    return np.where(first < len(groups), first + window, n).astype(np.int64)


def deepconf_online(
    keys, lowest, tokens, spent, n_warmup: int, threshold: float, tau: float, *, stop=True
):
    """One set of DeepConf-online (see the module docstring): ``(picked position or -1, tokens
    spent, traces drawn)``. ``stop``: the paper's consensus stop (step 3) at ``tau``; False:
    the released code's definition, every trace drawn (``tau`` unused).

    ``keys``: answer codes (-1 = none); ``lowest``: each trace's lowest group confidence;
    ``tokens``: its full length; ``spent``: what it costs when drawn after the warm-up
    (:func:`online_spent` at ``threshold``; less than ``tokens`` means it was stopped)."""
    keys = answer_codes(keys)
    lowest = np.nan_to_num(np.asarray(lowest, dtype=np.float64), nan=-np.inf)
    k = len(keys)
    n_warm = min(n_warmup, k)
    votes: dict[int, float] = {}
    first: dict[int, int] = {}

    def vote(pos: int) -> None:
        if keys[pos] >= 0 and lowest[pos] >= threshold:
            votes[keys[pos]] = votes.get(keys[pos], 0.0) + max(lowest[pos], 0.0)
            first.setdefault(keys[pos], pos)

    def consensus() -> float:
        total = sum(votes.values())
        return max(votes.values()) / total if total > 0 else 0.0

    for pos in range(n_warm):
        vote(pos)
    used = int(np.sum(tokens[:n_warm]))
    drawn = n_warm
    while drawn < k and not (stop and consensus() >= tau):
        used += int(spent[drawn])
        if spent[drawn] >= tokens[drawn]:  # finished: not stopped
            vote(drawn)
        drawn += 1
    if not votes:
        return -1, used, drawn
    best = min(votes, key=lambda a: (-votes[a], first[a]))
    return first[best], used, drawn


# ---------------------------------------------------------------------------------------------
# AUROC


def average_ranks(x) -> np.ndarray:
    """1-based ranks of ``x`` with tied values sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for predicting ``labels`` (True = positive).

    Rank-based (Mann-Whitney U / (P N)): the probability that a random positive scores above a
    random negative, a tie counting one half. NaN scores are dropped; NaN when only one class
    remains.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
