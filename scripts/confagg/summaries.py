"""The numbers of the reports, apart from their pages: every method's results as tables
(mean ± std over seeds), lighteval's metric names, calibration (reliability bins, ROC), accuracy
by difficulty, the rows of summary.csv and two runs compared (a part of the report stage)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from confagg import stats
from confagg.confidence import METRICS
from confagg.scoring import evaluate_benchmark, method_info, per_problem

# --- tables of the evaluation's results ------------------------------------------------


def flatten(result: dict) -> pd.DataFrame:
    """One row per (method, k) of a ``confagg.scoring.evaluate_benchmark`` result: ``seed,
    method, family, metric, eta, label, k, accuracy, tokens_per_problem, n_sets, same_as``
    (and the online methods' ``tokens_saved_per_problem``, ``traces_per_problem``)."""
    rows = [
        {
            "seed": result["seed"],
            "method": name,
            **{f: info[f] for f in ("family", "metric", "eta", "label")},
            "k": int(k),
            "same_as": None,
            **{key: value for key, value in cell.items() if key != "by_train_seed"},
        }
        for name, info in _in_order(result)
        for k, cell in info["by_k"].items()
    ]
    return pd.DataFrame(rows)


def _in_order(result: dict) -> list[tuple[str, dict]]:
    """The result's methods in its ``method_order`` (then any others)."""
    methods = result["methods"]
    names = [n for n in result.get("method_order", []) if n in methods]
    return [(n, methods[n]) for n in dict.fromkeys([*names, *methods])]


def _common(values: pd.Series):
    """The one value every seed agrees on (None if they differ or it is missing)."""
    unique = set(values)
    return unique.pop() if len(unique) == 1 else None


# Report order: families, then confidence metrics; aggregators last, in the config's order.
_FAMILY_ORDER = ("pass", "majority", "weighted", "best", "filter", "online", "aggregator")


def _report_order(summary: pd.DataFrame) -> pd.DataFrame:
    families = {f: i for i, f in enumerate(_FAMILY_ORDER)}
    first = {m: i for i, m in enumerate(dict.fromkeys(summary["method"]))}
    ranks = pd.DataFrame(
        {
            "family": summary["family"].map(families).fillna(len(families)),
            "eta": pd.to_numeric(summary["eta"]).fillna(0.0),
            "metric": summary["metric"].map({m: i for i, m in enumerate(METRICS)}).fillna(-1),
            "first": summary["method"].map(first),
            "k": summary["k"],
        }
    )
    order = ranks.sort_values(list(ranks.columns), kind="stable").index
    return summary.loc[order].reset_index(drop=True)


# --- metric names as lighteval writes them -----------------------------------------------

# method (family) -> lighteval-style metric; the methods lighteval lacks follow its grammar
_LIGHTEVAL_BASE = {
    "pass": "pass@k",
    "majority": "maj@k",
    "weighted": "weighted_maj@k",
    "best": "best_of@k",
    "filter": "deepconf@k",
    "online": "deepconf_online@k",
}


def samples_n(results: Sequence[dict]) -> str:
    """The samples per problem the estimates read (``"32"``; ``"30-32"`` when problems or seeds
    differ)."""
    lo = min(r["samples_per_problem"]["min"] for r in results)
    hi = max(r["samples_per_problem"]["max"] for r in results)
    return str(hi) if lo == hi else f"{lo}-{hi}"


def lighteval_name(method: str, k: int | str, n: str) -> str:
    """A method's metric name as lighteval writes it, ``<metric>:k=<k>&n=<n>`` (``pass@k:k=1&n=32``,
    ``maj@k:k=8&n=32``); confidence-based methods add ``&eta=`` and ``&conf=`` (the metric),
    an aggregator variant is ``<name>@k``."""
    info = method_info(method)
    base = _LIGHTEVAL_BASE.get(info["family"], f"{method}@k")
    if info["family"] == "online" and method.endswith(":released"):
        base = "deepconf_online_released@k"  # the released code's definition (no consensus stop)
    params = [f"k={k}", f"n={n}"]
    if info["eta"] is not None:
        params.append(f"eta={info['eta']:g}")
    if info["metric"] is not None:
        params.append(f"conf={info['metric']}")
    return f"{base}:{'&'.join(params)}"


# cell keys only some methods have (DeepConf-online, the aggregators): NaN elsewhere
_OPTIONAL_CELLS = (
    "tokens_saved_per_problem",
    "prompt_tokens_per_problem",
    "no_answer_share",
    "accuracy_answered",
)


def train_seed_spread(results: Sequence[dict]) -> pd.DataFrame:
    """Per (method, k) of the aggregators with several training runs: ``n_train_seeds``,
    ``train_accuracy_std`` (the sample standard deviation over training runs of each run's
    accuracy averaged over the evaluation seeds) and ``train_seeds``."""
    rows = [
        {"method": name, "k": int(k), "train_seed": int(seed), "accuracy": run["accuracy"]}
        for r in results
        for name, info in r["methods"].items()
        for k, cell in info["by_k"].items()
        for seed, run in (cell.get("by_train_seed") or {}).items()
    ]
    columns = ["method", "k", "n_train_seeds", "train_accuracy_std", "train_seeds"]
    if not rows:
        return pd.DataFrame(columns=columns)
    runs = pd.DataFrame(rows).groupby(["method", "k", "train_seed"])["accuracy"].mean()
    return (
        runs.reset_index()
        .groupby(["method", "k"], sort=False)
        .agg(
            n_train_seeds=("train_seed", "nunique"),
            train_accuracy_std=("accuracy", "std"),
            train_seeds=("train_seed", lambda s: " ".join(map(str, sorted(s)))),
        )
        .reset_index()[columns]
    )


def seed_summary(results: Sequence[dict]) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1; NaN with one seed) over evaluation seeds,
    per (method, k): ``method, family, metric, eta, label, k, n, name, n_seeds, accuracy_mean,
    accuracy_std, tokens_mean, tokens_std, saved_mean, prompt_tokens_mean,
    no_answer_share_mean, accuracy_answered_mean, same_as`` (``same_as`` where every seed has
    the same one; ``name`` as lighteval writes it, ``n`` the samples per problem) and, for
    aggregators with several training runs, ``n_train_seeds``, ``train_accuracy_std`` (over
    training runs: :func:`train_seed_spread`), ``train_seeds``."""
    flat = pd.concat([flatten(r) for r in results], ignore_index=True)
    for column in _OPTIONAL_CELLS:
        if column not in flat:
            flat[column] = np.nan
    stats = (
        flat.groupby(["method", "k"], sort=False)
        .agg(
            n_seeds=("seed", "nunique"),
            accuracy_mean=("accuracy", "mean"),
            accuracy_std=("accuracy", "std"),
            tokens_mean=("tokens_per_problem", "mean"),
            tokens_std=("tokens_per_problem", "std"),
            saved_mean=("tokens_saved_per_problem", "mean"),
            prompt_tokens_mean=("prompt_tokens_per_problem", "mean"),
            no_answer_share_mean=("no_answer_share", "mean"),
            accuracy_answered_mean=("accuracy_answered", "mean"),
            same_as=("same_as", _common),
        )
        .reset_index()
        .merge(train_seed_spread(results), on=["method", "k"], how="left")
    )
    info = flat.drop_duplicates("method")[["method", "family", "metric", "eta", "label"]]
    cols = ["method", "family", "metric", "eta", "label", "k"]
    merged = stats.merge(info, on="method", how="left")[cols + list(stats.columns[2:])]
    n = samples_n(results)
    names = [lighteval_name(m, k, n) for m, k in zip(merged["method"], merged["k"], strict=True)]
    merged.insert(len(cols), "n", n)
    merged.insert(len(cols) + 1, "name", names)
    return _report_order(merged)


# --- uncertainty over problems: the headline and the paired tests -------------------------


def seeds_per_problem(seeds: Sequence[tuple[dict, pd.DataFrame, pd.DataFrame | None]]):
    """Each problem's accuracy and tokens per (method, k), averaged over the evaluation seeds
    (each seed: its ``metrics.json`` result, candidates, aggregator outputs), scored as
    ``confagg.evaluate`` scores them (:func:`confagg.scoring.per_problem`): ``method, k,
    problem_id, accuracy, tokens``."""
    frames = [
        per_problem(
            cands,
            result["ks"],
            result["seed"],
            shuffle=result.get("shuffle", False),
            aggregator=agg,
        )
        for result, cands, agg in seeds
    ]
    keys = ["method", "k", "problem_id"]
    both = pd.concat(frames, ignore_index=True)
    return both.groupby(keys, sort=False)[["accuracy", "tokens"]].mean().reset_index()


def best_weighted_vote(summary: pd.DataFrame) -> str | None:
    """The confidence-weighted vote with the highest mean accuracy over the evaluated k > 1
    (at k = 1 every vote is the one sample); ties: the first in report order (METRICS)."""
    weighted = summary[(summary["family"] == "weighted") & (summary["k"] > 1)]
    if weighted.empty:
        return None
    means = weighted.groupby("method", sort=False)["accuracy_mean"].mean()
    return str(means.idxmax())


class _PerProblem:
    """Per-problem vectors of (method, k), the problems in one order."""

    def __init__(self, frame: pd.DataFrame):
        self.problems = sorted(frame["problem_id"].unique())
        self.wide = frame.pivot_table(
            index="problem_id", columns=["method", "k"], values=["accuracy", "tokens"]
        ).reindex(self.problems)

    def has(self, method: str, k: int) -> bool:
        return ("accuracy", method, k) in self.wide.columns

    def ks(self, method: str) -> list[int]:
        return sorted({k for q, m, k in self.wide.columns if m == method and q == "accuracy"})

    def get(self, method: str, k: int, quantity: str = "accuracy") -> np.ndarray:
        return self.wide[(quantity, method, k)].to_numpy(np.float64)


def headline_rows(pp: _PerProblem, summary: pd.DataFrame) -> list[dict]:
    """For each aggregator at each set size and each rival vote (maj@k and the best
    confidence-weighted vote): :func:`confagg.stats.headline`, labelled."""
    label = dict(zip(summary["method"], summary["label"], strict=False))
    rivals = ["majority", best_weighted_vote(summary)]
    rows = []
    aggregators = summary.loc[summary["family"] == "aggregator", ["method", "k"]]
    for name, k in aggregators.itertuples(index=False):
        if not pp.has(name, k):
            continue
        for rival in filter(None, rivals):
            vote = {j: (pp.get(rival, j), pp.get(rival, j, "tokens")) for j in pp.ks(rival)}
            h = stats.headline(pp.get(name, k), pp.get(name, k, "tokens"), vote)
            rows.append(
                {
                    "aggregator": name,
                    "label": label.get(name, name),
                    "set_size": int(k),
                    "vote": rival,
                    "vote_label": label.get(rival, rival),
                    "max_k": max(vote),
                    **h,
                }
            )
    return rows


def paired_rows(pp: _PerProblem, summary: pd.DataFrame, headline, variants) -> list[dict]:
    """The paired comparisons on the same problems and sets (:func:`confagg.stats.paired_test`):
    each aggregator against maj@k at its k and at the headline's k, and the variant pairs
    (:func:`confagg.stats.variant_pairs`) at every k both ran."""
    label = dict(zip(summary["method"], summary["label"], strict=False))
    wanted = []
    for h in headline:
        if h["vote"] != "majority":
            continue
        name, k = h["aggregator"], h["set_size"]
        wanted.append(("vs maj@k at the same k", name, k, "majority", k))
        if h["k"] is not None and h["k"] != k:
            wanted.append(("vs maj@k at the headline's k", name, k, "majority", h["k"]))
    for what, a, b in stats.variant_pairs(variants):
        for k in sorted(set(pp.ks(a)) & set(pp.ks(b))):
            wanted.append((what, a, k, b, k))
    rows = []
    for what, a, ka, b, kb in wanted:
        t = stats.paired_test(pp.get(a, ka), pp.get(b, kb))
        rows.append(
            {
                "comparison": what,
                "a": a,
                "a_label": label.get(a, a),
                "a_k": int(ka),
                "b": b,
                "b_label": label.get(b, b),
                "b_k": int(kb),
                **t,
            }
        )
    return rows


def uncertainty(
    seeds: Sequence[tuple[dict, pd.DataFrame, pd.DataFrame | None]],
    summary: pd.DataFrame,
    variants: Sequence[dict] = (),
) -> dict:
    """The headline and the paired tests of one benchmark, with how they were computed (the
    ``uncertainty`` section of its report's metrics.json)."""
    pp = _PerProblem(seeds_per_problem(seeds))
    headline = headline_rows(pp, summary)
    return {
        "n_problems": len(pp.problems),
        "interval": f"{stats.LEVEL:.0%} percentile bootstrap over problems",
        "test": "paired sign-flip permutation test over problems (two-sided)",
        "resamples": stats.RESAMPLES,
        "alpha": stats.ALPHA,
        "headline": headline,
        "paired": paired_rows(pp, summary, headline, variants),
    }


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines log. A torn last line (a kill mid-write) is skipped; any other
    line that is not a JSON object stops with the file and line."""
    lines = Path(path).read_text().splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            if i == len(lines):
                continue
            raise ValueError(f"{path}:{i}: not a JSON line of a training log") from None
        if not isinstance(row, dict) or "step" not in row:
            raise ValueError(f"{path}:{i}: a training log row is an object with a 'step'")
        rows.append(row)
    return rows


# --- calibration of the confidence metrics ------------------------------------------------

RELIABILITY_BINS = 10


def reliability_bins(conf, correct, bins: int = RELIABILITY_BINS) -> pd.DataFrame:
    """Samples in (about) equal-count bins of a confidence metric (its quantiles; tied values
    share a bin): ``confidence`` (the bin's mean), ``share_correct``, ``n``. NaN confidences
    are left out. (DeepConf's confidences are not probabilities: the diagram shows how the
    share of correct samples rises with confidence, not a distance to a diagonal.)"""
    c = np.asarray(conf, dtype=float)
    y = np.asarray(correct, dtype=bool)
    keep = np.isfinite(c)
    c, y = c[keep], y[keep]
    if not len(c):
        return pd.DataFrame(columns=["confidence", "share_correct", "n"])
    edges = np.unique(np.quantile(c, np.linspace(0, 1, bins + 1)))
    which = np.searchsorted(edges[1:-1], c, side="right")
    frame = pd.DataFrame({"bin": which, "c": c, "y": y})
    out = frame.groupby("bin").agg(
        confidence=("c", "mean"), share_correct=("y", "mean"), n=("y", "size")
    )
    return out.reset_index(drop=True)


def roc_curve(conf, correct) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of predicting a correct sample by a confidence
    above a threshold, at every distinct threshold from the highest (tied samples enter
    together, so the area under it is the AUROC with ties counting one half). NaN confidences
    are left out."""
    c = np.asarray(conf, dtype=float)
    y = np.asarray(correct, dtype=bool)
    keep = np.isfinite(c)
    c, y = c[keep], y[keep]
    order = np.argsort(-c, kind="stable")
    c, y = c[order], y[order]
    last_of_tie = (
        np.r_[np.flatnonzero(np.diff(c) != 0), len(c) - 1] if len(c) else np.array([], int)
    )
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


# --- accuracy by difficulty ---------------------------------------------------------------

# Problems binned by their pass@1 (every seed's samples pooled): the bins, in order.
DIFFICULTY_BINS = (
    "0% (never right)",
    "(0, 25%]",
    "(25, 50%]",
    "(50, 75%]",
    "(75, 100%)",
    "100% (always right)",
)


def difficulty_bin(right: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """The ``DIFFICULTY_BINS`` index of problems with ``right`` of ``samples`` correct (exact
    integer arithmetic: a pass@1 of exactly 25% falls in ``(0, 25%]``)."""
    right = np.asarray(right, dtype=np.int64)
    samples = np.asarray(samples, dtype=np.int64)
    quarter = -(-4 * right // samples)  # ceil(4 * pass@1): 1..4 inside (0, 1]
    return np.where(right == 0, 0, np.where(right == samples, 5, quarter))


def accuracy_by_difficulty(
    seeds: Sequence[tuple[dict, pd.DataFrame, pd.DataFrame | None]], k: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every method's accuracy at ``k`` on the problems of each difficulty bin, mean and std
    over seeds (each seed: its ``metrics.json`` result, candidates, aggregator outputs).
    Returns ``(bins: bin, label, n_problems, accuracy: method, label, family, metric, bin,
    accuracy_mean, accuracy_std)``; the row ``method == "pass@1"`` is one sample's accuracy.
    Scored as ``confagg.evaluate`` scores the whole benchmark (:func:`evaluate_benchmark` on the
    bin's problems; DeepConf-online, which needs the token confidences, is left out), so the
    bins' accuracies averaged with their problem counts give the benchmark's."""
    pooled = pd.concat([c[["problem_id", "correct"]] for _, c, _ in seeds])
    per_problem = pooled.groupby("problem_id")["correct"].agg(["sum", "size"])
    which = pd.Series(difficulty_bin(per_problem["sum"], per_problem["size"]), per_problem.index)
    rows = []
    for b in sorted(set(which)):
        problems = set(which.index[which == b])
        for result, cands, agg in seeds:
            part = cands[cands["problem_id"].isin(problems)]
            agg_part = None if agg is None else agg[agg["problem_id"].isin(problems)]
            scored = evaluate_benchmark(
                part,
                sorted({1, k}),
                result["seed"],
                shuffle=result.get("shuffle", False),
                aggregator=agg_part,
            )
            flat = flatten(scored)
            one = flat[(flat["method"] == "pass") & (flat["k"] == 1)].assign(
                method="pass@1", family="sample", metric=None, label="one sample (pass@1)"
            )
            at_k = flat[flat["k"] == k]
            rows.append(pd.concat([one, at_k]).assign(bin=b))
    flat = pd.concat(rows, ignore_index=True)
    accuracy = (
        flat.groupby(["method", "bin"], sort=False)
        .agg(
            label=("label", "first"),
            family=("family", "first"),
            metric=("metric", "first"),
            accuracy_mean=("accuracy", "mean"),
            accuracy_std=("accuracy", "std"),
        )
        .reset_index()
    )
    counts = which.value_counts()
    bins = pd.DataFrame(
        {
            "bin": sorted(counts.index),
            "label": [DIFFICULTY_BINS[b] for b in sorted(counts.index)],
            "n_problems": [int(counts[b]) for b in sorted(counts.index)],
        }
    )
    return bins, accuracy


def nanmean(values) -> float:
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan


# summary.csv: one row per benchmark x method x k (and one per benchmark x confidence metric
# for the AUROCs); mean, std and per_seed are fractions (accuracy, or AUROC where quantity
# says so), per_seed and seeds space-separated in the same order.
SUMMARY_COLUMNS = (
    "benchmark",
    "name",
    "quantity",
    "method",
    "label",
    "family",
    "metric",
    "eta",
    "k",
    "n",
    "n_seeds",
    "seeds",
    "mean",
    "std",
    "per_seed",
    "tokens_mean",
    "tokens_std",
    "same_as",
)


def _joined(values) -> str:
    return " ".join("nan" if v is None else f"{v:.10g}" for v in values)


def summary_rows(metrics: dict) -> pd.DataFrame:
    """The ``SUMMARY_COLUMNS`` rows of one benchmark's report ``metrics.json``."""
    summary = pd.DataFrame(metrics["summary"])
    results = metrics["per_seed"]
    seeds = " ".join(str(r["seed"]) for r in results)
    per_seed = pd.concat([flatten(r) for r in results], ignore_index=True)
    accuracy = per_seed.groupby(["method", "k"], sort=False)["accuracy"].agg(list)
    methods = summary.assign(
        benchmark=metrics["benchmark"],
        quantity="accuracy",
        seeds=seeds,
        mean=summary["accuracy_mean"],
        std=summary["accuracy_std"],
        per_seed=[
            _joined(accuracy[(m, k)]) for m, k in zip(summary["method"], summary["k"], strict=True)
        ],
    )
    n = samples_n(results)
    auroc = pd.DataFrame(
        [
            {
                "benchmark": metrics["benchmark"],
                "name": f"{quantity}:conf={m}&n={n}",
                "quantity": quantity,
                "method": f"{quantity}:{m}",
                "label": f"AUROC of {m} ({how})",
                "family": "auroc",
                "metric": m,
                "n": n,
                "n_seeds": len(values),
                "seeds": seeds,
                "mean": nanmean(values),
                "std": float(np.nanstd(np.array(values, dtype=float), ddof=1))
                if len(values) > 1
                else math.nan,
                "per_seed": _joined(values),
            }
            for m in METRICS
            for quantity, key, how in (
                ("auroc", "pooled", "all samples pooled"),
                ("auroc_per_problem", "per_problem_mean", "mean over problems"),
            )
            for values in [[r["auroc"][m][key] for r in results]]
        ]
    )
    rows = pd.concat([methods, auroc], ignore_index=True).reindex(columns=list(SUMMARY_COLUMNS))
    return rows.astype({"k": "Int64", "n_seeds": "Int64"})  # k is blank for the AUROCs


# --- two runs side by side ----------------------------------------------------------------


def _summary_csv(run: Path) -> Path:
    """A run's summary.csv: the file itself, or inside a ``results/<run_name>`` folder."""
    path = Path(run) / "summary.csv" if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no summary.csv (give a results/<run_name> folder whose report_summary ran,"
            " or the file)"
        )
    return path


def compare_runs(a: Path, b: Path) -> pd.DataFrame:
    """Two runs' summary.csv rows joined on (benchmark, quantity, method, k): ``mean_a, std_a,
    n_seeds_a, name_a`` and the same for b, ``difference`` (b - a) and ``beyond_2se`` (the
    difference exceeds twice its standard error from the seeds' spread; NaN with one seed);
    rows in a's order, then those only b has."""
    keys = ["benchmark", "quantity", "method", "k"]
    frames = []
    for run in (a, b):
        frame = pd.read_csv(_summary_csv(run), keep_default_na=True)
        missing = [c for c in SUMMARY_COLUMNS if c not in frame]
        if missing:
            raise ValueError(f"{_summary_csv(run)}: not a confagg summary.csv (no {missing})")
        frames.append(frame)
    cols = ["mean", "std", "n_seeds", "name"]
    kept = [*keys, "label", *cols, "order"]
    a, b = (f.assign(order=np.arange(len(f)) + i * len(frames[0])) for i, f in enumerate(frames))
    both = a[kept].merge(b[kept], on=keys, how="outer", suffixes=("_a", "_b"))
    # a's rows in a's order, then those only b has (b's are numbered after a's; an outer merge
    # sorts the keys)
    rank = both["order_a"].fillna(both["order_b"])
    both = both.iloc[np.argsort(rank.to_numpy(), kind="stable")]
    both = both.drop(columns=["order_a", "order_b"]).reset_index(drop=True)
    both["label"] = both["label_a"].fillna(both["label_b"])
    both["difference"] = both["mean_b"] - both["mean_a"]
    se = np.sqrt(both["std_a"] ** 2 / both["n_seeds_a"] + both["std_b"] ** 2 / both["n_seeds_b"])
    both["beyond_2se"] = (both["difference"].abs() > 2 * se).where(se.notna())
    return both.drop(columns=["label_a", "label_b"])


def problems_label(n: int) -> str:
    return f"{n} problem" if n == 1 else f"{n} problems"
