"""Scoring one benchmark x seed: every method's accuracy and tokens at every k, from the
candidates' table (no file I/O: ``confagg.evaluate`` reads the tables and writes the results).

The maths of each method is in
:mod:`confagg.methods`. Answers vote in the grader's ``answer_group``
(:mod:`confagg.grouping`: equivalence classes found without the gold answer); the gold answer
only decides which class is right (a class is right when its first sample is). Conventions:

* Sets of size ``k`` are the disjoint sets of :func:`confagg.methods.disjoint_sets`, per
  problem: consecutive samples in ``sample_idx`` order (``shuffle=False``, the default, so set
  ``j`` of size ``k`` is samples ``j*k .. j*k+k-1``, the sets the aggregator runs use), or
  after a permutation seeded by ``derive_seed(seed, "sets", problem_id, k)``.
* Accuracy of a method at ``k``: per problem, the mean over its sets (pass@k: the unbiased
  estimator over all ``n`` samples); then the mean over problems, each problem counting once.
* Tokens (``tokens_per_problem``): what a method reads, per problem, averaged like accuracy: the
  summed ``num_tokens`` of the set's samples (every voting method at ``k`` reads the same
  samples), ``k`` times the problem's mean sample length for pass@k, and for an aggregator the
  generated tokens of the set's samples plus the mean generated tokens of one aggregator call
  (the mean over its ``r`` completions: one completion answers). Its prompt (the candidates'
  texts again, cut to the part after the end of thinking, as input) is counted apart:
  ``prompt_tokens_per_problem``.
* An aggregator variant with several training runs (``train_seed``) gets every number as the
  mean over its runs, each run's own in ``by_train_seed``; what it learned is said over its
  calls: ``no_answer_share`` and ``accuracy_answered`` (where the table has ``answer``).
* DeepConf-online comes in two definitions (:mod:`confagg.methods`): ``online<eta>``, the
  paper's Algorithm 2, and ``online<eta>:released``, the released code's.
* DeepConf-online (``online<eta>``, see :mod:`confagg.methods`) runs on the same k-sets, at
  every ``k`` above its warm-up size: tokens are what it actually generates
  (``tokens_per_problem``), and ``tokens_saved_per_problem`` what the full set would have cost
  more. It needs every trace's token confidences, which the caller's ``spend`` reads.
* A method whose picks equal, set for set, those of a method listed before it at some ``k``
  carries ``same_as`` there (DeepConf top 10% at k = 8 keeps one trace: it *is* best-of-8).
* Only ``k <= n`` for every problem is evaluated; larger ks are listed in ``ks_skipped``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from confagg import methods as mt
from confagg.confidence import METRICS
from confagg.seeds import derive_seed

ETAS = (10, 90)
SAMPLE_COLUMNS = ("problem_id", "sample_idx", "answer_group", "correct", "num_tokens", *METRICS)
AGGREGATOR_COLUMNS = ("method", "problem_id", "set_idx", "k", "correct", "num_tokens")
# read where the table has them: what an aggregator learned (``answer``: null when it gave
# none), its prompt (``prompt_tokens``) and its training run (``train_seed``: null, prompted)
AGGREGATOR_OPTIONAL = ("answer", "prompt_tokens", "train_seed")


def method_names(
    metrics: Sequence[str] = METRICS, etas: Sequence[float] = ETAS, online_etas: Sequence = ()
) -> list[str]:
    """Names of the sample-based methods, in report order."""
    names = ["pass", "majority"]
    names += [f"weighted:{m}" for m in metrics]
    names += [f"best:{m}" for m in metrics]
    names += [f"top{eta:g}:{m}" for eta in etas for m in metrics]
    names += [f"online{eta:g}{variant}" for eta in online_etas for variant in ONLINE_VARIANTS]
    return names


# DeepConf-online's two definitions (confagg.methods): the name's suffix -> (the consensus stop,
# the label's note). "online10" is the paper's Algorithm 2, "online10:released" the released
# code's (every trace of the budget drawn).
ONLINE_VARIANTS = {
    "": (True, "paper, Alg. 2: consensus stop"),
    ":released": (False, "released code: no consensus stop"),
}

_FIXED_LABELS = {"pass": "pass@k", "majority": "maj@k"}
_METRIC_LABELS = {"weighted": "weighted vote", "best": "best-of-k"}  # "<label> (<metric>)"


def method_info(name: str) -> dict:
    """``family``, ``metric``, ``eta`` and a display ``label`` of a method name; a name this
    module does not know is an aggregator (family "aggregator", labelled by its name)."""
    if name in _FIXED_LABELS:
        return {"family": name, "metric": None, "eta": None, "label": _FIXED_LABELS[name]}
    base, colon, variant = name.partition(":")
    is_online = base.startswith("online") and base[6:].replace(".", "", 1).isdigit()
    if is_online and colon + variant in ONLINE_VARIANTS:
        eta = float(base[6:])
        note = ONLINE_VARIANTS[colon + variant][1]
        label = f"DeepConf-online top {eta:g}% (lowest_group; {note})"
        return {"family": "online", "metric": "lowest_group", "eta": eta, "label": label}
    family, _, metric = name.partition(":")
    if metric in METRICS:
        if family in _METRIC_LABELS:
            label = f"{_METRIC_LABELS[family]} ({metric})"
            return {"family": family, "metric": metric, "eta": None, "label": label}
        if family.startswith("top"):
            eta = float(family[3:])
            label = f"DeepConf top {eta:g}% ({metric})"
            return {"family": "filter", "metric": metric, "eta": eta, "label": label}
    return {"family": "aggregator", "metric": None, "eta": None, "label": name}


def _num(x) -> float | None:
    """A JSON number: NaN becomes None."""
    x = float(x)
    return None if math.isnan(x) else x


def _check(samples: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in SAMPLE_COLUMNS if c not in samples.columns]
    if missing:
        raise ValueError(f"sample table lacks columns {missing}")
    if samples.empty:
        raise ValueError("sample table is empty")
    dup = samples.duplicated(["problem_id", "sample_idx"])
    if dup.any():
        row = samples[dup].iloc[0]
        raise ValueError(
            f"sample table repeats (problem_id, sample_idx) = ({row.problem_id}, {row.sample_idx})"
        )
    return samples.sort_values(["problem_id", "sample_idx"], kind="stable").reset_index(drop=True)


def _per_problem(values: np.ndarray, problem: np.ndarray, n_problems: int) -> np.ndarray:
    """Mean of ``values`` per problem index (NaN for a problem with none)."""
    total = np.bincount(problem, weights=values, minlength=n_problems)
    count = np.bincount(problem, minlength=n_problems)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


class _Benchmark:
    """The sample table as flat arrays, problems contiguous in sample order."""

    def __init__(self, samples: pd.DataFrame, seed: int, shuffle: bool):
        df = _check(samples)
        self.seed, self.shuffle = seed, shuffle
        codes, self.problems = pd.factorize(df["problem_id"], sort=True)
        self.problem = codes.astype(np.int64)
        self.counts = np.bincount(self.problem, minlength=len(self.problems))
        self.starts = np.r_[0, np.cumsum(self.counts)[:-1]]
        self.keys = df["answer_group"].to_numpy(np.int64)  # -1: no answer
        self.sample_idx = df["sample_idx"].to_numpy(np.int64)
        self.correct = df["correct"].to_numpy(bool)
        self.tokens = df["num_tokens"].to_numpy(np.float64)
        self.conf = {m: df[m].to_numpy(np.float64) for m in METRICS}
        self._sets: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def sets(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample indices ``(n_sets, k)``, problem index per set) of the disjoint k-sets."""
        if k not in self._sets:
            idx, prob = [], []
            for p, pid in enumerate(self.problems):
                rng = None
                if self.shuffle:
                    rng = np.random.default_rng(derive_seed(self.seed, "sets", pid, k))
                s = self.starts[p] + mt.disjoint_sets(int(self.counts[p]), k, rng)
                idx.append(s)
                prob.append(np.full(len(s), p))
            self._sets[k] = (np.concatenate(idx), np.concatenate(prob))
        return self._sets[k]

    def per_problem(self, per_set: np.ndarray, k: int) -> np.ndarray:
        """The mean of a per-set value over each problem's k-sets (problem order)."""
        _, prob = self.sets(k)
        return _per_problem(per_set, prob, len(self.problems))

    def mean_over_problems(self, per_set: np.ndarray, k: int) -> float:
        return float(np.nanmean(self.per_problem(per_set, k)))


