"""The reports: one per benchmark from its seeds' metrics, one table across benchmarks, the
training curves, and two runs side by side.

* ``python -m confagg.report benchmark ...``: one benchmark's seeds (each a ``metrics.json`` of
  confagg.evaluate, its ``candidates.parquet`` and its ``aggregators.parquet``) ->
  ``report.html`` (self-contained, plots embedded; the page is ``templates/report.html``),
  ``metrics.json`` (every number of the HTML, per seed and mean ± std over seeds),
  ``summary.md`` (a table to paste into a paper) and each figure as a PNG of its own
  (``FIGURES``; the rule registers them for ``snakemake --report``).
* ``python -m confagg.report summary ...``: every benchmark's ``metrics.json`` -> one table
  (``summary.md``) and every number across benchmarks (``summary.csv``, ``SUMMARY_COLUMNS``).
* ``python -m confagg.report training LOG... --out PNG``: the GRPO training curves of the
  training runs (each ``train/<variant>/log.jsonl``; rows as ``confagg.resume`` writes them).
* ``python -m confagg.report compare RUN_A RUN_B --out compare.html``: two runs' summary.csv
  side by side with the differences.

What the tables say: methods at equal cost (every one reads the same k samples) apart from the
oracle pass@k (it needs the gold answer to pick); a method whose picks equal an earlier
method's in every set is marked "= <that method>" (e.g. DeepConf top 10% at k = 8 keeps one
trace: it is best-of-8); ± is the standard deviation over the evaluation seeds, with the
training runs fixed (one per training variant): it measures the candidates' and the
aggregators' sampling, not training. Every method at every k also carries its name as
lighteval writes metrics (``pass@k:k=1&n=32``, ``maj@k:k=8&n=32``: ``n`` the samples per
problem the estimate reads; :func:`lighteval_name`).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from confagg import methods as mt
from confagg.confidence import METRICS
from confagg.files import atomic_path, write_json
from confagg.scoring import AGGREGATOR_COLUMNS, evaluate_benchmark, method_info
from confagg.tables import AGG_OUTPUTS, EVAL_CANDIDATES, read_table

# The page of one benchmark's report (string.Template: $name placeholders, CSS braces as is).
_TEMPLATE = Path(__file__).with_name("templates") / "report.html"

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
            **cell,
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
    params = [f"k={k}", f"n={n}"]
    if info["eta"] is not None:
        params.append(f"eta={info['eta']:g}")
    if info["metric"] is not None:
        params.append(f"conf={info['metric']}")
    return f"{base}:{'&'.join(params)}"


def seed_summary(results: Sequence[dict]) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1; NaN with one seed) over seeds, per
    (method, k): ``method, family, metric, eta, label, k, n, name, n_seeds, accuracy_mean,
    accuracy_std, tokens_mean, tokens_std, saved_mean, same_as`` (``same_as`` where every seed
    has the same one; ``name`` as lighteval writes it, ``n`` the samples per problem)."""
    flat = pd.concat([flatten(r) for r in results], ignore_index=True)
    if "tokens_saved_per_problem" not in flat:
        flat["tokens_saved_per_problem"] = np.nan
    stats = (
        flat.groupby(["method", "k"], sort=False)
        .agg(
            n_seeds=("seed", "nunique"),
            accuracy_mean=("accuracy", "mean"),
            accuracy_std=("accuracy", "std"),
            tokens_mean=("tokens_per_problem", "mean"),
            tokens_std=("tokens_per_problem", "std"),
            saved_mean=("tokens_saved_per_problem", "mean"),
            same_as=("same_as", _common),
        )
        .reset_index()
    )
    info = flat.drop_duplicates("method")[["method", "family", "metric", "eta", "label"]]
    cols = ["method", "family", "metric", "eta", "label", "k"]
    merged = stats.merge(info, on="method", how="left")[cols + list(stats.columns[2:])]
    n = samples_n(results)
    names = [lighteval_name(m, k, n) for m, k in zip(merged["method"], merged["k"], strict=True)]
    merged.insert(len(cols), "n", n)
    merged.insert(len(cols) + 1, "name", names)
    return _report_order(merged)


# --- the per-benchmark report -------------------------------------------------------------


