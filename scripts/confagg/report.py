"""Evaluation metrics per benchmark x seed, and the per-benchmark report.

* ``python -m confagg.report seed ...``: every method (confagg.evaluate_methods) on one
  benchmark x seed, from its samples, scores, grades and aggregator outputs -> ``metrics.json``
  and ``candidates.parquet`` (one row per sample: verdict, tokens, the four metrics).
* ``python -m confagg.report benchmark ...``: one benchmark's seeds -> ``report.html``
  (self-contained, plots embedded), ``metrics.json`` (every number of the HTML, per seed and
  mean ± std over seeds) and ``summary.md`` (a table to paste into a paper).
* ``python -m confagg.report summary ...``: every benchmark's ``metrics.json`` -> one table.

Answer keys for voting: answers the verifier graded correct are all equivalent to the gold
answer, hence to each other, and share one key; the others are grouped by normalised string
(confagg.methods.normalise_answer).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from confagg.confidence import METRICS
from confagg.tables import atomic_path, read_table, write_json, write_table

# One row per evaluation sample of a benchmark x seed (the report's confidence histograms).
EVAL_CANDIDATES = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),
        *[pa.field(m, pa.float64()) for m in METRICS],
    ],
    metadata={"table": "eval_candidates"},
)


def _answer_key(df: pd.DataFrame) -> pd.Series:
    from confagg.methods import normalise_answer

    keys = df["answer"].map(lambda a: None if a is None else "n:" + normalise_answer(a))
    return keys.where(~df["correct"].astype(bool), "gold")


def evaluate_seed(
    samples: Sequence[str],
    scores: Sequence[str],
    grades: Sequence[str],
    aggregator: str | None,
    ks: Sequence[int],
    seed: int,
    out_dir: Path,
) -> dict:
    """metrics.json + candidates.parquet for one benchmark x seed (returns the metrics)."""
    from confagg.aggregate import load_candidates
    from confagg.evaluate_methods import evaluate_benchmark

    df = load_candidates(samples, scores, grades)
    df["answer_key"] = _answer_key(df)
    agg = None
    if aggregator:
        agg = pd.read_parquet(aggregator)
    result = evaluate_benchmark(df, ks, seed, aggregator=agg)
    if agg is not None:
        result["aggregator_calls"] = {
            name: {
                "calls": len(g),
                "mean_prompt_tokens": float(g["prompt_tokens"].mean()),
                "truncated_prompts": int(g["prompt_truncated"].sum()),
            }
            for name, g in agg.groupby("method")
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(result, out_dir / "metrics.json")
    table = pa.Table.from_pandas(df[EVAL_CANDIDATES.names], preserve_index=False)
    write_table(table, out_dir / "candidates.parquet", EVAL_CANDIDATES)
    return result


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
    from confagg.evaluate_methods import flatten, seed_summary

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
    head = "".join(f"<th>k={k}</th>" for k in ks)
    body = "".join(
        f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        for label, cells in rows
    )
    auroc_rows = "".join(
        f"<tr><td>{m}</td><td>{_fmt(metrics['auroc'][m]['mean'], None, 1, 3)}</td></tr>"
        for m in METRICS
    )
    imgs = "".join(
        f"<h2>{html.escape(name.replace('_', ' '))}</h2>"
        f'<img alt="{name}" src="data:image/png;base64,{data}">'
        for name, data in plots.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>confagg report: {html.escape(benchmark)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}
img{{max-width:100%}}</style></head><body>
<h1>{html.escape(benchmark)}</h1>
<p>{len(results)} seed(s): {", ".join(map(str, metrics["seeds"]))}; {results[0]["n_problems"]}
problems; samples per problem: {results[0]["samples_per_problem"]["max"]}.
pass@1: <b>{_fmt(*pass1_stats)}</b> %. Accuracy in %, mean ± std over seeds.</p>
<table><tr><th>method</th>{head}</tr>{body}</table>
<h2>AUROC of each confidence metric for correctness</h2>
<table><tr><th>metric</th><th>AUROC</th></tr>{auroc_rows}</table>
{imgs}
</body></html>
"""
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
    s = sub.add_parser("seed", help="metrics of one benchmark x seed")
    s.add_argument("--samples", nargs="+", required=True)
    s.add_argument("--scores", nargs="+", required=True)
    s.add_argument("--grades", nargs="+", required=True)
    s.add_argument("--aggregator", default=None)
    s.add_argument("--ks", required=True, help="JSON list of k")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("out_dir", type=Path)
    b = sub.add_parser("benchmark", help="one benchmark's report from its seeds")
    b.add_argument("--name", required=True)
    b.add_argument("seed_dirs", nargs="+", type=Path)
    b.add_argument("--out-dir", type=Path, required=True)
    t = sub.add_parser("summary", help="one table across benchmarks")
    t.add_argument("metrics", nargs="+", type=Path)
    t.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "seed":
        evaluate_seed(
            args.samples,
            args.scores,
            args.grades,
            args.aggregator,
            json.loads(args.ks),
            args.seed,
            args.out_dir,
        )
    elif args.cmd == "benchmark":
        build_report(args.name, args.seed_dirs, args.out_dir)
    else:
        build_summary(args.metrics, args.out)


if __name__ == "__main__":
    main()
