"""The per-benchmark report and the summary across benchmarks (confagg.report) from metrics
that confagg.evaluate computed on small hand-made tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from confagg import methods as mt
from confagg.confidence import METRICS
from confagg.figures import training_curves
from confagg.files import write_json
from confagg.report import FIGURES, SeedFiles, build_report, build_summary, main
from confagg.scoring import Online, evaluate_benchmark, in_memory_spend
from confagg.summaries import (
    DIFFICULTY_BINS,
    SUMMARY_COLUMNS,
    accuracy_by_difficulty,
    compare_runs,
    difficulty_bin,
    lighteval_name,
    reliability_bins,
    roc_curve,
)
from confagg.tables import AGG_OUTPUTS, EVAL_CANDIDATES, write_table
from conftest import REPO

REPORT_FILES = {"html": "report.html", "metrics": "metrics.json", "summary": "summary.md"}
PNG = b"\x89PNG\r\n\x1a\n"


def _seed_dir(tmp_path, seed: int):
    """metrics.json + candidates.parquet + aggregators.parquet of one seed: 3 problems x 8
    samples, an aggregator."""
    rng = np.random.default_rng(seed)
    rows, confs = [], []
    for p in range(3):
        for i in range(8):
            n = int(rng.integers(4, 12))
            confs.append(rng.uniform(0.5, 3.0, n))
            group = int(rng.integers(0, 3))
            rows.append({"problem_id": f"p{p}", "sample_idx": i, "answer_group": group,
                         "correct": group == 0, "num_tokens": n, "finish_reason": "stop",
                         **{m: float(rng.uniform(0.5, 3.0)) for m in METRICS}})  # fmt: skip
    table = pd.DataFrame(rows)
    agg = pd.DataFrame(
        [
            ("Conf-AggLM", f"p{p}", j, 4, bool(rng.integers(0, 2)), 20)
            for p in range(3)
            for j in (0, 1)
        ],
        columns=["method", "problem_id", "set_idx", "k", "correct", "num_tokens"],
    )
    online = Online(warmup=2, etas=(10, 90), consensus=0.95)
    result = evaluate_benchmark(table, [1, 2, 4, 8], seed, aggregator=agg, online=online,
                                spend=in_memory_spend(confs, 3))  # fmt: skip
    result["sample_counts"] = {"no_answer": 0, "unfinished_thinking": 2, "truncated": 1}
    d = tmp_path / f"seed{seed}"
    write_json(result, d / "metrics.json")
    write_table(pa_table(table[EVAL_CANDIDATES.names]), d / "candidates.parquet", EVAL_CANDIDATES)
    outputs = agg.assign(output_idx=0, train_seed=None, text="", answer="1", status="ok",
                         prompt_tokens=50, prompt_truncated=False)  # fmt: skip
    write_table(pa_table(outputs[AGG_OUTPUTS.names]), d / "aggregators.parquet", AGG_OUTPUTS)
    return d


def _files(d) -> SeedFiles:
    return SeedFiles(d / "metrics.json", d / "candidates.parquet", d / "aggregators.parquet")


def pa_table(frame: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def test_report_separates_the_oracle_and_marks_identical_methods(tmp_path):
    dirs = [_seed_dir(tmp_path, s) for s in (0, 1)]
    curation = tmp_path / "curated.json"
    curation.write_text(json.dumps({"contaminated": [
        {"id": "q7", "matches": ["bench:b1"], "how": "ngram", "ngram": "a b c d e f g h"},
        {"id": "q8", "matches": ["other:b2"], "how": "exact", "ngram": None},
    ]}))  # fmt: skip
    out = tmp_path / "report"
    out.mkdir()
    seeds = [_files(d) for d in dirs]
    outputs = {n: out / f for n, f in REPORT_FILES.items()}
    figures = {name: out / "figures" / f"{name}.png" for name in FIGURES}
    # the model and data records as rules record_model and prepare_problems write them
    model = tmp_path / "generator.source.json"
    model.write_text(
        json.dumps(
            {
                "role": "generator",
                "model": "Qwen/Qwen3-1.7B",
                "revision": "v1.0",
                "commit": "0f" * 20,
                "note": None,
            }
        )
    )
    data = tmp_path / "bench.source.json"
    data.write_text(json.dumps({"source": {"hub": "x/y"}, "revision": None, "commit": None,
                                "sha256": None, "note": "offline"}))  # fmt: skip
    build_report("bench", seeds, outputs, curation, figures=figures, sources=[model, data])
    page = (out / "report.html").read_text()
    assert "<td>generator</td><td>Qwen/Qwen3-1.7B</td><td>v1.0</td><td>" + "0f" * 20 in page
    assert "<td>bench</td>" in page and "(default branch)" in page and "(not known)" in page
    md = (out / "summary.md").read_text()
    equal_cost, oracle = md.split("Oracle")
    assert "| pass@k |" in oracle and "| pass@k |" not in equal_cost
    assert "| maj@k |" in equal_cost
    assert "DeepConf-online top 10% (lowest_group; paper, Alg. 2" in equal_cost
    assert "DeepConf-online top 10% (lowest_group; released code" in equal_cost
    assert "over 2 evaluation seeds (the training runs fixed" in md
    # eta = 10 of 8 keeps one trace: the filter is best-of-8 in every set, and says so
    row = next(line for line in equal_cost.splitlines() if "DeepConf top 10% (mean)" in line)
    assert row.split("|")[-2].strip().endswith("(= best-of-k (mean))")

    html = (out / "report.html").read_text()
    assert "per-problem mean" in html and "tokens saved" in html
    assert "Conf-AggLM" in html and "vs maj@m" in html
    assert "1 (0 exact, 1 sharing a word n-gram)" in html
    assert "<td>q7</td>" in html and "<td>q8</td>" not in html
    assert "thinking never ended" in html
    assert html.count("data:image/png;base64,") == len(FIGURES)
    assert "No trained aggregator variant was evaluated" in html
    for name, path in figures.items():  # each figure also a PNG of its own
        assert path.read_bytes().startswith(PNG), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["auroc"]["tail"]) == {"pooled", "per_problem_mean"}

    build_summary([out / "metrics.json"], tmp_path / "summary.md")
    overall = (tmp_path / "summary.md").read_text()
    main, oracle = overall.split("Oracle")
    assert "bench (k=4, n=8)" in main and "| Conf-AggLM |" in main and "| pass@k |" in oracle
    assert "| pass@k |" not in main


def test_lighteval_names_carry_k_and_n():
    assert lighteval_name("pass", 1, "32") == "pass@k:k=1&n=32"
    assert lighteval_name("majority", 8, "128") == "maj@k:k=8&n=128"
    assert lighteval_name("weighted:tail", 4, "8") == "weighted_maj@k:k=4&n=8&conf=tail"
    assert lighteval_name("top10:mean", 4, "8") == "deepconf@k:k=4&n=8&eta=10&conf=mean"
    assert (
        lighteval_name("online90", 8, "8") == "deepconf_online@k:k=8&n=8&eta=90&conf=lowest_group"
    )
    released = lighteval_name("online90:released", 8, "8")
    assert released == "deepconf_online_released@k:k=8&n=8&eta=90&conf=lowest_group"
    assert lighteval_name("Conf-AggLM", 4, "8") == "Conf-AggLM@k:k=4&n=8"


def _report(tmp_path, name: str, seeds: tuple[int, ...]):
    """A benchmark report of hand-made seeds under ``tmp_path/name``: its metrics.json."""
    base = tmp_path / name
    dirs = [_seed_dir(base, s) for s in seeds]
    out = base / "report"
    build_report(name, [_files(d) for d in dirs], {n: out / f for n, f in REPORT_FILES.items()})
    return out / "metrics.json"


def test_summary_csv_holds_every_number_of_every_benchmark(tmp_path):
    files = [_report(tmp_path, "b1", (0, 1)), _report(tmp_path, "b2", (2, 3, 4))]
    main(["summary", *map(str, files), "--out", str(tmp_path / "s.md"),
          "--csv", str(tmp_path / "summary.csv")])  # fmt: skip
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert list(csv.columns) == list(SUMMARY_COLUMNS)
    for path in files:
        metrics = json.loads(path.read_text())
        rows = csv[csv["benchmark"] == metrics["benchmark"]]
        methods = rows[rows["quantity"] == "accuracy"]
        # one row per method x k, with the report's numbers
        assert len(methods) == len(metrics["summary"])
        assert not methods.duplicated(["method", "k"]).any()
        for cell in metrics["summary"]:
            row = methods[(methods["method"] == cell["method"]) & (methods["k"] == cell["k"])]
            assert len(row) == 1
            assert row["mean"].iloc[0] == pytest.approx(cell["accuracy_mean"])
            assert row["name"].iloc[0] == lighteval_name(cell["method"], cell["k"], "8")
            per_seed = [r["methods"][cell["method"]]["by_k"][str(cell["k"])]["accuracy"]
                        for r in metrics["per_seed"]]  # fmt: skip
            assert [float(v) for v in row["per_seed"].iloc[0].split()] == pytest.approx(per_seed)
            assert row["std"].iloc[0] == pytest.approx(np.std(per_seed, ddof=1))
        seeds = " ".join(str(s) for s in metrics["seeds"])
        assert set(rows["seeds"]) == {seeds} and set(rows["n_seeds"]) == {len(metrics["seeds"])}
        assert "pass@k:k=1&n=8" in set(methods["name"])
        auroc = rows[rows["quantity"] == "auroc"].set_index("metric")["mean"]
        assert {m: auroc[m] for m in METRICS} == pytest.approx(
            {m: metrics["auroc"][m]["pooled"]["mean"] for m in METRICS}
        )
    assert "| pass@1 |" in (tmp_path / "s.md").read_text()


def test_compare_two_runs_side_by_side(tmp_path):
    runs = []
    for run, seeds in (("a", (0, 1)), ("b", (2, 3))):
        metrics = _report(tmp_path / run, "bench", seeds)
        folder = tmp_path / "results" / run
        build_summary([metrics], folder / "summary.md", folder / "summary.csv")
        runs.append(folder)
    both = compare_runs(*runs)
    a, b = (pd.read_csv(r / "summary.csv") for r in runs)
    maj = both[(both["method"] == "majority") & (both["k"] == 4)].iloc[0]
    a_maj = a[(a["method"] == "majority") & (a["k"] == 4)]["mean"].iloc[0]
    b_maj = b[(b["method"] == "majority") & (b["k"] == 4)]["mean"].iloc[0]
    assert maj["difference"] == pytest.approx(b_maj - a_maj)
    assert len(both) == len(a) == len(b)  # the same rows matched one to one
    assert both[["quantity", "method"]].values.tolist() == a[["quantity", "method"]].values.tolist()
    # a row one run lacks: blank on its side, and last when only b has it
    b.iloc[1:].to_csv(tmp_path / "fewer.csv", index=False)
    fewer = compare_runs(runs[0], tmp_path / "fewer.csv")
    assert np.isnan(fewer["mean_b"].iloc[0]) and np.isnan(fewer["difference"].iloc[0])
    reverse = compare_runs(tmp_path / "fewer.csv", runs[0])
    assert reverse[["method", "k"]].iloc[-1].tolist() == a[["method", "k"]].iloc[0].tolist()
    page = tmp_path / "compare.html"
    main(["compare", str(runs[0]), str(runs[1]), "--out", str(page)])
    text = page.read_text()
    assert "a (a) vs b (b)" in text and "maj@k:k=4&amp;n=8" in text
    assert f"{100 * (b_maj - a_maj):+.1f}" in text
    with pytest.raises(FileNotFoundError, match=r"no summary\.csv"):
        compare_runs(runs[0], tmp_path / "nowhere")


def test_difficulty_bins_are_the_problems_pass_at_1():
    right = np.arange(9)
    assert difficulty_bin(right, np.full(9, 8)).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 5]
    assert DIFFICULTY_BINS[1] == "(0, 25%]"  # 2 of 8 (exactly 25%) is in it


def test_accuracy_by_difficulty_on_a_known_case():
    # 4 problems x 4 samples; answer group 0 is right. p0: never right, p1: 1 of 4 right (the
    # other three agree on a wrong answer), p2: 3 of 4, p3: always right
    groups = {"p0": [1, 1, 2, 2], "p1": [0, 1, 1, 1], "p2": [0, 0, 0, 1], "p3": [0, 0, 0, 0]}
    rows = [{"problem_id": p, "sample_idx": i, "answer_group": g, "correct": g == 0,
             "num_tokens": 10, **{m: 1.0 + i for m in METRICS}}
            for p, gs in groups.items() for i, g in enumerate(gs)]  # fmt: skip
    cands = pd.DataFrame(rows)
    # an aggregator right on p0 only (an answer no sample had), wrong elsewhere: k = m = 4
    columns = ["method", "problem_id", "set_idx", "k", "correct", "num_tokens"]
    agg = pd.DataFrame([("agg", p, 0, 4, p == "p0", 5) for p in groups], columns=columns)
    result = evaluate_benchmark(cands, [1, 4], 0, aggregator=agg)
    bins, acc = accuracy_by_difficulty([(result, cands, agg)], 4)
    assert bins["label"].tolist() == [DIFFICULTY_BINS[b] for b in (0, 1, 3, 5)]
    assert bins["n_problems"].tolist() == [1, 1, 1, 1]
    table = acc.pivot(index="method", columns="bin", values="accuracy_mean")
    assert table.loc["majority"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert table.loc["pass"].tolist() == [0.0, 1.0, 1.0, 1.0]  # pass@4: any of the 4
    assert table.loc["pass@1"].tolist() == [0.0, 0.25, 0.75, 1.0]
    assert table.loc["agg"].tolist() == [1.0, 0.0, 0.0, 0.0]
    # the bins weighted by their problems give the benchmark's accuracy
    for method in ("majority", "weighted:mean", "agg"):
        overall = result["methods"][method]["by_k"]["4"]["accuracy"]
        assert np.average(table.loc[method], weights=bins["n_problems"]) == pytest.approx(overall)


def test_reliability_and_roc_of_a_confidence():
    conf = np.array([0.1, 0.2, 0.2, 0.4, 0.5, 0.5, 0.7, 0.9, np.nan])
    right = np.array([0, 0, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    fpr, tpr = roc_curve(conf, right)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    # the area under the curve (ties entering together) is the rank AUROC, ties counting 1/2
    assert np.trapezoid(tpr, fpr) == pytest.approx(mt.auroc(conf, right))
    bins = reliability_bins(conf, right, bins=2)
    assert bins["n"].tolist() == [4, 4]  # NaN left out; equal-count halves
    assert bins["share_correct"].tolist() == [0.25, 0.75]


def test_training_curves_from_the_logs(tmp_path):
    logs = []
    for i, variant in enumerate(("plain", "confidence")):
        path = tmp_path / variant / "log.jsonl"
        path.parent.mkdir()
        rows = [{"step": s, "split": "train", "reward": 0.1 * s + i, "kl": None,
                 "completion_length": 20 - s, "truncated": 0.5 / s}
                for s in range(1, 5)]  # fmt: skip
        rows.append({"step": 4, "split": "eval", "reward": 0.3, "completion_length": 15})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "spl')
        logs.append(path)
    out = tmp_path / "curves.png"
    main(["training", *map(str, logs), "--out", str(out)])  # the torn last line skipped
    assert out.read_bytes().startswith(PNG)
    logs[0].write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"plain/log.jsonl:2: not a JSON line"):
        training_curves(logs)


def test_report_rule_registers_every_figure_for_snakemake_report(tmp_path):
    rules = (REPO / "workflow/rules/evaluate.smk").read_text()
    report_rule = rules[rules.index("rule report_benchmark:") : rules.index("rule report_summary:")]
    listed = report_rule[report_rule.index("for figure in (") :]
    assert [f for f in FIGURES if f'"{f}"' in listed] == list(FIGURES)
    for figure in FIGURES:  # each has its caption
        assert (REPO / "workflow/report" / f"{figure}.rst").is_file()
    assert 'caption="../report/training_curves.rst"' in rules
    assert 'category="Summary"' in rules[rules.index("rule report_summary:") :]


VARIANTS = (
    {"name": "AggLM", "trained": "plain", "confidence": False},
    {"name": "Conf-AggLM", "trained": "confidence", "confidence": True},
    {"name": "Conf-AggLM (permuted)", "trained": "confidence", "confidence": True,
     "confidences": "permuted"},
)  # fmt: skip


def _grid_seed_dir(tmp_path, seed: int):
    """12 problems x 8 samples; three variants at set sizes 2 and 4, r = 2 completions, two
    training runs each: Conf-AggLM right on every set, AggLM on none, the permuted control
    on every other problem; AggLM answers nothing on its first completion."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(12):
        for i in range(8):
            group = int(rng.integers(0, 3))
            rows.append({"problem_id": f"p{p:02d}", "sample_idx": i, "answer_group": group,
                         "correct": group == 0, "num_tokens": 10, "finish_reason": "stop",
                         **{m: float(rng.uniform(0.5, 3.0)) for m in METRICS}})  # fmt: skip
    table = pd.DataFrame(rows)
    calls = []
    for name, right in (("AggLM", lambda p: False), ("Conf-AggLM", lambda p: True),
                        ("Conf-AggLM (permuted)", lambda p: p % 2 == 0)):  # fmt: skip
        for k in (2, 4):
            for train_seed in (0, 1):
                for p in range(12):
                    for j in range(8 // k):
                        for r in (0, 1):
                            none = name == "AggLM" and r == 0
                            calls.append((name, f"p{p:02d}", j, k, r, train_seed,
                                          None if none else "1", right(p), 5, 40))  # fmt: skip
    columns = ["method", "problem_id", "set_idx", "k", "output_idx", "train_seed", "answer",
               "correct", "num_tokens", "prompt_tokens"]  # fmt: skip
    agg = pd.DataFrame(calls, columns=columns)
    result = evaluate_benchmark(table, [1, 2, 4, 8], seed, aggregator=agg)
    d = tmp_path / f"seed{seed}"
    write_json(result, d / "metrics.json")
    write_table(pa_table(table[EVAL_CANDIDATES.names]), d / "candidates.parquet", EVAL_CANDIDATES)
    outputs = agg.assign(text="", status="ok", prompt_truncated=False)
    outputs = outputs.drop_duplicates(["method", "problem_id", "set_idx", "k", "output_idx"])
    write_table(pa_table(outputs[AGG_OUTPUTS.names]), d / "aggregators.parquet", AGG_OUTPUTS)
    return d


def test_report_gives_the_headline_paired_tests_and_training_seeds(tmp_path):
    from confagg.report import Settings

    dirs = [_grid_seed_dir(tmp_path, s) for s in (0, 1)]
    out = tmp_path / "report"
    settings = Settings(aggregators=VARIANTS)
    outputs = {n: out / f for n, f in REPORT_FILES.items()}
    build_report("grid", [_files(d) for d in dirs], outputs, settings=settings)
    metrics = json.loads((out / "metrics.json").read_text())
    unc = metrics["uncertainty"]
    assert unc["n_problems"] == 12 and "sign-flip" in unc["test"]

    # the headline: every aggregator x set size x {maj@k, best weighted vote}
    heads = {(h["aggregator"], h["set_size"], h["vote"]): h for h in unc["headline"]}
    assert len(heads) == 3 * 2 * 2
    perfect = heads["Conf-AggLM", 2, "majority"]
    maj = {s["k"]: s["accuracy_mean"] for s in metrics["summary"] if s["method"] == "majority"}
    assert perfect["accuracy"]["mean"] == 1.0
    assert max(maj.values()) < 1.0 and perfect["k"] is None and perfect["token_ratio"] is None
    never = heads["AggLM", 4, "majority"]
    assert never["k"] == 1 and never["token_ratio"] == pytest.approx(10 / (40 + 5))

    # paired tests: Conf-AggLM against AggLM (right on every problem the other misses)
    tests = {(t["comparison"], t["a"], t["a_k"], t["b"], t["b_k"]): t for t in unc["paired"]}
    conf = tests["confidences shown vs not", "Conf-AggLM", 2, "AggLM", 2]
    assert conf["difference"] == 1.0 and conf["significant"] and conf["p_value"] < 0.001
    control = tests["real confidences vs permuted", "Conf-AggLM", 4, "Conf-AggLM (permuted)", 4]
    assert control["difference"] == pytest.approx(0.5) and control["low"] > 0
    same_k = tests["vs maj@k at the same k", "Conf-AggLM", 4, "majority", 4]
    assert same_k["difference"] == pytest.approx(1 - maj[4])
    # no prompted variant: no "trained vs prompted" pair
    assert not any(t["comparison"] == "trained vs prompted" for t in unc["paired"])

    # what each learned, and the two spreads, labelled
    agg_rows = {(s["method"], s["k"]): s for s in metrics["summary"]}
    assert agg_rows["AggLM", 2]["no_answer_share_mean"] == 0.5
    assert agg_rows["AggLM", 2]["accuracy_answered_mean"] == 0.0
    assert agg_rows["Conf-AggLM", 4]["n_train_seeds"] == 2
    html = (out / "report.html").read_text()
    assert "± over training seeds" in html and "± 0.0 over 2 training seeds" in html
    assert "no answer (% of calls)" in html and "accuracy among answered (%)" in html
    md = (out / "summary.md").read_text()
    assert "### Headline" in md and "not reached" in md and "### Paired comparisons" in md
    assert "| AggLM | 2 | 0.0 ± 0.0 | ± 0.0 over 2 training seeds |" in md
    assert "| 50.0 | 0.0 | 45 | 40 |" in md  # no answer, among answered, tokens, prompt
    assert "| confidences shown vs not | Conf-AggLM (k=2) | AggLM (k=2) | +100.0" in md

    build_summary([out / "metrics.json"], tmp_path / "summary.md")
    overall = (tmp_path / "summary.md").read_text()
    assert "| grid | Conf-AggLM | 2 | 100.0 [100.0, 100.0] |" in overall