def _winners(b: _Benchmark, name: str, idx: np.ndarray) -> np.ndarray:
    keys = b.keys[idx]
    info = method_info(name)
    if info["family"] == "majority":
        return mt.majority_vote(keys)
    conf = b.conf[info["metric"]][idx]
    if info["family"] == "weighted":
        return mt.weighted_vote(keys, conf)
    if info["family"] == "filter":
        return mt.filtered_vote(keys, conf, info["eta"])
    if info["family"] == "best":
        return mt.best_of(keys, conf)
    raise ValueError(f"not a sample-based method: {name}")


def _sample_method(b: _Benchmark, name: str, k: int):
    """Per-problem (accuracy, tokens) of a sample-based method at ``k``, and its picks per set
    (None for pass@k, which picks with the gold answer)."""
    if name == "pass":
        correct_count = np.bincount(b.problem, weights=b.correct, minlength=len(b.problems))
        mean_tokens = _per_problem(b.tokens, b.problem, len(b.problems))
        return mt.pass_at_k(b.counts, correct_count, k), k * mean_tokens, None
    idx, _ = b.sets(k)
    winners = _winners(b, name, idx)
    right = mt.picked_correct(winners, b.correct[idx]).astype(np.float64)
    return b.per_problem(right, k), b.per_problem(b.tokens[idx].sum(axis=1), k), winners


