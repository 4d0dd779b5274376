"""The reports: one per benchmark from its seeds' metrics, and one table across benchmarks.

* ``python -m confagg.report benchmark ...``: one benchmark's seeds (each a ``metrics.json`` of
  confagg.evaluate and its ``candidates.parquet``) -> ``report.html`` (self-contained, plots
  embedded; the page is ``templates/report.html``), ``metrics.json`` (every number of the
  HTML, per seed and mean ± std over seeds) and ``summary.md`` (a table to paste into a paper).
* ``python -m confagg.report summary ...``: every benchmark's ``metrics.json`` -> one table.

What the tables say: methods at equal cost (every one reads the same k samples) apart from the
oracle pass@k (it needs the gold answer to pick); a method whose picks equal an earlier
method's in every set is marked "= <that method>" (e.g. DeepConf top 10% at k = 8 keeps one
trace: it is best-of-8); ± is the standard deviation over the evaluation seeds, with the
training runs fixed (one per training variant): it measures the candidates' and the
aggregators' sampling, not training.
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

import numpy as np
import pandas as pd

from confagg.confidence import METRICS
from confagg.files import atomic_path, write_json
from confagg.tables import EVAL_CANDIDATES, read_table

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


def seed_summary(results: Sequence[dict]) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1; NaN with one seed) over seeds, per
    (method, k): ``method, family, metric, eta, label, k, n_seeds, accuracy_mean,
    accuracy_std, tokens_mean, tokens_std, saved_mean, same_as`` (``same_as`` where every seed
    has the same one)."""
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


def _table_rows(
    summary: pd.DataFrame, oracle: bool = False
) -> tuple[list[int], list[tuple[str, list[str]]]]:
    """(ks, [(label, cells)]) of the methods at equal cost (or, with ``oracle``, pass@k alone);
    a cell whose picks equal an earlier method's says so."""
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
        rows.append((g["label"].iloc[0], [by_k.get(k, "") for k in ks]))
    return ks, rows


def _spread_note(n_seeds: int) -> str:
    if n_seeds > 1:
        return (
            f"mean ± std over {n_seeds} evaluation seeds (the training runs fixed: ± measures "
            "the sampling of candidates and aggregators, not training)"
        )
    return "one evaluation seed (no spread)"


def _markdown_table(ks: list[int], rows: list[tuple[str, list[str]]]) -> list[str]:
    return [
        "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
        *[f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows],
    ]


def summary_markdown(
    benchmark: str, summary: pd.DataFrame, pass1: tuple[float, float], n_seeds: int
) -> str:
    lines = [
        f"## {benchmark}: accuracy (%), {_spread_note(n_seeds)}",
        "",
        f"pass@1: {_fmt(*pass1)}",
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
    return _html_table(["method", *(f"k={k}" for k in ks)], [[lab, *c] for lab, c in rows])


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


def build_report(
    benchmark: str,
    seeds: Sequence[tuple[Path, Path]],
    out: Mapping[str, Path],
    curation: Path | None = None,
) -> None:
    """One benchmark's report from its seeds (``(metrics.json, candidates table)`` each) and
    the curation summary (for the contamination it found): ``out["html"]`` (the page),
    ``out["metrics"]`` (every number of it) and ``out["summary"]`` (a markdown table)."""
    results = [json.loads(Path(m).read_text()) for m, _ in seeds]
    candidates = pd.concat([read_table(c, EVAL_CANDIDATES).to_pandas() for _, c in seeds])
    summary = seed_summary(results)
    per_seed = pd.concat([flatten(r) for r in results], ignore_index=True)
    pass1 = np.array([r["pass@1"] for r in results], dtype=float)
    pass1_stats = (float(pass1.mean()), float(pass1.std(ddof=1)) if len(pass1) > 1 else math.nan)
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
        "per_seed": results,
    }
    write_json(metrics, out["metrics"])
    md = summary_markdown(benchmark, summary, pass1_stats, len(results))
    with atomic_path(out["summary"]) as tmp:
        tmp.write_text(md)

    plots = _plots(summary, per_seed, candidates, benchmark)
    page = string.Template(_TEMPLATE.read_text(encoding="utf-8")).substitute(
        benchmark=html.escape(benchmark),
        n_seeds=len(results),
        seeds=", ".join(map(str, metrics["seeds"])),
        n_problems=results[0]["n_problems"],
        samples_per_problem=results[0]["samples_per_problem"]["max"],
        pass1=_fmt(*pass1_stats),
        spread=html.escape(_spread_note(len(results))),
        methods=_method_table(summary),
        oracle=_method_table(summary, oracle=True),
        aggregators=_aggregator_table(summary),
        online=_online_table(summary),
        auroc=_auroc_table(results),
        counts=_counts_table(results),
        contamination=_contamination(benchmark, curation),
        plots="".join(
            f"<h2>{html.escape(name.replace('_', ' '))}</h2>"
            f'<img alt="{name}" src="data:image/png;base64,{data}">'
            for name, data in plots.items()
        ),
    )
    with atomic_path(out["html"]) as tmp:
        tmp.write_text(page)


