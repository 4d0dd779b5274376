"""Checks that stop a run early: a problem too long for the engine stops the workflow at
check_problems (before any sampling job), naming its file, line and id."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from test_workflow import tiny_config

from conftest import REPO, snakemake

pytestmark = pytest.mark.integration


def test_long_problem_stops_the_run_before_sampling(tmp_path, tiny_model):
    workdir = tmp_path / "work"
    shutil.copytree(REPO / "config", workdir / "config")
    source = tmp_path / "bench.jsonl"
    rows = [
        {"id": "short", "problem": "What is 1 + 1?", "answer": "2"},
        {"id": "huge", "problem": "Add these: " + "1 + " * 100_000 + "1.", "answer": "100001"},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(tiny_model)
    cfg["benchmarks"] = {"mini": {"source": {"path": str(source)}}}
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))

    target = "results/tiny/samples/mini/seed0/shard0.parquet"
    proc = snakemake(
        "--configfile", "tiny.yaml", "--replace-workflow-config", "--cores", "2", target,
        cwd=workdir, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Error in rule check_problems" in proc.stdout + proc.stderr
    log = (workdir / "logs/tiny/check_problems/mini.log").read_text()
    assert f"{source}:2 (normalised: results/tiny/data/mini.jsonl:2), problem id 'huge'" in log
    assert "(generator.engine.max_model_len 1024 - sampling.max_tokens 24)" in log
    assert "'short'" not in log
    # no sampling job started, nothing of the check left behind
    assert not (workdir / "logs/tiny/sample_shard").exists()
    assert not (workdir / "results/tiny/data/mini.check.json").exists()