def per_problem(
    samples: pd.DataFrame,
    ks: Iterable[int],
    seed: int,
    *,
    shuffle: bool = False,
    etas: Sequence[float] = ETAS,
    aggregator: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Each problem's accuracy and tokens, per method and k, scored as
    :func:`evaluate_benchmark` scores them (its accuracy is the mean of these over problems):
    one row per ``method, k, problem_id`` with ``accuracy, tokens`` (an aggregator's: the mean
    over its training runs). DeepConf-online, which needs the token confidences, is left out.
    What the reports' intervals and paired tests resample."""
    b = _Benchmark(samples, seed, shuffle)
    n_min = int(b.counts.min())
    frames = []

    def add(name: str, k: int, accuracy, tokens) -> None:
        frame = {"problem_id": b.problems, "accuracy": accuracy, "tokens": tokens}
        frames.append(pd.DataFrame(frame).assign(method=name, k=k))

    for k in sorted({int(k) for k in ks if 1 <= int(k) <= n_min}):
        for name in method_names(METRICS, etas):
            add(name, k, *_sample_method(b, name, k)[:2])
    if aggregator is not None and len(aggregator):
        for name, k, rows in _aggregator_groups(aggregator):
            mean = _aggregator_cell(b, rows, name, k)[1]
            add(name, k, mean["accuracy"], mean["tokens"])
    columns = ["method", "k", "problem_id", "accuracy", "tokens"]
    return pd.concat(frames, ignore_index=True)[columns]


def _aggregator_run(b: _Benchmark, rows: pd.DataFrame, where: str, k: int) -> dict:
    """Per-problem arrays (problem order) of one aggregator run at set size ``k`` (one
    variant, one training seed): ``accuracy``, ``tokens`` (the set's candidates' generated
    tokens plus the mean generated tokens of one completion), ``prompt_tokens`` (the mean
    prompt of a call; NaN where the table has none); and over its calls: ``calls``,
    ``no_answer`` (calls with no answer; None where the table has no ``answer``),
    ``answered_right``."""
    pid_index = {pid: p for p, pid in enumerate(b.problems)}
    unknown = set(rows["problem_id"]) - set(pid_index)
    absent = set(pid_index) - set(rows["problem_id"])
    if unknown or absent:
        raise ValueError(
            f"aggregator {where} k={k}: problems {sorted(unknown)} are not in the sample "
            f"table and {sorted(absent)} have no aggregator output"
        )
    if k > b.counts.min():
        raise ValueError(f"aggregator {where}: k={k} exceeds the samples of some problem")
    prompt = rows.get("prompt_tokens", np.nan)
    per_set = (
        rows.assign(prompt_tokens=prompt)
        .groupby(["problem_id", "set_idx"], sort=False)
        .agg(
            correct=("correct", "mean"),
            call_tokens=("num_tokens", "mean"),
            prompt_tokens=("prompt_tokens", "mean"),
        )
    )
    idx, prob = b.sets(k)
    first_set = np.r_[0, np.cumsum(np.bincount(prob, minlength=len(b.problems)))[:-1]]
    p = per_set.index.get_level_values("problem_id").map(pid_index).to_numpy(np.int64)
    j = per_set.index.get_level_values("set_idx").to_numpy(np.int64)
    n_sets = b.counts[p] // k
    if np.any((j < 0) | (j >= n_sets)):
        raise ValueError(f"aggregator {where} k={k}: set_idx outside 0..n//k-1")
    sample_tokens = b.tokens[idx[first_set[p] + j]].sum(axis=1)
    n_p = len(b.problems)
    answered = rows["answer"].notna().to_numpy() if "answer" in rows else None
    correct = rows["correct"].to_numpy(bool)
    return {
        "accuracy": _per_problem(per_set["correct"].to_numpy(np.float64), p, n_p),
        "tokens": _per_problem(sample_tokens + per_set["call_tokens"].to_numpy(np.float64), p, n_p),
        "prompt_tokens": _per_problem(per_set["prompt_tokens"].to_numpy(np.float64), p, n_p),
        "n_sets": len(per_set),
        "calls": len(rows),
        "no_answer": None if answered is None else int((~answered).sum()),
        # a right call has an answer (the verdict needs one)
        "answered_right": int(correct.sum()),
    }


def _runs(rows: pd.DataFrame) -> list[tuple[int | None, pd.DataFrame]]:
    """One variant's rows at one k split by training run (``train_seed``; None: one run, a
    prompted variant or a table without the column)."""
    if "train_seed" not in rows or rows["train_seed"].isna().all():
        return [(None, rows)]
    if rows["train_seed"].isna().any():
        raise ValueError("aggregator rows mix a training seed and none for one variant")
    return [(int(s), g) for s, g in rows.groupby("train_seed", sort=True)]


def _answered(calls: int, no_answer: int | None, right: int) -> dict:
    """What an aggregator learned, over its calls: the share with no answer and the accuracy
    among those answered (None: the table has no ``answer`` column, or nothing answered)."""
    if no_answer is None:
        return {}
    answered = calls - no_answer
    return {
        "calls": calls,
        "no_answer": no_answer,
        "no_answer_share": no_answer / calls if calls else None,
        "accuracy_answered": right / answered if answered else None,
    }


def _aggregator_cell(b: _Benchmark, rows: pd.DataFrame, name: str, k: int):
    """(cell, per-problem accuracy and tokens) of one variant at set size ``k``: every
    number is the mean over its training runs (``by_train_seed``: each run's own)."""
    runs = [(seed, _aggregator_run(b, g, f"{name!r}", k)) for seed, g in _runs(rows)]
    mean = {
        key: np.mean([r[key] for _, r in runs], axis=0)
        for key in ("accuracy", "tokens", "prompt_tokens")
    }
    with np.errstate(invalid="ignore"):
        prompt = (
            np.nanmean(mean["prompt_tokens"])
            if np.isfinite(mean["prompt_tokens"]).any()
            else np.nan
        )
    cell = {
        "accuracy": _num(mean["accuracy"].mean()),
        "tokens_per_problem": _num(mean["tokens"].mean()),
        "prompt_tokens_per_problem": _num(prompt),
        "n_sets": runs[0][1]["n_sets"],
        "n_train_seeds": len(runs) if runs[0][0] is not None else None,
    }
    no_answer = [r["no_answer"] for _, r in runs]
    cell.update(
        _answered(
            sum(r["calls"] for _, r in runs),
            None if None in no_answer else sum(no_answer),
            sum(r["answered_right"] for _, r in runs),
        )
    )
    if runs[0][0] is not None:
        cell["by_train_seed"] = {
            str(seed): {
                "accuracy": _num(r["accuracy"].mean()),
                "tokens_per_problem": _num(r["tokens"].mean()),
                **_answered(r["calls"], r["no_answer"], r["answered_right"]),
            }
            for seed, r in runs
        }
    return cell, mean


def _aggregator_groups(aggregator: pd.DataFrame):
    """``(name, k, rows)`` of the aggregator outputs, variants in the order they were run (the
    config's, not alphabetical), then by k."""
    missing = [c for c in AGGREGATOR_COLUMNS if c not in aggregator.columns]
    if missing:
        raise ValueError(f"aggregator table lacks columns {missing}")
    order = {name: i for i, name in enumerate(dict.fromkeys(aggregator["method"]))}
    groups = aggregator.groupby(["method", "k"], sort=True)
    for (name, k), rows in sorted(groups, key=lambda g: (order[g[0][0]], g[0][1])):
        yield str(name), int(k), rows


def _aggregator_rows(b: _Benchmark, aggregator: pd.DataFrame) -> dict[str, dict]:
    """``{method: {str(k): cell}}`` for aggregator outputs (one row per call, ``r`` per set)."""
    out: dict[str, dict] = {}
    for name, k, rows in _aggregator_groups(aggregator):
        out.setdefault(name, {})[str(k)] = _aggregator_cell(b, rows, name, k)[0]
    return out


@dataclass(frozen=True)
class Online:
    """``evaluation.deepconf_online``: warm-up traces, kept shares, consensus threshold."""

    warmup: int
    etas: tuple[float, ...]
    consensus: float


# What DeepConf-online needs from the token confidences: for each sample row (of the sorted
# sample table), the tokens it spends against each of a list of thresholds.
Spend = Callable[[Mapping[int, Sequence[float]]], Mapping[int, np.ndarray]]


def _online_plan(b: _Benchmark, ks: Sequence[int], online: Online):
    """Per (eta, k): the sets and each set's threshold; and the requests for :data:`Spend`
    (every trace after a warm-up, with its set's threshold)."""
    plans, requests = {}, {}
    for k in ks:
        if k <= online.warmup:
            continue
        idx, _ = b.sets(k)
        warm = b.conf["lowest_group"][idx[:, : online.warmup]]
        for eta in online.etas:
            thresholds = np.array([mt.online_threshold(row, eta) for row in warm])
            plans[eta, k] = (idx, thresholds)
            for row, t in zip(idx[:, online.warmup :], thresholds, strict=True):
                for r in row.tolist():
                    requests.setdefault(r, []).append(t)
    return plans, requests


def _online_cells(b: _Benchmark, online: Online, plans, requests, spend: Spend, picks: dict):
    """``{name: {str(k): cell}}`` of DeepConf-online, both definitions (``ONLINE_VARIANTS``) on
    the same sets and thresholds; their picks go into ``picks``."""
    spent_of = spend(requests)
    taken = {r: 0 for r in requests}  # how many of row r's thresholds are read so far
    out: dict[str, dict] = {}
    for (eta, k), (idx, thresholds) in plans.items():
        runs = {suffix: ([], [], []) for suffix in ONLINE_VARIANTS}
        for row, t in zip(idx, thresholds, strict=True):
            costs = b.tokens[row].copy()
            for pos in range(online.warmup, k):
                r = int(row[pos])
                costs[pos] = spent_of[r][taken[r]]
                taken[r] += 1
            lowest = b.conf["lowest_group"][row]
            for suffix, (stop, _) in ONLINE_VARIANTS.items():
                w, u, d = mt.deepconf_online(
                    b.keys[row],
                    lowest,
                    b.tokens[row],
                    costs,
                    online.warmup,
                    t,
                    online.consensus,
                    stop=stop,
                )
                for values, value in zip(runs[suffix], (w, u, d), strict=True):
                    values.append(value)
        for suffix, run in runs.items():
            winners, drawn = np.array(run[0], np.int64), np.array(run[2], np.float64)
            used = np.array(run[1], np.float64)
            name = f"online{eta:g}{suffix}"
            picks.setdefault(name, {})[k] = winners
            right = mt.picked_correct(winners, b.correct[idx]).astype(np.float64)
            saved = b.tokens[idx].sum(axis=1) - used
            out.setdefault(name, {})[str(k)] = {
                "accuracy": b.mean_over_problems(right, k),
                "tokens_per_problem": b.mean_over_problems(used, k),
                "tokens_saved_per_problem": b.mean_over_problems(saved, k),
                "traces_per_problem": b.mean_over_problems(drawn, k),
                "n_sets": len(idx),
            }
    return out


def in_memory_spend(confidences: Sequence[np.ndarray], window: int) -> Spend:
    """A :data:`Spend` over token confidences held in memory (``confidences[row]``)."""
    return lambda requests: {
        r: mt.online_spent(confidences[r], window, t) for r, t in requests.items()
    }


def _mark_identical(methods: dict, picks: dict) -> None:
    """``same_as``: at each k, the first method (report order) with exactly the same picks."""
    seen: dict[tuple[int, bytes], str] = {}
    for name, by_k in picks.items():
        for k, winners in by_k.items():
            key = (k, np.ascontiguousarray(winners).tobytes())
            if key in seen:
                methods[name]["by_k"][str(k)]["same_as"] = seen[key]
            else:
                seen[key] = name


def evaluate_benchmark(
    samples: pd.DataFrame,
    ks: Iterable[int],
    seed: int,
    *,
    shuffle: bool = False,
    etas: Sequence[float] = ETAS,
    aggregator: pd.DataFrame | None = None,
    online: Online | None = None,
    spend: Spend | None = None,
) -> dict:
    """Accuracy and tokens of every method at every ``k``, and AUROC of every metric.

    ``samples``: one row per sample with columns ``problem_id, sample_idx, answer_group,
    correct, num_tokens`` and the four metrics; rows in any order (they are sorted by problem
    and sample index, and :data:`Spend` rows number that order). ``aggregator`` (optional): one
    row per aggregator call with ``method, problem_id, set_idx, k, correct, num_tokens``
    (``set_idx`` numbers the problem's disjoint k-sets, see the module docstring); accuracy is
    averaged over calls, then sets, then problems. ``online`` with ``spend``: DeepConf-online.

    Returns (JSON-serialisable; NaN is written as null)::

        {"seed": int, "shuffle": bool, "n_problems": int, "n_samples": int,
         "samples_per_problem": {"min": int, "max": int},
         "ks": [k, ...],                  # evaluated
         "ks_skipped": [k, ...],          # k > n for some problem
         "pass@1": float,                 # mean correctness, per problem then over problems
         "answered": float,               # fraction of samples with an answer
         "mean_tokens_per_sample": float,
         "inconsistent_keys": int,        # (problem, answer group) with mixed verdicts
         "method_order": [name, ...],     # the methods in report order
         "methods": {name: {"family": "pass"|"majority"|"weighted"|"filter"|"best"|"online"
                                      |"aggregator",
                            "metric": str|None, "eta": float|None, "label": str,
                            "by_k": {str(k): {"accuracy": float, "tokens_per_problem": float,
                                              "n_sets": int|None,    # None for pass
                                              "same_as": str,        # where picks are equal
                                              # online only:
                                              "tokens_saved_per_problem": float,
                                              "traces_per_problem": float}}}},
         "auroc": {metric: {"pooled": float|None,            # over all samples
                            "per_problem_mean": float|None,  # over problems with both classes
                            "n_problems": int}}}             # how many such problems
    """
    b = _Benchmark(samples, seed, shuffle)
    n_min = int(b.counts.min())
    ks = sorted({int(k) for k in ks})
    used = [k for k in ks if 1 <= k <= n_min]
    n_p = len(b.problems)
    correct_count = np.bincount(b.problem, weights=b.correct, minlength=n_p)

    methods: dict[str, dict] = {}
    picks: dict[str, dict[int, np.ndarray]] = {}
    for name in method_names(METRICS, etas):
        by_k = {}
        for k in used:
            accuracy, tokens, winners = _sample_method(b, name, k)
            by_k[str(k)] = {
                "accuracy": float(np.nanmean(accuracy)),
                "tokens_per_problem": _num(np.nanmean(tokens)),
                "n_sets": None if winners is None else len(winners),
            }
            if winners is not None:
                picks.setdefault(name, {})[k] = winners
        methods[name] = {**method_info(name), "by_k": by_k}
    if online is not None:
        if spend is None:
            raise ValueError("DeepConf-online needs the token confidences (spend)")
        plans, requests = _online_plan(b, used, online)
        for name, by_k in _online_cells(b, online, plans, requests, spend, picks).items():
            methods[name] = {**method_info(name), "by_k": by_k}
    _mark_identical(methods, picks)
    if aggregator is not None and len(aggregator):
        for name, by_k in _aggregator_rows(b, aggregator).items():
            methods[name] = {**method_info(name), "by_k": by_k}

    auroc = {}
    for m in METRICS:
        per_problem = np.array(
            [mt.auroc(b.conf[m][b.problem == p], b.correct[b.problem == p]) for p in range(n_p)]
        )
        defined = ~np.isnan(per_problem)
        auroc[m] = {
            "pooled": _num(mt.auroc(b.conf[m], b.correct)),
            "per_problem_mean": _num(per_problem[defined].mean()) if defined.any() else None,
            "n_problems": int(defined.sum()),
        }

    answered = b.keys >= 0
    groups = pd.DataFrame(
        {"p": b.problem[answered], "key": b.keys[answered], "c": b.correct[answered]}
    )
    inconsistent = int((groups.groupby(["p", "key"])["c"].nunique() > 1).sum())
    return {
        "seed": int(seed),
        "shuffle": bool(shuffle),
        "n_problems": n_p,
        "n_samples": len(b.keys),
        "samples_per_problem": {"min": n_min, "max": int(b.counts.max())},
        "ks": used,
        "ks_skipped": [k for k in ks if k not in used],
        "pass@1": float(np.mean(correct_count / b.counts)),
        "answered": float(answered.mean()),
        "mean_tokens_per_sample": float(b.tokens.mean()),
        "inconsistent_keys": inconsistent,
        "method_order": list(methods),  # report order (metrics.json sorts the keys)
        "methods": methods,
        "auroc": auroc,
    }
