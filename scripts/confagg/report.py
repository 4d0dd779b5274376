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
training runs fixed: it measures the candidates' and the aggregators' sampling, not training.
The aggregator table gives the standard deviation over training seeds apart, and what each
variant learned (calls with no answer, accuracy among answered). The headline (the smallest k
at which maj@k and the best confidence-weighted vote reach each aggregator, and their tokens'
ratio) and the paired tests carry 95 % intervals over problems (``confagg.stats``: percentile
bootstrap, sign-flip permutation test). Every method at every k also carries its name as
lighteval writes metrics (``pass@k:k=1&n=32``, ``maj@k:k=8&n=32``: ``n`` the samples per
problem the estimate reads; :func:`lighteval_name`).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from confagg import costs
from confagg.confidence import METRICS
from confagg.figures import benchmark_plots, calibration_plots, difficulty_plot, training_curves
from confagg.files import atomic_path, write_json
from confagg.scoring import AGGREGATOR_COLUMNS, AGGREGATOR_OPTIONAL
from confagg.settings import load
from confagg.summaries import (
    accuracy_by_difficulty,
    compare_runs,
    flatten,
    lighteval_name,
    nanmean,
    problems_label,
    samples_n,
    seed_summary,
    summary_rows,
    uncertainty,
)
from confagg.tables import AGG_OUTPUTS, EVAL_CANDIDATES, read_table

# The page of one benchmark's report (string.Template: $name placeholders, CSS braces as is).
_TEMPLATE = Path(__file__).with_name("templates") / "report.html"


# --- the per-benchmark report -------------------------------------------------------------


def _fmt(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _difficulty_table(bins: pd.DataFrame, accuracy: pd.DataFrame) -> str:
    head = ["method", *(f"{r.label} ({problems_label(r.n_problems)})" for r in bins.itertuples())]
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
            "the sampling of candidates and aggregators, not training; the spread over "
            "training seeds and over problems is in the aggregator, headline and paired tables)"
        )
    return "one evaluation seed (no spread)"


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _interval(mean, low, high) -> str:
    return f"{_pct(mean)} [{_pct(low)}, {_pct(high)}]"


def _k_text(k) -> str:
    return "not reached" if k is None else str(k)


def _ratio_text(h: dict) -> str:
    if h["token_ratio"] is None:
        return f"> {h['ratio_at_max_k']:.2f}x (not reached)"
    low = "n/a" if h["ratio_low"] is None else f"{h['ratio_low']:.2f}"
    high = "not reached" if h["ratio_high"] is None else f"{h['ratio_high']:.2f}"
    return f"{h['token_ratio']:.2f}x [{low}, {high}]"


HEADLINE_HEAD = [
    "aggregator",
    "set size",
    "accuracy (%) [95% CI]",
    "tokens",
    "vote",
    "smallest k reaching it [95% CI]",
    "vote's tokens / aggregator's [95% CI]",
    "resamples where reached",
]


def headline_table(headline: Sequence[dict]) -> list[list[str]]:
    """The headline's rows (``HEADLINE_HEAD``): for each aggregator at each set size and each
    vote, the smallest k at which the vote reaches its accuracy and their tokens' ratio."""
    return [
        [
            h["label"],
            str(h["set_size"]),
            _interval(h["accuracy"]["mean"], h["accuracy"]["low"], h["accuracy"]["high"]),
            f"{h['tokens']:.0f}",
            h["vote_label"],
            f"{_k_text(h['k'])} [{_k_text(h['k_low'])}, {_k_text(h['k_high'])}]"
            + (f" (k ≤ {h['max_k']} sampled)" if h["k"] is None else ""),
            _ratio_text(h),
            f"{100 * h['reached_share']:.0f}%",
        ]
        for h in headline
    ]


PAIRED_HEAD = ["comparison", "a", "b", "a - b (points) [95% CI]", "p", "significant"]


def paired_table(paired: Sequence[dict]) -> list[list[str]]:
    """The paired tests' rows (``PAIRED_HEAD``); significant: p < 0.05 (marked *)."""
    return [
        [
            t["comparison"],
            f"{t['a_label']} (k={t['a_k']})",
            f"{t['b_label']} (k={t['b_k']})",
            f"{100 * t['difference']:+.1f} [{100 * t['low']:+.1f}, {100 * t['high']:+.1f}]",
            f"{t['p_value']:.3g}",
            "*" if t["significant"] else "",
        ]
        for t in paired
    ]