def _fmt(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


# One panel per method family; within a panel, colour by confidence metric. maj@k is drawn in
# every panel as the reference (grey), the aggregators as stars at k = m.
_PANELS = [
    ("majority", "maj@k and pass@k (oracle, dashed)"),
    ("weighted", "confidence-weighted vote"),
    ("best", "best-of-k by confidence"),
    ("filter10", "DeepConf filter, top 10%"),
    ("filter90", "DeepConf filter, top 90%"),
    ("online", "DeepConf-online (tokens actually spent)"),
    ("aggregator", "aggregators at k = m"),
]
_METRIC_COLOURS = {
    "mean": "tab:blue",
    "bottom_10_percent": "tab:orange",
    "lowest_group": "tab:green",
    "tail": "tab:red",
}
_AGGREGATOR_MARKERS = ("*", "P", "X", "D", "^", "v")


def _panel_of(row) -> str:
    if row["family"] == "filter":
        return f"filter{row['eta']:g}"
    return "majority" if row["family"] == "pass" else row["family"]


def _family_plot(summary: pd.DataFrame, x: str, xlabel: str, benchmark: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    panel = summary.apply(_panel_of, axis=1)
    shown = [(key, name) for key, name in _PANELS if (panel == key).any()]
    cols = 4 if len(shown) > 3 else len(shown)
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.3 * rows), sharey=True, squeeze=False)
    reference = summary[summary["family"] == "majority"].sort_values(x)
    for ax, (key, name) in zip(axes.ravel(), shown, strict=False):
        if key != "majority":
            ax.plot(
                reference[x],
                100 * reference["accuracy_mean"],
                color="0.6",
                marker="o",
                markersize=3,
                label="maj@k",
            )
        aggregators = 0
        n_aggregators = summary.loc[panel == key, "method"].nunique() if key == "aggregator" else 0
        for _, group in summary[panel == key].groupby("method", sort=False):
            g = group.sort_values(x)
            family, metric = g["family"].iloc[0], g["metric"].iloc[0]
            style = {"marker": "o", "markersize": 4}
            if family == "aggregator":
                marker = _AGGREGATOR_MARKERS[aggregators % len(_AGGREGATOR_MARKERS)]
                style = {"marker": marker, "markersize": 10, "linestyle": "none"}
                if x == "k":  # side by side around k = m (log axis: a factor, not a shift)
                    g = g.assign(k=g["k"] * 2 ** (0.08 * (aggregators - (n_aggregators - 1) / 2)))
                aggregators += 1
            elif family == "pass":
                style.update(color="black", linestyle="--")
            elif family == "majority":
                style.update(color="black")
            elif family == "online":
                style.update(color={10.0: "tab:purple"}.get(g["eta"].iloc[0], "tab:brown"))
            else:
                style.update(color=_METRIC_COLOURS.get(metric, "tab:gray"))
            yerr = 100 * g["accuracy_std"].fillna(0) if x == "k" else None
            # within a family's panel its metric (or share) names the line
            short = metric if family in ("weighted", "best", "filter") else g["label"].iloc[0]
            ax.errorbar(g[x], 100 * g["accuracy_mean"], yerr=yerr, capsize=2, label=short, **style)
        ax.set_title(name, fontsize=9)
        ax.set_xscale("log", base=2 if x == "k" else 10)
        if x != "k":  # ticks at 1, 2, 5 x 10^n, written plainly
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes.ravel()[len(shown) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    fig.suptitle(f"{benchmark}: {title}", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def _plots(
    summary: pd.DataFrame, per_seed: pd.DataFrame, candidates: pd.DataFrame, benchmark: str
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {
        "accuracy_vs_k": _family_plot(
            summary,
            "k",
            "k (samples read; the budget for DeepConf-online)",
            benchmark,
            "accuracy against k, one panel per method family",
        ),
        "accuracy_vs_tokens": _family_plot(
            summary,
            "tokens_mean",
            "tokens per problem (samples + aggregator calls)",
            benchmark,
            "accuracy against tokens spent",
        ),
    }

    fig, axes = plt.subplots(1, len(METRICS), figsize=(12, 3))
    for ax, metric in zip(axes, METRICS, strict=True):
        values = candidates[metric].to_numpy(dtype=float)
        ok = candidates["correct"].to_numpy(dtype=bool)
        finite = np.isfinite(values)
        bins = np.histogram_bin_edges(values[finite], bins=30) if finite.any() else 10
        ax.hist(values[finite & ok], bins=bins, alpha=0.6, label="correct", density=True)
        ax.hist(values[finite & ~ok], bins=bins, alpha=0.6, label="incorrect", density=True)
        ax.set_title(metric, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{benchmark}: confidence of correct vs incorrect samples", fontsize=10)
    plots["confidence_histograms"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    kmax = per_seed.groupby("method")["k"].max()
    rows = per_seed[per_seed["k"] == per_seed["method"].map(kmax)]
    labels = list(dict.fromkeys(rows["label"]))
    for i, label in enumerate(labels):
        vals = 100 * rows.loc[rows["label"] == label, "accuracy"].to_numpy(dtype=float)
        ax.scatter(np.full(len(vals), i), vals, s=14)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=75, fontsize=6)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{benchmark}: per-seed spread at each method's largest k")
    plots["seed_spread"] = _png(fig)
    return plots


# --- training curves --------------------------------------------------------------------

# (log row key, panel title, scale): confagg.resume's log rows
_CURVES = (
    ("reward", "reward (mean over the step's rollouts)", 1.0),
    ("kl", "KL to the reference model", 1.0),
    ("completion_length", "completion length (mean tokens)", 1.0),
    ("truncated", "truncated completions (%)", 100.0),
)


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


def training_curves(logs: Sequence[Path]) -> str:
    """Reward, KL, completion length and truncated share against the step, one colour per
    training run (each ``train/<variant>/log.jsonl``, labelled by its variant's folder);
    validation rows (split "eval") dashed. A PNG, base64."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(p).parent.name, pd.DataFrame(read_jsonl(p))) for p in logs]
    fig, axes = plt.subplots(1, len(_CURVES), figsize=(4 * len(_CURVES), 3.2), squeeze=False)
    for ax, (key, title, scale) in zip(axes[0], _CURVES, strict=True):
        drawn = False
        for i, (variant, rows) in enumerate(runs):
            if key not in rows or rows.empty:
                continue
            for split, style in (
                ("train", {"linestyle": "-", "marker": "o"}),
                ("eval", {"linestyle": "--", "marker": "s"}),
            ):
                part = rows[(rows["split"] == split) & rows[key].notna()].sort_values("step")
                if part.empty:
                    continue
                label = variant if split == "train" else f"{variant} (validation)"
                values = scale * part[key].astype(float)
                ax.plot(part["step"], values, color=f"C{i}", markersize=3, label=label, **style)
                drawn = True
        if not drawn:  # e.g. TRL logs no KL with beta = 0
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
        else:
            ax.legend(fontsize=6, loc="best")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("GRPO training curves, one run per training variant", fontsize=11)
    fig.tight_layout()
    return _png(fig)


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


def _calibration_plots(candidates: pd.DataFrame, benchmark: str) -> dict[str, str]:
    """A reliability diagram per confidence metric and their ROC curves (every seed's samples
    pooled; correct vs incorrect as graded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = candidates["correct"].to_numpy(dtype=bool)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.2), sharey=True)
    for ax, metric in zip(axes, METRICS, strict=True):
        bins = reliability_bins(candidates[metric], ok)
        colour = _METRIC_COLOURS.get(metric, "tab:gray")
        se = np.sqrt(bins["share_correct"] * (1 - bins["share_correct"]) / bins["n"].clip(lower=1))
        ax.errorbar(
            bins["confidence"],
            100 * bins["share_correct"],
            yerr=100 * se,
            color=colour,
            marker="o",
            markersize=4,
            capsize=2,
            label="share correct per bin",
        )
        ax.axhline(100 * ok.mean(), color="0.5", linestyle="--", label="all samples")
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(f"confidence (bin mean, {RELIABILITY_BINS} equal-count bins)", fontsize=7)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("correct samples (%)")
    axes[0].legend(fontsize=6, loc="best")
    fig.suptitle(
        f"{benchmark}: reliability of each confidence metric (± binomial s.e.)", fontsize=10
    )
    fig.tight_layout()
    plots = {"reliability": _png(fig)}

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="chance")
    for metric in METRICS:
        fpr, tpr = roc_curve(candidates[metric], ok)
        auc = mt.auroc(candidates[metric].to_numpy(dtype=float), ok)
        ax.plot(
            fpr,
            tpr,
            color=_METRIC_COLOURS.get(metric, "tab:gray"),
            label=f"{metric} (AUROC {auc:.3f})",
        )
    ax.set_xlabel("incorrect samples above the threshold (FPR)", fontsize=8)
    ax.set_ylabel("correct samples above the threshold (TPR)", fontsize=8)
    ax.set_title(f"{benchmark}: ROC of each confidence metric, correct vs incorrect", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    plots["roc"] = _png(fig)
    return plots


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


def _difficulty_plot(bins: pd.DataFrame, accuracy: pd.DataFrame, k: int, benchmark: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = {b: i for i, b in enumerate(bins["bin"])}
    fig, ax = plt.subplots(figsize=(8, 4))
    aggregators = 0
    for _, g in accuracy.groupby("method", sort=False):
        family, metric = g["family"].iloc[0], g["metric"].iloc[0]
        if family == "sample":
            style = {"color": "0.6", "marker": "o"}
        elif family == "majority":
            style = {"color": "black", "marker": "o"}
        elif family == "pass":
            style = {"color": "black", "marker": "o", "linestyle": "--"}
        elif family == "weighted":
            style = {"color": _METRIC_COLOURS.get(metric, "tab:gray"), "marker": ".", "alpha": 0.8}
        elif family == "aggregator":
            marker = _AGGREGATOR_MARKERS[aggregators % len(_AGGREGATOR_MARKERS)]
            style = {"color": f"C{4 + aggregators}", "marker": marker, "markersize": 9}
            aggregators += 1
        else:  # best-of-k and DeepConf filters: in the table
            continue
        label = g["label"].iloc[0] if family != "pass" else f"pass@{k} (oracle)"
        ax.plot(g["bin"].map(x), 100 * g["accuracy_mean"], label=label, **style)
    ax.set_xticks(range(len(bins)))
    ax.set_xticklabels(
        [f"{r.label}\n{_problems(r.n_problems)}" for r in bins.itertuples()], fontsize=7
    )
    ax.set_xlabel("problems binned by pass@1 (every seed's samples pooled)", fontsize=8)
    ax.set_ylabel(f"accuracy at k = {k} (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    ax.set_title(f"{benchmark}: accuracy by problem difficulty, k = {k}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _problems(n: int) -> str:
    return f"{n} problem" if n == 1 else f"{n} problems"


def _difficulty_table(bins: pd.DataFrame, accuracy: pd.DataFrame) -> str:
    head = ["method", *(f"{r.label} ({_problems(r.n_problems)})" for r in bins.itertuples())]
    rows = []
    for _, g in accuracy.groupby("method", sort=False):
        cell = {int(r.bin): _fmt(r.accuracy_mean, r.accuracy_std) for r in g.itertuples()}
        rows.append([g["label"].iloc[0], *(cell.get(int(b), "") for b in bins["bin"])])
    return _html_table(head, rows)


# The lighteval name of a table row, its k the column's
_K_OF_COLUMN = "<k>"


def _table_rows(
    summary: pd.DataFrame, oracle: bool = False
) -> tuple[list[int], list[tuple[str, str, list[str]]]]:
    """(ks, [(label, lighteval name, cells)]) of the methods at equal cost (or, with ``oracle``,
    pass@k alone); a cell whose picks equal an earlier method's says so."""
    ks = sorted(summary["k"].unique().tolist())
    label_of = dict(zip(summary["method"], summary["label"], strict=False))
    part = summary[(summary["family"] == "pass") == oracle]
    rows = []
    for _, g in part.groupby("method", sort=False):
        by_k = {}
        for r in g.itertuples():
            cell = _fmt(r.accuracy_mean, r.accuracy_std)
            if isinstance(r.same_as, str) and r.k > 1:  # at k = 1 every method is the sample
                cell += f" (= {label_of.get(r.same_as, r.same_as)})"
            by_k[int(r.k)] = cell
        name = lighteval_name(g["method"].iloc[0], _K_OF_COLUMN, g["n"].iloc[0])
        rows.append((g["label"].iloc[0], name, [by_k.get(k, "") for k in ks]))
    return ks, rows


def _spread_note(n_seeds: int) -> str:
    if n_seeds > 1:
        return (
            f"mean ± std over {n_seeds} evaluation seeds (the training runs fixed: ± measures "
            "the sampling of candidates and aggregators, not training)"
        )
    return "one evaluation seed (no spread)"


_NAME_HEAD = f"name (lighteval; {_K_OF_COLUMN}: the column's k)"


def _markdown_table(ks: list[int], rows: list[tuple[str, str, list[str]]]) -> list[str]:
    return [
        f"| method | {_NAME_HEAD} | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
        *[f"| {label} | `{name}` | " + " | ".join(cells) + " |" for label, name, cells in rows],
    ]


def summary_markdown(
    benchmark: str, summary: pd.DataFrame, pass1: tuple[float, float], n_seeds: int
) -> str:
    lines = [
        f"## {benchmark}: accuracy (%), {_spread_note(n_seeds)}",
        "",
        f"pass@1 (`{lighteval_name('pass', 1, summary['n'].iloc[0])}`): {_fmt(*pass1)}",
        "",
        "Methods at equal cost (each reads the same k samples; at k = 1 all are the sample's",
        "answer). (= X): the same picks as X in every set.",
        "",
        *_markdown_table(*_table_rows(summary)),
        "",
        "Oracle (picks with the gold answer; an upper bound, not a method):",
        "",
        *_markdown_table(*_table_rows(summary, oracle=True)),
    ]
    return "\n".join(lines) + "\n"


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def _method_table(summary: pd.DataFrame, oracle: bool = False) -> str:
    ks, rows = _table_rows(summary, oracle)
    head = ["method", _NAME_HEAD, *(f"k={k}" for k in ks)]
    return _html_table(head, [[lab, name, *c] for lab, name, c in rows])


def _aggregator_table(summary: pd.DataFrame) -> str:
    """The aggregator variants side by side at k = m, with maj@m beside them."""
    agg = summary[summary["family"] == "aggregator"]
    if agg.empty:
        return "<p>No aggregator variant was evaluated.</p>"
    m = int(agg["k"].max())
    at = summary[(summary["k"] == m) & summary["family"].isin(["majority", "aggregator"])]
    maj = at.loc[at["family"] == "majority", "accuracy_mean"]
    rows = [
        [
            r.label,
            _fmt(r.accuracy_mean, r.accuracy_std),
            "" if maj.empty else f"{100 * (r.accuracy_mean - maj.iloc[0]):+.1f}",
            f"{r.tokens_mean:.0f}",
        ]
        for r in at.itertuples()
    ]
    return _html_table([f"at k = m = {m}", "accuracy (%)", "vs maj@m", "tokens"], rows)


def _online_table(summary: pd.DataFrame) -> str:
    online = summary[summary["family"] == "online"]
    if online.empty:
        return "<p>No k above the DeepConf-online warm-up was evaluated.</p>"
    rows = [
        [
            r.label,
            r.k,
            _fmt(r.accuracy_mean, r.accuracy_std),
            f"{r.tokens_mean:.0f}",
            f"{r.saved_mean:.0f} ({100 * r.saved_mean / (r.tokens_mean + r.saved_mean):.0f}%)",
        ]
        for r in online.itertuples()
    ]
    head = ["method", "budget k", "accuracy (%)", "tokens spent", "tokens saved"]
    return _html_table(head, rows)


def _auroc_table(results: Sequence[dict]) -> str:
    rows = []
    for m in METRICS:
        pooled = [r["auroc"][m]["pooled"] for r in results]
        per_problem = [r["auroc"][m]["per_problem_mean"] for r in results]
        n = [r["auroc"][m]["n_problems"] for r in results]
        rows.append(
            [
                m,
                _fmt(_nanmean(pooled), None, 1, 3),
                _fmt(_nanmean(per_problem), None, 1, 3),
                "/".join(map(str, n)),
            ]
        )
    head = ["metric", "pooled (all samples)", "per-problem mean", "problems with both classes"]
    return _html_table(head, rows)


def _nanmean(values) -> float:
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan


def _counts_table(results: Sequence[dict]) -> str:
    rows = []
    for r in results:
        c = r.get("sample_counts", {})
        rows.append(
            [
                r["seed"],
                r["n_samples"],
                c.get("no_answer", ""),
                c.get("unfinished_thinking", ""),
                c.get("truncated", ""),
            ]
        )
    return _html_table(
        ["seed", "samples", "no answer", "of them: thinking never ended", "cut by max_tokens"], rows
    )


def _contamination(benchmark: str, curation: Path | None) -> str:
    if curation is None:
        return "<p>(no curation summary given)</p>"
    found = json.loads(Path(curation).read_text()).get("contaminated", [])
    mine = [c for c in found if any(m.startswith(f"{benchmark}:") for m in c["matches"])]
    exact = sum(c.get("how") == "exact" for c in mine)
    text = (
        f"<p>Training-pool problems removed as copies of {html.escape(benchmark)} problems: "
        f"{len(mine)} ({exact} exact, {len(mine) - exact} sharing a word n-gram).</p>"
    )
    examples = [[c["id"], ", ".join(c["matches"]), c.get("ngram") or "(exact)"] for c in mine[:5]]
    if examples:
        text += _html_table(["pool problem", "matches", "shared n-gram"], examples)
    return text


class SeedFiles(NamedTuple):
    """One evaluation seed's files: its metrics, candidates and (optional) aggregator outputs."""

    metrics: Path
    candidates: Path
    aggregators: Path | None = None


# Every figure of a benchmark's report, in the page's order; each can be written as a PNG too.
FIGURES = (
    "accuracy_vs_k",
    "accuracy_vs_tokens",
    "reliability",
    "roc",
    "accuracy_by_difficulty",
    "confidence_histograms",
    "seed_spread",
)


def _set_size(summary: pd.DataFrame) -> int:
    """k = m, the aggregators' set size (the largest k when no aggregator was evaluated)."""
    set_sizes = summary.loc[summary["family"] == "aggregator", "k"]
    return int(set_sizes.max() if len(set_sizes) else summary["k"].max())


def _img(name: str, data: str) -> str:
    return f'<img alt="{name}" src="data:image/png;base64,{data}">'


def _write_png(data: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(base64.b64decode(data))


def build_report(
    benchmark: str,
    seeds: Sequence[SeedFiles],
    out: Mapping[str, Path],
    curation: Path | None = None,
    training: Path | None = None,
    figures: Mapping[str, Path] | None = None,
) -> None:
    """One benchmark's report from its seeds, the curation summary (for the contamination it
    found) and the training curves (``training``: a PNG of :func:`training_curves`, embedded):
    ``out["html"]`` (the page), ``out["metrics"]`` (every number of it), ``out["summary"]`` (a
    markdown table) and each of ``figures`` (``{name in FIGURES: png path}``)."""
    unknown = sorted(set(figures or {}) - set(FIGURES))
    if unknown:
        raise ValueError(f"no figure named {unknown} (figures: {', '.join(FIGURES)})")
    results = [json.loads(Path(s.metrics).read_text()) for s in seeds]
    frames = [read_table(s.candidates, EVAL_CANDIDATES).to_pandas() for s in seeds]
    aggregators = [
        None
        if s.aggregators is None
        else read_table(s.aggregators, AGG_OUTPUTS, list(AGGREGATOR_COLUMNS)).to_pandas()
        for s in seeds
    ]
    candidates = pd.concat(frames)
    summary = seed_summary(results)
    per_seed = pd.concat([flatten(r) for r in results], ignore_index=True)
    pass1 = np.array([r["pass@1"] for r in results], dtype=float)
    pass1_stats = (float(pass1.mean()), float(pass1.std(ddof=1)) if len(pass1) > 1 else math.nan)
    k = _set_size(summary)
    bins, by_difficulty = accuracy_by_difficulty(
        list(zip(results, frames, aggregators, strict=True)), k
    )
    metrics = {
        "benchmark": benchmark,
        "seeds": [r["seed"] for r in results],
        "pass@1": {"mean": pass1_stats[0], "std": pass1_stats[1]},
        "auroc": {
            m: {
                kind: {"mean": _nanmean(v), "per_seed": v}
                for kind, v in (
                    ("pooled", [r["auroc"][m]["pooled"] for r in results]),
                    ("per_problem_mean", [r["auroc"][m]["per_problem_mean"] for r in results]),
                )
            }
            for m in METRICS
        },
        "summary": json.loads(summary.to_json(orient="records")),
        "difficulty": {
            "k": k,
            "bins": json.loads(bins.to_json(orient="records")),
            "accuracy": json.loads(by_difficulty.to_json(orient="records")),
        },
        "per_seed": results,
    }
    write_json(metrics, out["metrics"])
    md = summary_markdown(benchmark, summary, pass1_stats, len(results))
    with atomic_path(out["summary"]) as tmp:
        tmp.write_text(md)

    plots = _plots(summary, per_seed, candidates, benchmark)
    plots.update(_calibration_plots(candidates, benchmark))
    plots["accuracy_by_difficulty"] = _difficulty_plot(bins, by_difficulty, k, benchmark)
    for name, path in (figures or {}).items():
        _write_png(plots[name], Path(path))
    if training is None:
        curves = "<p>No trained aggregator variant was evaluated.</p>"
    else:
        curves = _img("training_curves", base64.b64encode(Path(training).read_bytes()).decode())
    own_section = ("reliability", "roc", "accuracy_by_difficulty")
    page = string.Template(_TEMPLATE.read_text(encoding="utf-8")).substitute(
        benchmark=html.escape(benchmark),
        n_seeds=len(results),
        seeds=", ".join(map(str, metrics["seeds"])),
        n_problems=results[0]["n_problems"],
        samples_per_problem=results[0]["samples_per_problem"]["max"],
        pass1=_fmt(*pass1_stats),
        pass1_name=html.escape(lighteval_name("pass", 1, summary["n"].iloc[0])),
        spread=html.escape(_spread_note(len(results))),
        methods=_method_table(summary),
        oracle=_method_table(summary, oracle=True),
        aggregators=_aggregator_table(summary),
        online=_online_table(summary),
        auroc=_auroc_table(results),
        calibration=_img("reliability", plots["reliability"]) + _img("roc", plots["roc"]),
        difficulty_k=k,
        difficulty=_difficulty_table(bins, by_difficulty)
        + _img("accuracy_by_difficulty", plots["accuracy_by_difficulty"]),
        training=curves,
        counts=_counts_table(results),
        contamination=_contamination(benchmark, curation),
        plots="".join(
            f"<h2>{html.escape(name.replace('_', ' '))}</h2>{_img(name, data)}"
            for name, data in plots.items()
            if name not in own_section
        ),
    )
    with atomic_path(out["html"]) as tmp:
        tmp.write_text(page)


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
                "mean": _nanmean(values),
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


def build_summary(metrics_files: Sequence[Path], out: Path, csv: Path | None = None) -> None:
    """One table across benchmarks: pass@1 and every method at equal cost, k = m (the
    aggregators' set size: each answer is drawn from m samples), or at the largest k when no
    aggregator was evaluated; the oracle pass@k apart. With ``csv``: every number of every
    benchmark (``SUMMARY_COLUMNS``, :func:`summary_rows`)."""
    blocks, tables = [], []
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        summary = pd.DataFrame(m["summary"])
        k = _set_size(summary)
        n = samples_n(m["per_seed"])
        blocks.append((m["benchmark"], m["pass@1"], summary[summary["k"] == k], k, n))
        tables.append(summary_rows(m))

    def row(label: str) -> str:
        cells = []
        for _, _, at, _, _ in blocks:
            hit = at[at["label"] == label]
            cells.append(
                _fmt(hit["accuracy_mean"].iloc[0], hit["accuracy_std"].iloc[0]) if len(hit) else ""
            )
        return f"| {label} | " + " | ".join(cells) + " |"

    labels = list(dict.fromkeys(lab for _, _, at, _, _ in blocks for lab in at["label"]))
    oracle = [lab for _, _, at, _, _ in blocks for lab in at.loc[at["family"] == "pass", "label"]]
    head = "| method | " + " | ".join(f"{b} (k={k}, n={n})" for b, _, _, k, n in blocks) + " |"
    lines = [
        "# confagg results: accuracy (%), mean ± std over evaluation seeds (training runs fixed)",
        "",
        "Every method at k = m, the aggregators' set size (each answer drawn from the same m",
        "samples; the largest k where no aggregator ran), n samples per problem (lighteval's",
        "names, e.g. maj@k:k=m&n=n: summary.csv). Per-k tables: reports/<benchmark>/.",
        "",
        head,
        "|---|" + "---|" * len(blocks),
        "| pass@1 | " + " | ".join(_fmt(p["mean"], p["std"]) for _, p, _, _, _ in blocks) + " |",
        *[row(lab) for lab in labels if lab not in oracle],
        "",
        "Oracle (picks with the gold answer; an upper bound, not a method at equal cost):",
        "",
        head,
        "|---|" + "---|" * len(blocks),
        *[row(lab) for lab in dict.fromkeys(oracle)],
    ]
    if csv is not None:
        with atomic_path(csv) as tmp:
            pd.concat(tables, ignore_index=True).to_csv(tmp, index=False, float_format="%.10g")
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


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


def compare_page(a: Path, b: Path, out: Path) -> None:
    """One HTML page of two runs' summary metrics side by side, a table per benchmark, with
    the differences (b - a, in points for accuracy)."""
    both = compare_runs(a, b)
    names = [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in (a, b)]
    parts = [
        f"<h1>confagg: {html.escape(names[0])} (a) vs {html.escape(names[1])} (b)</h1>",
        "<p>Accuracy (%) and AUROC, mean ± std over each run's evaluation seeds; b - a in"
        " percentage points (AUROC: as is); * where the difference exceeds twice its standard"
        " error from the seeds' spread. Rows one run lacks are blank on its side.</p>",
    ]
    for benchmark, g in both.groupby("benchmark", sort=False):
        rows = []
        for r in g.itertuples():
            scale, digits = (100.0, 1) if r.quantity == "accuracy" else (1.0, 3)
            diff = "" if math.isnan(r.difference) else f"{r.difference * scale:+.{digits}f}"
            if r.beyond_2se is True:  # True, False or NaN (one seed)
                diff += " *"
            k = "" if isinstance(r.k, float) and math.isnan(r.k) else int(r.k)
            name = r.name_a if isinstance(r.name_a, str) else r.name_b
            rows.append(
                [
                    r.label,
                    k,
                    name,
                    _fmt(r.mean_a, r.std_a, scale, digits),
                    _fmt(r.mean_b, r.std_b, scale, digits),
                    diff,
                ]
            )
        parts.append(f"<h2>{html.escape(str(benchmark))}</h2>")
        parts.append(_html_table(["method", "k", "name (a)", "a", "b", "b - a"], rows))
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>confagg: two runs</title>'
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px}</style></head><body>" + "".join(parts) + "</body></html>\n"
    )
    with atomic_path(out) as tmp:
        tmp.write_text(page)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("benchmark", help="one benchmark's report from its seeds")
    b.add_argument("--name", required=True)
    b.add_argument("--metrics", nargs="+", type=Path, required=True, help="each seed's metrics")
    b.add_argument(
        "--candidates", nargs="+", type=Path, required=True, help="each seed's candidates table"
    )
    b.add_argument(
        "--aggregators", nargs="+", type=Path, default=None, help="each seed's aggregator outputs"
    )
    b.add_argument("--curation", type=Path, default=None, help="curated/summary.json")
    b.add_argument(
        "--training", type=Path, nargs="?", default=None, help="the training curves' PNG, if any"
    )
    b.add_argument(
        "--figures",
        nargs="*",
        type=Path,
        default=[],
        help=f"PNGs to write, each named <figure>.png ({', '.join(FIGURES)})",
    )
    b.add_argument("--html", type=Path, required=True, help="report.html to write")
    b.add_argument("--metrics-out", type=Path, required=True, help="metrics.json to write")
    b.add_argument("--summary-out", type=Path, required=True, help="summary.md to write")
    t = sub.add_parser("summary", help="one table across benchmarks")
    t.add_argument("metrics", nargs="+", type=Path)
    t.add_argument("--out", type=Path, required=True, help="summary.md to write")
    t.add_argument("--csv", type=Path, default=None, help="summary.csv to write")
    c = sub.add_parser("training", help="the GRPO training curves")
    c.add_argument("logs", nargs="+", type=Path, help="train/<variant>/log.jsonl of each run")
    c.add_argument("--out", type=Path, required=True, help="PNG to write")
    r = sub.add_parser("compare", help="two runs' summary metrics side by side")
    r.add_argument("run_a", type=Path, help="results/<run_name> (or its summary.csv)")
    r.add_argument("run_b", type=Path, help="results/<run_name> (or its summary.csv)")
    r.add_argument("--out", type=Path, required=True, help="HTML page to write")
    args = ap.parse_args(argv)
    if args.cmd == "benchmark":
        n = len(args.metrics)
        for flag, given in (("--candidates", args.candidates), ("--aggregators", args.aggregators)):
            if given is not None and len(given) != n:
                ap.error(f"{n} --metrics but {len(given)} {flag}")
        figures = {p.stem: p for p in args.figures}
        if set(figures) - set(FIGURES) or len(figures) != len(args.figures):
            ap.error(f"--figures: one file per figure, each named <figure>.png of {FIGURES}")
        outputs = {"html": args.html, "metrics": args.metrics_out, "summary": args.summary_out}
        aggs = args.aggregators or [None] * n
        seeds = [
            SeedFiles(*files) for files in zip(args.metrics, args.candidates, aggs, strict=True)
        ]
        build_report(args.name, seeds, outputs, args.curation, args.training, figures)
    elif args.cmd == "summary":
        build_summary(args.metrics, args.out, args.csv)
    elif args.cmd == "training":
        with atomic_path(args.out) as tmp:
            tmp.write_bytes(base64.b64decode(training_curves(args.logs)))
    else:
        compare_page(args.run_a, args.run_b, args.out)


if __name__ == "__main__":
    main()
