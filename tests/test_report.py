"""The per-benchmark report and the summary across benchmarks (confagg.report) from metrics
that confagg.evaluate computed on small hand-made tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from confagg.confidence import METRICS
from confagg.files import write_json
from confagg.report import build_report, build_summary
from confagg.scoring import Online, evaluate_benchmark, in_memory_spend
from confagg.tables import EVAL_CANDIDATES, write_table

REPORT_FILES = {"html": "report.html", "metrics": "metrics.json", "summary": "summary.md"}


def _seed_dir(tmp_path, seed: int):
    """metrics.json + candidates.parquet of one seed: 3 problems x 8 samples, an aggregator."""
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
    return d


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
    seeds = [(d / "metrics.json", d / "candidates.parquet") for d in dirs]
    outputs = {n: out / f for n, f in REPORT_FILES.items()}
    build_report("bench", seeds, outputs, curation)
    md = (out / "summary.md").read_text()
    equal_cost, oracle = md.split("Oracle")
    assert "| pass@k |" in oracle and "| pass@k |" not in equal_cost
    assert "| maj@k |" in equal_cost and "DeepConf-online top 10% (lowest_group)" in equal_cost
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
    assert html.count("data:image/png;base64,") == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["auroc"]["tail"]) == {"pooled", "per_problem_mean"}

    build_summary([out / "metrics.json"], tmp_path / "summary.md")
    overall = (tmp_path / "summary.md").read_text()
    main, oracle = overall.split("Oracle")
    assert "bench (k=4)" in main and "| Conf-AggLM |" in main and "| pass@k |" in oracle
    assert "| pass@k |" not in main
