"""The real workflow with a tiny random Qwen3 through vLLM, every stage to the reports; a shard
killed midway and rerun; sampling reproducible under the seed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from test_sample import _command as sample_command
from test_sample import make_settings

from confagg.confidence import METRICS
from confagg.parts import parts_dir
from confagg.problems import demo_problems, write_problems
from confagg.report import FIGURES
from confagg.summaries import DIFFICULTY_BINS
from confagg.tables import AGG_OUTPUTS, GRADES, SAMPLES, SCORES, SETS, read_table
from confagg.verify import STATUSES
from conftest import REPO, SHARED_DATA, snakemake

pytestmark = pytest.mark.integration

ENGINE = {"max_model_len": 1024, "kv_cache_memory_bytes": 256 * 2**20, "enforce_eager": True}


# the four variants and a control: Conf-AggLM with each set's confidences permuted
AGGREGATORS = [
    {"name": "aggregator (prompted, no conf.)", "trained": None, "confidence": False},
    {"name": "aggregator (prompted, conf.)", "trained": None, "confidence": True},
    {"name": "AggLM (trained, no conf.)", "trained": "plain", "confidence": False},
    {"name": "Conf-AggLM (trained, conf.)", "trained": "confidence", "confidence": True},
    {
        "name": "Conf-AggLM (permuted conf.)",
        "trained": "confidence",
        "confidence": True,
        "confidences": "permuted",
    },
]


def tiny_config(model, **overrides) -> dict:
    cfg = {
        "run_name": "tiny",
        "seed": 3,
        "generator": {"model": str(model), "engine": ENGINE, "chat_template_kwargs": {}},
        "sampling": {
            "max_tokens": 24,
            "temperature": 1.0,
            "top_k": -1,
            "top_p": 1.0,
            "problems_in_flight": 2,
        },
        "confidence": {"window": 8, "tail_tokens": 8},
        "training_pool": {
            "source": {"demo": {"n": 5, "seed": 1}},
            "samples_per_problem": 3,
            "shards": 2,
        },
        "benchmarks": {"mini": {"source": {"demo": {"n": 3, "seed": 2}}}},
        "evaluation": {
            "seeds": [0],
            "samples_per_problem": 4,
            "shards": 1,
            "ks": [1, 2, 4],
            # 4 samples: 2 sets of 2 and 1 of 4 per problem
            "set_sizes": [2, 4],
            # two aggregation jobs (problems 0, 2 and 1), merged: the cluster's shape
            "aggregate_shards": 2,
            "aggregator_sampling": {"max_tokens": 16, "temperature": 1.0},
            "aggregators": AGGREGATORS,
            "deepconf_online": {"warmup": 2},  # online at k = 4
        },
        # 3 samples per problem: one disjoint set of 2 (sets x size <= samples, checked at start)
        "curation": {"sets_per_problem": 1, "set_size": 2},
        "grading": {"processes": 1},
        # a set of 4 (the largest set size) with its confidence headers is ~500 tokens to the
        # tiny tokenizer before any candidate text: the whole context minus the 16 output tokens
        "aggregator": {"prompt": {"max_prompt_tokens": 1024 - 16}},
        "training": {
            "seeds": [0, 1],  # two GRPO runs per variant, both evaluated and reported
            "gpus": 0,
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "num_generations": 4,
            "max_completion_length": 12,
            "lora": {"r": 4, "alpha": 8},
            "save_steps": 1,
        },
    }
    cfg.update(overrides)
    return cfg


REAL_BENCHMARK = SHARED_DATA / "benchmarks" / "aime24.jsonl"  # aime24-02's answer is "025"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model):
    """One run of the whole workflow: the generated "mini" benchmark, and the first two AIME 2024
    problems from ../shared/data where that folder exists. Returns (workdir, results folder)."""
    workdir = tmp_path_factory.mktemp("tiny-run")
    shutil.copytree(REPO / "config", workdir / "config")
    cfg = tiny_config(tiny_model)
    if REAL_BENCHMARK.is_file():  # (a real problem is ~700 tokens to the tiny tokenizer)
        cfg["benchmarks"]["aime24"] = {"source": {"path": str(REAL_BENCHMARK)}, "limit": 2}
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    snakemake("--configfile", "tiny.yaml", "--replace-workflow-config", "--cores", "2", cwd=workdir)
    return workdir, workdir / "results/tiny"


def test_whole_workflow_to_the_report(tiny_run):
    workdir, out = tiny_run
    for dataset, seed, shards, n, problems in [("train_pool", 3, 2, 3, 5), ("mini", 0, 1, 4, 3)]:
        rows = 0
        for shard in range(shards):
            samples = read_table(
                out / f"samples/{dataset}/seed{seed}/shard{shard}.parquet", SAMPLES
            )
            scores = read_table(out / f"scores/{dataset}/seed{seed}/shard{shard}.parquet", SCORES)
            rows += samples.num_rows
            assert (
                samples.column("problem_id").to_pylist() == scores.column("problem_id").to_pylist()
            )
            lengths = [len(c) for c in samples.column("token_confidence").to_pylist()]
            assert lengths == samples.column("num_tokens").to_pylist()
            assert all(0 < n_tok <= 24 for n_tok in lengths)
            conf = np.concatenate(
                [np.asarray(c, np.float32) for c in samples.column("token_confidence").to_pylist()]
            )
            assert np.isfinite(conf).all() and (conf > 0).all()  # -mean(logprobs) > 0
            for m in METRICS:
                assert np.isfinite(scores.column(m).to_numpy()).all()
            assert set(samples.column("finish_reason").to_pylist()) <= {"stop", "length"}
            assert not parts_dir(
                out / f"samples/{dataset}/seed{seed}/shard{shard}.parquet"
            ).exists()
        assert rows == problems * n
    # graded and curated: every sample has a verdict, 5 problems x 1 set of 2 split by problem
    for dataset, seed, shards in [("train_pool", 3, 2), ("mini", 0, 1)]:
        for shard in range(shards):
            samples = read_table(
                out / f"samples/{dataset}/seed{seed}/shard{shard}.parquet", SAMPLES
            )
            grades = read_table(out / f"grades/{dataset}/seed{seed}/shard{shard}.parquet", GRADES)
            assert grades.column("problem_id").equals(samples.column("problem_id"))
            assert set(grades.column("status").to_pylist()) <= set(STATUSES)
    summary = json.loads((out / "curated/summary.json").read_text())
    assert summary["samples"]["total"] == 5 * 3 and summary["problems"]["with_sets"] == 5
    curated = {
        split: read_table(out / f"curated/{split}.parquet", SETS) for split in ("train", "val")
    }
    split_ids = [set(t.column("problem_id").to_pylist()) for t in curated.values()]
    assert split_ids[0] and split_ids[1] and not split_ids[0] & split_ids[1]
    assert sum(t.num_rows for t in curated.values()) == sum(
        summary["sets"][s]["hard"] + summary["sets"][s]["easy"] for s in ("train", "val")
    )
    # trained, evaluated and reported: every method of every k, numbers as in metrics.json
    for variant in ("confidence", "plain"):  # Conf-AggLM and plain AggLM, two seeds each
        adapters = [out / f"train/{variant}/seed{s}/adapter" for s in (0, 1)]
        assert all((a / "adapter_config.json").is_file() for a in adapters)
        # two runs, not one copied: trained with seeds of their own
        manifests = [json.loads((a.parent / "manifest.json").read_text()) for a in adapters]
        assert manifests[0]["seeds"] != manifests[1]["seeds"]
    agg = read_table(out / "eval/mini/seed0/aggregators.parquet", AGG_OUTPUTS).to_pandas()
    runs = agg.groupby("method", sort=False)["train_seed"].agg(lambda s: sorted(set(s.dropna())))
    assert runs.to_dict() == {
        "aggregator (prompted, no conf.)": [],
        "aggregator (prompted, conf.)": [],
        "AggLM (trained, no conf.)": [0, 1],
        "Conf-AggLM (trained, conf.)": [0, 1],
        "Conf-AggLM (permuted conf.)": [0, 1],
    }
    # (2 prompted + 3 trained x 2 seeds) runs x 3 problems x (2 sets of 2 + 1 of 4)
    assert len(agg) == (2 + 3 * 2) * 3 * (2 + 1)
    assert sorted(agg.groupby("k")["set_idx"].max().items()) == [(2, 1), (4, 0)]
    metrics = json.loads((out / "reports/mini/metrics.json").read_text())
    seed0 = metrics["per_seed"][0]
    assert seed0["ks"] == [1, 2, 4]
    assert {
        "pass",
        "majority",
        "weighted:tail",
        "top10:mean",
        "best:lowest_group",
        "online10",
        "online90",
        "AggLM (trained, no conf.)",
        "Conf-AggLM (trained, conf.)",
    } <= set(seed0["methods"])
    assert set(seed0["methods"]["online10"]["by_k"]) == {"4"}
    # the aggregators at both set sizes
    for name in ("Conf-AggLM (trained, conf.)", "Conf-AggLM (permuted conf.)"):
        assert set(seed0["methods"][name]["by_k"]) == {"2", "4"}
    assert set(metrics["auroc"]["mean"]) == {"pooled", "per_problem_mean"}
    html = (out / "reports/mini/report.html").read_text()
    # every figure, and the training curves of the trained variants
    assert html.count("data:image/png;base64,") == len(FIGURES) + 1
    assert f"{100 * metrics['pass@1']['mean']:.1f}" in html
    assert "| maj@k |" in (out / "reports/mini/summary.md").read_text()
    for figure in FIGURES:  # also each a file of its own, for snakemake --report
        assert (out / f"reports/mini/figures/{figure}.png").stat().st_size > 0
    assert (out / "reports/training_curves.png").stat().st_size > 0
    assert {b["label"] for b in metrics["difficulty"]["bins"]} <= set(DIFFICULTY_BINS)
    overall = (out / "summary.md").read_text()  # every method at k = m
    assert "mini (k=" in overall and "| Conf-AggLM (trained, conf.) |" in overall
    csv = pd.read_csv(out / "summary.csv")
    row = csv[(csv["benchmark"] == "mini") & (csv["method"] == "majority") & (csv["k"] == 2)]
    assert row["name"].tolist() == ["maj@k:k=2&n=4"]
    majority = seed0["methods"]["majority"]["by_k"]["2"]["accuracy"]
    assert row["mean"].iloc[0] == pytest.approx(majority)
    # a second run has nothing to do
    proc = snakemake(
        "--configfile", "tiny.yaml", "--replace-workflow-config", "--cores", "2", "-n", cwd=workdir
    )
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.skipif(
    not REAL_BENCHMARK.is_file(), reason=f"needs the shared benchmark file {REAL_BENCHMARK}"
)
def test_summary_states_what_the_run_cost(tiny_run):
    """The run's summary ends with its cost per stage: the jobs' benchmark files (CPU time) and
    the generated tokens of their outputs, beside the plan (confagg.costs)."""
    _, out = tiny_run
    text = (out / "summary.md").read_text()
    assert "## What this run cost" in text
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in text[text.index("## What this run cost") :].splitlines()
        if line.startswith("| ") and not line.startswith("| stage")
    }
    tokens = sum(
        sum(read_table(p, SAMPLES, columns=["num_tokens"]).column("num_tokens").to_pylist())
        for p in (out / "samples/train_pool").glob("seed*/shard*.parquet")
    )
    pool = rows["sample_shard (train_pool)"]
    assert pool[1] == "2"  # both shards' benchmark files
    assert pool[4] != "-" and pool[6] == str(tokens)  # CPU time measured; tokens counted
    for stage in ("score_shard (train_pool)", "grade_shard (benchmarks)", "train_aggregator"):
        assert stage in rows and rows[stage][4] != "-"


def test_report_for_a_real_benchmark(tiny_run):
    """AIME 2024 from ../shared/data read from a local JSONL, sampled, graded, aggregated and
    reported beside the generated benchmark, in the same run."""
    _, out = tiny_run
    gold = [json.loads(line) for line in REAL_BENCHMARK.read_text().splitlines()[:2]]
    samples = read_table(out / "samples/aime24/seed0/shard0.parquet", SAMPLES)
    assert samples.column("problem_id").to_pylist() == [p["id"] for p in gold for _ in range(4)]
    problems = [json.loads(line) for line in (out / "data/aime24.jsonl").read_text().splitlines()]
    assert [(p["id"], p["answer"]) for p in problems] == [(p["id"], p["answer"]) for p in gold]
    grades = read_table(out / "grades/aime24/seed0/shard0.parquet", GRADES)
    assert grades.num_rows == 8 and set(grades.column("status").to_pylist()) <= set(STATUSES)
    metrics = json.loads((out / "reports/aime24/metrics.json").read_text())
    assert metrics["benchmark"] == "aime24" and metrics["per_seed"][0]["n_problems"] == 2
    html = (out / "reports/aime24/report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES) + 1
    assert f"{100 * metrics['pass@1']['mean']:.1f}" in html
    overall = (out / "summary.md").read_text()
    assert "aime24 (k=" in overall and "mini (k=" in overall


def test_snakemake_report_holds_every_registered_result(tiny_run):
    """`snakemake --report report.zip` (the README's command) of the finished run: Snakemake's
    page, and every output registered with report() (each benchmark's report.html, the summary;
    any figure registered later is held to the same) as the very bytes the run wrote."""
    workdir, out = tiny_run
    config_args = ("--configfile", "tiny.yaml", "--replace-workflow-config")
    snakemake(*config_args, "--report", "report.zip", cwd=workdir)
    with zipfile.ZipFile(workdir / "report.zip") as archive:
        names = archive.namelist()
        assert "report/report.html" in names
        results = {n: archive.read(n) for n in names if n.startswith("report/data/raw/")}
    # each result is one of the run's files, byte for byte, under its own name
    written = {(p.name, p.read_bytes()): p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    found = set()
    for member, data in results.items():
        key = (member.rsplit("/", 1)[1], data)
        assert key in written, f"{member} in the report is none of the run's files"
        found.add(written[key])
    benchmarks = {p.name for p in (out / "reports").iterdir() if p.is_dir()}
    assert benchmarks >= {"mini"}
    expected = {Path("summary.md")} | {Path(f"reports/{b}/report.html") for b in benchmarks}
    assert found >= expected, expected - found


def _sample_cmd(problems, model, out, chunk=1, n=3):
    """The sample stage's command line (test_sample's) with ``chunk`` problems in flight."""
    return sample_command(problems, model, out, make_settings(n, max_tokens=48, in_flight=chunk))


def test_killed_shard_resumes_without_loss_or_duplicates(tmp_path, tiny_model):
    problems = tmp_path / "problems.jsonl"
    write_problems(demo_problems(8, seed=9), problems)
    out = tmp_path / "shard0.parquet"
    parts = parts_dir(out)
    proc = subprocess.Popen(
        _sample_cmd(problems, tiny_model, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(parts.glob("part-*.parquet"))
    assert len(finished) >= 2 and not out.exists()
    before = {}
    for part in finished:
        for row in pq.read_table(part).to_pylist():
            before[(row["problem_id"], row["sample_idx"])] = row["text"]
    assert 0 < len(before) < 8 * 3

    rerun = subprocess.run(
        _sample_cmd(problems, tiny_model, out),
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(before) // 3} already sampled" in rerun.stderr
    table = read_table(out, SAMPLES)
    keys = list(
        zip(
            table.column("problem_id").to_pylist(),
            table.column("sample_idx").to_pylist(),
            strict=True,
        )
    )
    assert len(keys) == len(set(keys)) == 8 * 3  # none lost, none duplicated
    texts = dict(zip(keys, table.column("text").to_pylist(), strict=True))
    assert all(texts[k] == v for k, v in before.items())  # finished work kept as it was
    assert [k[0] for k in keys[::3]] == [p["id"] for p in demo_problems(8, seed=9)]  # in order
    assert not parts.exists()


def test_sample_is_reproducible(tmp_path, tiny_model):
    problems = tmp_path / "problems.jsonl"
    write_problems(demo_problems(3, seed=4), problems)
    texts = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.parquet"
        subprocess.run(
            _sample_cmd(problems, tiny_model, out, chunk=3, n=2),
            check=True,
            capture_output=True,
            timeout=600,
        )
        texts.append(read_table(out, SAMPLES).column("text").to_pylist())
    assert texts[0] == texts[1]
    assert len(set(texts[0])) > 1  # sampling, not one repeated string
