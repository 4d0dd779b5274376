"""DeepConf confidence: per-token confidence and the four trace-level metrics.

Definitions (Fu et al. 2025, "Deep Think with Confidence"):

* Token confidence ``C_i = -mean(top-k logprobs at position i)``, k = 20. vLLM returns the
  top-k candidates at each position plus the sampled token when it falls outside them; we
  average over exactly the k highest-ranked tokens (rank 1..k) and ignore that extra entry, so
  ``C_i`` depends only on the model's distribution, not on which token happened to be sampled.
* Group confidence: the mean of ``C`` over a sliding window of ``w`` consecutive tokens, stride
  1, so a trace of ``L >= w`` tokens has ``L - w + 1`` groups; a trace shorter than ``w`` is one
  group (its mean).
* Trace metrics (names are the config/output names):
  ``mean``               mean of ``C`` over all tokens;
  ``bottom_10_percent``  mean of the lowest ``max(1, floor(0.1 * n_groups))`` group confidences;
  ``lowest_group``       the minimum group confidence;
  ``tail``               mean of ``C`` over the last ``tail_tokens`` (2048) tokens (all if fewer).

Higher is more confident for every metric. A trace with no tokens gets NaN everywhere.

Traces are stored flat: one 1-D array of all token confidences plus ``offsets`` (length
n_traces + 1), the layout of an Arrow list column, so every metric is a vectorised numpy pass.
"""

from __future__ import annotations

import itertools

import numpy as np

METRICS = ("mean", "bottom_10_percent", "lowest_group", "tail")
TOP_K = 20
BOTTOM_FRACTION = 0.10

# Traces are scored in batches of about this many tokens, which bounds peak memory (a few
# float64 copies of one batch) whatever the table size.
_BATCH_TOKENS = 1 << 20


def token_confidence(flat_logprobs, k: int = TOP_K) -> np.ndarray:
    """Per-token confidence of one sample from vLLM's flat logprobs (``flat_logprobs=True``).

    vLLM returns ``k + 1`` entries per generated token: the sampled token first (whatever its
    rank), then the top-k tokens ranked 1..k. We average the top-k and skip the first entry, so
    a sampled token inside the top-k is not counted twice. Returns float32, one value per token.
    """
    lp = np.asarray(flat_logprobs, dtype=np.float32)
    if lp.size % (k + 1):
        raise ValueError(
            f"{lp.size} logprob entries is not a multiple of k + 1 = {k + 1}: "
            "was the sample generated with logprobs=k?"
        )
    return -lp.reshape(-1, k + 1)[:, 1:].mean(axis=1)


def _segment_means(cs: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (cs[ends] - cs[starts]) / (ends - starts)


def _group_stats(cs: np.ndarray, starts: np.ndarray, lengths: np.ndarray, window: int):
    """(lowest group, bottom-10% mean) for traces whose token prefix sums are ``cs``."""
    n = len(starts)
    lowest = np.full(n, np.nan)
    bottom = np.full(n, np.nan)
    w = np.minimum(lengths, window)
    n_groups = np.where(lengths > 0, lengths - w + 1, 0)
    # Group means of every full window at once: windows that cross into the next trace are
    # computed too but never read. Traces shorter than the window are one group, their mean.
    full = np.empty(0, np.float32)
    if len(cs) > window:
        full = ((cs[window:] - cs[:-window]) * (1.0 / window)).astype(np.float32)
    short = (lengths > 0) & (lengths < window)
    lowest[short] = bottom[short] = (
        cs[starts[short] + lengths[short]] - cs[starts[short]]
    ) / lengths[short]
    # Long traces as rows of a [trace, group] matrix (padded with +inf), taken in order of
    # group count so that padding stays small.
    order = np.flatnonzero(lengths >= window)
    order = order[np.argsort(n_groups[order], kind="stable")]
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j - i + 1) * int(n_groups[order[j]]) <= _BATCH_TOKENS:
            j += 1
        rows = order[i:j]
        ng = n_groups[rows]
        width = int(ng[-1])
        cols = np.arange(width)
        if ng[0] == width:
            groups = full[starts[rows][:, None] + cols[None, :]]
        else:
            idx = np.minimum(starts[rows][:, None] + cols[None, :], len(full) - 1)
            groups = np.where(cols[None, :] < ng[:, None], full[idx], np.inf)
        lowest[rows] = groups.min(axis=1)
        k = np.maximum(1, (BOTTOM_FRACTION * ng).astype(np.int64))
        kmax = int(k.max())
        smallest = np.partition(groups, kmax - 1, axis=1)[:, :kmax]
        if (k == kmax).all():
            bottom[rows] = smallest.mean(axis=1, dtype=np.float64)
        else:
            smallest.sort(axis=1)
            sums = np.cumsum(smallest, axis=1, dtype=np.float64)
            bottom[rows] = np.take_along_axis(sums, k[:, None] - 1, axis=1)[:, 0] / k
        i = j
    return lowest, bottom


def trace_metrics(
    conf: np.ndarray, offsets: np.ndarray, window: int = 2048, tail_tokens: int = 2048
) -> dict[str, np.ndarray]:
    """The four DeepConf metrics for every trace of a flat confidence array.

    ``conf``: token confidences of all traces back to back (any float dtype); ``offsets``:
    n_traces + 1 boundaries. Returns ``{metric: float64 array of n_traces}``.
    """
    if window < 1 or tail_tokens < 1:
        raise ValueError("window and tail_tokens must be >= 1")
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    out = {m: np.full(n, np.nan) for m in METRICS}
    lengths = np.diff(offsets)
    # Score batches of whole traces of about _BATCH_TOKENS tokens each.
    bounds = np.searchsorted(offsets, np.arange(0, offsets[-1], _BATCH_TOKENS), side="right") - 1
    bounds = np.unique(np.concatenate((bounds, [n])))
    for a, b in itertools.pairwise(bounds):
        lo, hi = offsets[a], offsets[b]
        cs = np.concatenate(([0.0], np.cumsum(conf[lo:hi], dtype=np.float64)))
        starts = offsets[a:b] - lo
        ends = offsets[a + 1 : b + 1] - lo
        out["mean"][a:b] = _segment_means(cs, starts, ends)
        out["tail"][a:b] = _segment_means(cs, np.maximum(starts, ends - tail_tokens), ends)
        out["lowest_group"][a:b], out["bottom_10_percent"][a:b] = _group_stats(
            cs, starts, lengths[a:b], window
        )
    return out
