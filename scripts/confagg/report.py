"""The reports: one per benchmark from its seeds' metrics, and one table across benchmarks.

* ``python -m confagg.report benchmark ...``: one benchmark's seeds (each a ``metrics.json`` of
  confagg.evaluate and its ``candidates.parquet``) -> ``report.html`` (self-contained, plots
  embedded; the page is ``templates/report.html``), ``metrics.json`` (every number of the
  HTML, per seed and mean ± std over seeds) and ``summary.md`` (a table to paste into a paper).
* ``python -m confagg.report summary ...``: every benchmark's ``metrics.json`` -> one table.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from confagg.confidence import METRICS
from confagg.tables import EVAL_CANDIDATES, atomic_path, read_table, write_json

# The page of one benchmark's report (string.Template: $name placeholders, CSS braces as is).
_TEMPLATE = Path(__file__).with_name("templates") / "report.html"

# --- tables of the evaluation's results ------------------------------------------------


def flatten(result: dict) -> pd.DataFrame:
    """One row per (method, k) of a ``confagg.evaluate.evaluate_benchmark`` result: ``seed,
    method, family, metric, eta, label, k, accuracy, tokens_per_problem, n_sets``."""
    rows = [
        {
            "seed": result["seed"],
            "method": name,
            **{f: info[f] for f in ("family", "metric", "eta", "label")},
            "k": int(k),
            **cell,
        }
        for name, info in result["methods"].items()
        for k, cell in info["by_k"].items()
    ]
    return pd.DataFrame(rows)


def seed_summary(results: Sequence[dict]) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1; NaN with one seed) over seeds, per
    (method, k): ``method, family, metric, eta, label, k, n_seeds, accuracy_mean,
    accuracy_std, tokens_mean, tokens_std``."""
    flat = pd.concat([flatten(r) for r in results], ignore_index=True)
    stats = (
        flat.groupby(["method", "k"], sort=False)
        .agg(
            n_seeds=("seed", "nunique"),
            accuracy_mean=("accuracy", "mean"),
            accuracy_std=("accuracy", "std"),
            tokens_mean=("tokens_per_problem", "mean"),
            tokens_std=("tokens_per_problem", "std"),
        )
        .reset_index()
    )
    info = flat.drop_duplicates("method")[["method", "family", "metric", "eta", "label"]]
    cols = ["method", "family", "metric", "eta", "label", "k"]
    return stats.merge(info, on="method", how="left")[cols + list(stats.columns[2:])]


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


# Plot styles: colour by method family (a DeepConf filter by its share), line and marker by
# confidence metric; aggregators (one point each, at k = m) as large stars.
_FAMILY_COLOURS = {
    "pass": "tab:olive",
    "majority": "black",
    "weighted": "tab:blue",
    "filter10": "tab:orange",
    "filter90": "tab:green",
    "best": "tab:red",
}
_METRIC_STYLES = {
    "mean": ("-", "o"),
    "bottom_10_percent": ("--", "s"),
    "lowest_group": ("-.", "^"),
    "tail": (":", "D"),
}
_AGGREGATOR_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:cyan", "tab:gray")


def _line_style(method: pd.Series, aggregator_index: int) -> dict:
    """matplotlib style of one method's line (``method``: a row with family, metric, eta)."""
    family = method["family"]
    if family == "aggregator":
        colour = _AGGREGATOR_COLOURS[aggregator_index % len(_AGGREGATOR_COLOURS)]
        return {"color": colour, "marker": "*", "markersize": 13, "linestyle": "none"}
    if family == "filter":
        family = f"filter{method['eta']:g}"
    linestyle, marker = _METRIC_STYLES.get(method["metric"], ("-", "o"))
    if family in ("pass", "majority"):
        linestyle, marker = ("--" if family == "pass" else "-"), "o"
    colour = _FAMILY_COLOURS.get(family, "tab:gray")
    return {"color": colour, "linestyle": linestyle, "marker": marker, "markersize": 4}