def build_summary(metrics_files: Sequence[Path], out: Path) -> None:
    """One table across benchmarks: pass@1 and every method at equal cost, k = m (the
    aggregators' set size: each answer is drawn from m samples), or at the largest k when no
    aggregator was evaluated; the oracle pass@k apart."""
    blocks = []
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        summary = pd.DataFrame(m["summary"])
        set_sizes = summary.loc[summary["family"] == "aggregator", "k"]
        k = int(set_sizes.max() if len(set_sizes) else summary["k"].max())
        blocks.append((m["benchmark"], m["pass@1"], summary[summary["k"] == k], k))

    def row(label: str) -> str:
        cells = []
        for _, _, at, _ in blocks:
            hit = at[at["label"] == label]
            cells.append(
                _fmt(hit["accuracy_mean"].iloc[0], hit["accuracy_std"].iloc[0]) if len(hit) else ""
            )
        return f"| {label} | " + " | ".join(cells) + " |"

    labels = list(dict.fromkeys(lab for _, _, at, _ in blocks for lab in at["label"]))
    oracle = [lab for _, _, at, _ in blocks for lab in at.loc[at["family"] == "pass", "label"]]
    head = "| method | " + " | ".join(f"{b} (k={k})" for b, _, _, k in blocks) + " |"
    lines = [
        "# confagg results: accuracy (%), mean ± std over evaluation seeds (training runs fixed)",
        "",
        "Every method at k = m, the aggregators' set size (each answer drawn from the same m",
        "samples; the largest k where no aggregator ran). Per-k tables: reports/<benchmark>/.",
        "",
        head,
        "|---|" + "---|" * len(blocks),
        "| pass@1 | " + " | ".join(_fmt(p["mean"], p["std"]) for _, p, _, _ in blocks) + " |",
        *[row(lab) for lab in labels if lab not in oracle],
        "",
        "Oracle (picks with the gold answer; an upper bound, not a method at equal cost):",
        "",
        head,
        "|---|" + "---|" * len(blocks),
        *[row(lab) for lab in dict.fromkeys(oracle)],
    ]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("benchmark", help="one benchmark's report from its seeds")
    b.add_argument("--name", required=True)
    b.add_argument("--metrics", nargs="+", type=Path, required=True, help="each seed's metrics")
    b.add_argument(
        "--candidates", nargs="+", type=Path, required=True, help="each seed's candidates table"
    )
    b.add_argument("--curation", type=Path, default=None, help="curated/summary.json")
    b.add_argument("--html", type=Path, required=True, help="report.html to write")
    b.add_argument("--metrics-out", type=Path, required=True, help="metrics.json to write")
    b.add_argument("--summary-out", type=Path, required=True, help="summary.md to write")
    t = sub.add_parser("summary", help="one table across benchmarks")
    t.add_argument("metrics", nargs="+", type=Path)
    t.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "benchmark":
        if len(args.metrics) != len(args.candidates):
            ap.error(f"{len(args.metrics)} --metrics but {len(args.candidates)} --candidates")
        outputs = {"html": args.html, "metrics": args.metrics_out, "summary": args.summary_out}
        seeds = list(zip(args.metrics, args.candidates, strict=True))
        build_report(args.name, seeds, outputs, args.curation)
    else:
        build_summary(args.metrics, args.out)


if __name__ == "__main__":
    main()
