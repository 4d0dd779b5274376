"""The reports' figures (matplotlib, PNG as base64): accuracy against k and tokens, the
training curves, reliability and ROC, accuracy by difficulty (a part of the report stage)."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from confagg import methods as mt
from confagg.confidence import METRICS
from confagg.summaries import (
    RELIABILITY_BINS,
    problems_label,
    read_jsonl,
    reliability_bins,
    roc_curve,
)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


# One panel per method family; within a panel, colour by confidence metric. maj@k is drawn in
# every panel as the reference (grey), the aggregators at their set sizes m.
_PANELS = [
    ("majority", "maj@k and pass@k (oracle, dashed)"),
    ("weighted", "confidence-weighted vote"),
    ("best", "best-of-k by confidence"),
    ("filter10", "DeepConf filter, top 10%"),
    ("filter90", "DeepConf filter, top 90%"),
    ("online", "DeepConf-online (tokens actually spent)"),
    ("aggregator", "aggregators at each set size m"),
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
                # one set size: a point; several: a curve beside the votes'
                style = {
                    "marker": marker,
                    "markersize": 8,
                    "linestyle": "-" if len(g) > 1 else "none",
                }
                if x == "k":  # side by side around k = m (log axis: a factor, not a shift)
                    g = g.assign(k=g["k"] * 2 ** (0.08 * (aggregators - (n_aggregators - 1) / 2)))
                aggregators += 1
            elif family == "pass":
                style.update(color="black", linestyle="--")
            elif family == "majority":
                style.update(color="black")
            elif family == "online":
                style.update(color={10.0: "tab:purple"}.get(g["eta"].iloc[0], "tab:brown"))
                if g["method"].iloc[0].endswith(":released"):  # the released code's definition
                    style.update(linestyle="--", marker="s")
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


def benchmark_plots(
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


def _run_label(log: Path) -> str:
    """A training run's label from its log's path: ``<variant> seed<s>`` (train/<variant>/
    seed<s>/log.jsonl), or its folder's name."""
    folder = log.parent
    return f"{folder.parent.name} {folder.name}" if folder.name.startswith("seed") else folder.name


def training_curves(logs: Sequence[Path]) -> str:
    """Reward, KL, completion length and truncated share against the step, one colour per
    training run (each ``train/<variant>/seed<s>/log.jsonl``, labelled by its variant's and
    seed's folders); validation rows (split "eval") dashed. A PNG, base64."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(_run_label(Path(p)), pd.DataFrame(read_jsonl(p))) for p in logs]
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


def calibration_plots(candidates: pd.DataFrame, benchmark: str) -> dict[str, str]:
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


def difficulty_plot(bins: pd.DataFrame, accuracy: pd.DataFrame, k: int, benchmark: str) -> str:
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
        [f"{r.label}\n{problems_label(r.n_problems)}" for r in bins.itertuples()], fontsize=7
    )
    ax.set_xlabel("problems binned by pass@1 (every seed's samples pooled)", fontsize=8)
    ax.set_ylabel(f"accuracy at k = {k} (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    ax.set_title(f"{benchmark}: accuracy by problem difficulty, k = {k}", fontsize=10)
    fig.tight_layout()
    return _png(fig)