def _plots(
    summary: pd.DataFrame, per_seed: pd.DataFrame, candidates: pd.DataFrame, benchmark: str
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    plots = {}
    for name, x, xlabel in [
        ("accuracy_vs_k", "k", "k (samples read)"),
        ("accuracy_vs_tokens", "tokens_mean", "tokens per problem (samples + aggregator calls)"),
    ]:
        fig, ax = plt.subplots(figsize=(9, 4.8))
        aggregators = 0
        for _, group in summary.groupby("method", sort=False):
            g = group.sort_values(x)
            style = _line_style(g.iloc[0], aggregators)
            aggregators += g["family"].iloc[0] == "aggregator"
            ax.errorbar(
                g[x],
                100 * g["accuracy_mean"],
                yerr=100 * g["accuracy_std"].fillna(0) if x == "k" else None,
                label=g["label"].iloc[0],
                capsize=2,
                **style,
            )
        ax.set_xscale("log", base=2 if x == "k" else 10)
        if x != "k":  # ticks at 1, 2, 5 x 10^n, written plainly
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{benchmark}: {name.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        plots[name] = _png(fig)

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


def _table_rows(summary: pd.DataFrame) -> tuple[list[int], list[tuple[str, list[str]]]]:
    ks = sorted(summary["k"].unique().tolist())
    rows = []
    for _, g in summary.groupby("method", sort=False):
        by_k = {int(r.k): _fmt(r.accuracy_mean, r.accuracy_std) for r in g.itertuples()}
        rows.append((g["label"].iloc[0], [by_k.get(k, "") for k in ks]))
    return ks, rows


def summary_markdown(
    benchmark: str, summary: pd.DataFrame, pass1: tuple[float, float], n_seeds: int
) -> str:
    ks, rows = _table_rows(summary)
    lines = [
        f"## {benchmark}: accuracy (%), mean ± std over {n_seeds} seed(s)",
        "",
        f"pass@1: {_fmt(*pass1)}",
        "",
        "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines) + "\n"


def build_report(benchmark: str, seed_dirs: Sequence[Path], out_dir: Path) -> None:
    """report.html, metrics.json and summary.md of one benchmark from its seeds."""
    results = [json.loads((d / "metrics.json").read_text()) for d in seed_dirs]
    candidates = pd.concat(
        [read_table(d / "candidates.parquet", EVAL_CANDIDATES).to_pandas() for d in seed_dirs]
    )
    summary = seed_summary(results)
    per_seed = pd.concat([flatten(r) for r in results], ignore_index=True)
    pass1 = np.array([r["pass@1"] for r in results], dtype=float)
    pass1_stats = (float(pass1.mean()), float(pass1.std(ddof=1)) if len(pass1) > 1 else math.nan)
    auroc = {m: [r["auroc"][m]["pooled"] for r in results] for m in METRICS}
    metrics = {
        "benchmark": benchmark,
        "seeds": [r["seed"] for r in results],
        "pass@1": {"mean": pass1_stats[0], "std": pass1_stats[1]},
        "auroc": {
            m: {"mean": float(np.nanmean(np.array(v, dtype=float))), "per_seed": v}
            for m, v in auroc.items()
        },
        "summary": json.loads(summary.to_json(orient="records")),
        "per_seed": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(metrics, out_dir / "metrics.json")
    md = summary_markdown(benchmark, summary, pass1_stats, len(results))
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text(md)

    plots = _plots(summary, per_seed, candidates, benchmark)
    ks, rows = _table_rows(summary)
    page = string.Template(_TEMPLATE.read_text(encoding="utf-8")).substitute(
        benchmark=html.escape(benchmark),
        n_seeds=len(results),
        seeds=", ".join(map(str, metrics["seeds"])),
        n_problems=results[0]["n_problems"],
        samples_per_problem=results[0]["samples_per_problem"]["max"],
        pass1=_fmt(*pass1_stats),
        head="".join(f"<th>k={k}</th>" for k in ks),
        body="".join(
            f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
            for label, cells in rows
        ),
        auroc_rows="".join(
            f"<tr><td>{m}</td><td>{_fmt(metrics['auroc'][m]['mean'], None, 1, 3)}</td></tr>"
            for m in METRICS
        ),
        plots="".join(
            f"<h2>{html.escape(name.replace('_', ' '))}</h2>"
            f'<img alt="{name}" src="data:image/png;base64,{data}">'
            for name, data in plots.items()
        ),
    )
    with atomic_path(out_dir / "report.html") as tmp:
        tmp.write_text(page)


def build_summary(metrics_files: Sequence[Path], out: Path) -> None:
    """One table across benchmarks: pass@1 and every method at equal cost, k = m (the
    aggregators' set size: each answer is drawn from m samples), or at the largest k when no
    aggregator was evaluated."""
    blocks = []
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        summary = pd.DataFrame(m["summary"])
        set_sizes = summary.loc[summary["family"] == "aggregator", "k"]
        k = int(set_sizes.max() if len(set_sizes) else summary["k"].max())
        blocks.append((m["benchmark"], m["pass@1"], summary[summary["k"] == k], k))
    methods = list(dict.fromkeys(label for _, _, at, _ in blocks for label in at["label"]))
    lines = [
        "# confagg results: accuracy (%), mean ± std over seeds",
        "",
        "Every method at k = m, the aggregators' set size (each answer drawn from the same m",
        "samples; the largest k where no aggregator ran). Per-k tables: reports/<benchmark>/.",
        "",
        "| method | " + " | ".join(f"{b} (k={k})" for b, _, _, k in blocks) + " |",
        "|---|" + "---|" * len(blocks),
        "| pass@1 | " + " | ".join(_fmt(p["mean"], p["std"]) for _, p, _, _ in blocks) + " |",
    ]
    for label in methods:
        cells = []
        for _, _, at, _ in blocks:
            row = at[at["label"] == label]
            cells.append(
                _fmt(row["accuracy_mean"].iloc[0], row["accuracy_std"].iloc[0]) if len(row) else ""
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("benchmark", help="one benchmark's report from its seeds")
    b.add_argument("--name", required=True)
    b.add_argument("seed_dirs", nargs="+", type=Path)
    b.add_argument("--out-dir", type=Path, required=True)
    t = sub.add_parser("summary", help="one table across benchmarks")
    t.add_argument("metrics", nargs="+", type=Path)
    t.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "benchmark":
        build_report(args.name, args.seed_dirs, args.out_dir)
    else:
        build_summary(args.metrics, args.out)


if __name__ == "__main__":
    main()