def _uncertainty_note(unc: Mapping) -> str:
    return (
        f"Over the {unc['n_problems']} problems (each problem's accuracy averaged over its "
        f"sets, completions, evaluation seeds and training runs): intervals are the "
        f"{unc['interval']} ({unc['resamples']} resamples); p-values from the {unc['test']}; "
        f"* marks p < {unc['alpha']:g}, uncorrected for the {len(unc['paired'])} tests. "
        "Headline: the smallest sampled k whose vote accuracy is at least the aggregator's (an "
        "equal accuracy counts as reached); tokens are generated tokens per problem: a vote's "
        "are its k samples', an aggregator's its m candidates' plus one completion's (the mean "
        "of its r completions; its prompt, which holds the candidates again, is counted apart "
        "in the aggregator table). The best confidence-weighted vote is the metric with the "
        "highest mean accuracy over k > 1, chosen on these results."
    )


_NAME_HEAD = f"name (lighteval; {_K_OF_COLUMN}: the column's k)"


def _markdown_table(ks: list[int], rows: list[tuple[str, str, list[str]]]) -> list[str]:
    return [
        f"| method | {_NAME_HEAD} | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
        *[f"| {label} | `{name}` | " + " | ".join(cells) + " |" for label, name, cells in rows],
    ]


def _markdown_rows(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def _aggregators_markdown(summary: pd.DataFrame) -> list[str]:
    head, rows = aggregator_table(summary)
    if not rows:
        return []
    return [
        "",
        "### Aggregators: the spread over evaluation and over training seeds, what each learned",
        "",
        *_markdown_rows(head, rows),
    ]


def _uncertainty_markdown(unc: Mapping | None) -> list[str]:
    if not unc or not unc["headline"]:
        return []
    return [
        "",
        "### Headline: where voting reaches each aggregator",
        "",
        _uncertainty_note(unc),
        "",
        *_markdown_rows(HEADLINE_HEAD, headline_table(unc["headline"])),
        "",
        "### Paired comparisons (same problems, same sets)",
        "",
        *_markdown_rows(PAIRED_HEAD, paired_table(unc["paired"])),
    ]


def summary_markdown(
    benchmark: str,
    summary: pd.DataFrame,
    pass1: tuple[float, float],
    n_seeds: int,
    unc: Mapping | None = None,
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
        *_aggregators_markdown(summary),
        *_uncertainty_markdown(unc),
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


def aggregator_table(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(head, rows): the aggregator variants at each set size m, maj@m beside them, the
    spread over evaluation seeds and over training seeds, and what they learned: the share of
    calls with no answer and the accuracy among the answered."""
    agg = summary[summary["family"] == "aggregator"]
    maj = summary[summary["family"] == "majority"].set_index("k")["accuracy_mean"]
    rows = []
    for r in agg.sort_values("k", kind="stable").itertuples():
        n_train = getattr(r, "n_train_seeds", math.nan)
        n_train = float(n_train) if pd.notna(n_train) else math.nan
        train = "(prompted, or no training seed recorded)"
        if n_train > 1:
            train = f"± {100 * r.train_accuracy_std:.1f} over {n_train:.0f} training seeds"
        elif n_train == 1:
            train = "one training seed (no spread)"
        rows.append(
            [
                r.label,
                str(r.k),
                _fmt(r.accuracy_mean, r.accuracy_std),
                train,
                "" if r.k not in maj.index else f"{100 * (r.accuracy_mean - maj[r.k]):+.1f}",
                _pct(r.no_answer_share_mean),
                _pct(r.accuracy_answered_mean),
                f"{r.tokens_mean:.0f}",
                "" if math.isnan(r.prompt_tokens_mean) else f"{r.prompt_tokens_mean:.0f}",
            ]
        )
    head = [
        "variant",
        "set size m",
        "accuracy (%), ± over evaluation seeds",
        "± over training seeds",
        "vs maj@m",
        "no answer (% of calls)",
        "accuracy among answered (%)",
        "tokens (candidates + one completion)",
        "prompt tokens (read)",
    ]
    return head, rows


def _aggregator_table(summary: pd.DataFrame) -> str:
    head, rows = aggregator_table(summary)
    return _html_table(head, rows) if rows else "<p>No aggregator variant was evaluated.</p>"


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
                _fmt(nanmean(pooled), None, 1, 3),
                _fmt(nanmean(per_problem), None, 1, 3),
                "/".join(map(str, n)),
            ]
        )
    head = ["metric", "pooled (all samples)", "per-problem mean", "problems with both classes"]
    return _html_table(head, rows)


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


def _provenance(records: Sequence[Path]) -> str:
    """What the numbers were computed from: each model's and data set's record (the rules
    ``record_model`` and ``prepare_problems`` write them): source, revision asked for, and the
    commit read (a rerun that reads another commit reads other weights or data)."""
    if not records:
        return "<p>(no model or data records given)</p>"
    rows = []
    for path in records:
        r = json.loads(Path(path).read_text())
        what = r.get("role") or Path(path).name.removesuffix(".source.json")
        source = r.get("model") or json.dumps(r.get("source"), sort_keys=True)
        rows.append(
            [
                what,
                source,
                r.get("revision") or "(default branch)",
                r.get("commit") or r.get("sha256") or "(not known)",
                r.get("note") or "",
            ]
        )
    return _html_table(["input", "source", "revision asked", "commit read", "note"], rows)


@dataclass(frozen=True)
class Settings:
    """What the rule report_benchmark passes (``confagg.settings.for_rule``): the aggregator
    variants' config entries (``evaluation.aggregators``: name, trained, confidence, and the
    control ``confidences`` where set), which say which pairs to test."""

    aggregators: tuple[dict, ...]


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
    sources: Sequence[Path] = (),
    settings: Settings | None = None,
) -> None:
    """One benchmark's report from its seeds, the curation summary (for the contamination it
    found) and the training curves (``training``: a PNG of :func:`training_curves`, embedded):
    ``out["html"]`` (the page), ``out["metrics"]`` (every number of it), ``out["summary"]`` (a
    markdown table) and each of ``figures`` (``{name in FIGURES: png path}``); ``sources``: the
    records of the models and data it was computed from (revision and commit); ``settings``:
    the aggregator variants, for the paired tests between them (without: only each aggregator
    against maj@k)."""
    unknown = sorted(set(figures or {}) - set(FIGURES))
    if unknown:
        raise ValueError(f"no figure named {unknown} (figures: {', '.join(FIGURES)})")
    results = [json.loads(Path(s.metrics).read_text()) for s in seeds]
    frames = [read_table(s.candidates, EVAL_CANDIDATES).to_pandas() for s in seeds]
    # the optional columns the table's schema has (train_seed: the evaluation grid's)
    columns = [*AGGREGATOR_COLUMNS, *(c for c in AGGREGATOR_OPTIONAL if c in AGG_OUTPUTS.names)]
    aggregators = [
        None
        if s.aggregators is None
        else read_table(s.aggregators, AGG_OUTPUTS, columns).to_pandas()
        for s in seeds
    ]
    candidates = pd.concat(frames)
    summary = seed_summary(results)
    per_seed = pd.concat([flatten(r) for r in results], ignore_index=True)
    pass1 = np.array([r["pass@1"] for r in results], dtype=float)
    pass1_stats = (float(pass1.mean()), float(pass1.std(ddof=1)) if len(pass1) > 1 else math.nan)
    k = _set_size(summary)
    scored = list(zip(results, frames, aggregators, strict=True))
    bins, by_difficulty = accuracy_by_difficulty(scored, k)
    variants = settings.aggregators if settings is not None else ()
    unc = uncertainty(scored, summary, variants)
    metrics = {
        "benchmark": benchmark,
        "seeds": [r["seed"] for r in results],
        "pass@1": {"mean": pass1_stats[0], "std": pass1_stats[1]},
        "auroc": {
            m: {
                kind: {"mean": nanmean(v), "per_seed": v}
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
        "uncertainty": unc,
        "per_seed": results,
    }
    write_json(metrics, out["metrics"])
    md = summary_markdown(benchmark, summary, pass1_stats, len(results), unc)
    with atomic_path(out["summary"]) as tmp:
        tmp.write_text(md)

    plots = benchmark_plots(summary, per_seed, candidates, benchmark)
    plots.update(calibration_plots(candidates, benchmark))
    plots["accuracy_by_difficulty"] = difficulty_plot(bins, by_difficulty, k, benchmark)
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
        uncertainty_note=html.escape(_uncertainty_note(unc)),
        headline=_html_table(HEADLINE_HEAD, headline_table(unc["headline"]))
        if unc["headline"]
        else "<p>No aggregator variant was evaluated.</p>",
        paired=_html_table(PAIRED_HEAD, paired_table(unc["paired"]))
        if unc["paired"]
        else "<p>No pair to compare.</p>",
        online=_online_table(summary),
        auroc=_auroc_table(results),
        calibration=_img("reliability", plots["reliability"]) + _img("roc", plots["roc"]),
        difficulty_k=k,
        difficulty=_difficulty_table(bins, by_difficulty)
        + _img("accuracy_by_difficulty", plots["accuracy_by_difficulty"]),
        training=curves,
        counts=_counts_table(results),
        contamination=_contamination(benchmark, curation),
        provenance=_provenance(sources),
        plots="".join(
            f"<h2>{html.escape(name.replace('_', ' '))}</h2>{_img(name, data)}"
            for name, data in plots.items()
            if name not in own_section
        ),
    )
    with atomic_path(out["html"]) as tmp:
        tmp.write_text(page)


def build_summary(
    metrics_files: Sequence[Path], out: Path, csv: Path | None = None, costs: str = ""
) -> None:
    """One table across benchmarks: pass@1 and every method at equal cost, k = m (the
    aggregators' set size: each answer is drawn from m samples), or at the largest k when no
    aggregator was evaluated; the oracle pass@k apart. With ``csv``: every number of every
    benchmark (``SUMMARY_COLUMNS``, :func:`summary_rows`)."""
    blocks, tables, headlines = [], [], []
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        unc = m.get("uncertainty") or {}
        headlines += [[m["benchmark"], *row] for row in headline_table(unc.get("headline", []))]
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
    if headlines:
        lines += [
            "",
            "Headline: the smallest k at which voting reaches each aggregator, with 95%",
            "bootstrap intervals over each benchmark's problems (how: reports/<benchmark>/).",
            "",
            *_markdown_rows(["benchmark", *HEADLINE_HEAD], headlines),
        ]
    if costs:  # what the run cost (confagg.costs)
        lines += ["", costs]
    if csv is not None:
        with atomic_path(csv) as tmp:
            pd.concat(tables, ignore_index=True).to_csv(tmp, index=False, float_format="%.10g")
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


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
        "--sources", nargs="*", type=Path, default=[], help="model and data records (.source.json)"
    )
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
    b.add_argument(
        "--settings", default=None, help="JSON, see the rule report_benchmark (the variants)"
    )
    b.add_argument("--html", type=Path, required=True, help="report.html to write")
    b.add_argument("--metrics-out", type=Path, required=True, help="metrics.json to write")
    b.add_argument("--summary-out", type=Path, required=True, help="summary.md to write")
    t = sub.add_parser("summary", help="one table across benchmarks")
    t.add_argument("metrics", nargs="+", type=Path)
    t.add_argument("--out", type=Path, required=True, help="summary.md to write")
    t.add_argument("--csv", type=Path, default=None, help="summary.csv to write")
    t.add_argument(
        "--costs",
        nargs=3,
        metavar=("RUN", "LOGS", "CONFIG"),
        help="add what the run cost: results/<run>, logs/<run>, the validated config (JSON)",
    )
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
        settings = None if args.settings is None else load(Settings, args.settings)
        build_report(
            args.name,
            seeds,
            outputs,
            args.curation,
            args.training,
            figures,
            args.sources,
            settings,
        )
    elif args.cmd == "summary":
        spent = ""
        if args.costs:
            run, logs, config = args.costs
            spent = costs.section(Path(run), Path(logs), json.loads(config))
        build_summary(args.metrics, args.out, args.csv, spent)
    elif args.cmd == "training":
        with atomic_path(args.out) as tmp:
            tmp.write_bytes(base64.b64decode(training_curves(args.logs)))
    else:
        compare_page(args.run_a, args.run_b, args.out)


if __name__ == "__main__":
    main()
