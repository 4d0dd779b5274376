"""Nothing a user types reaches the shell as code: prompts, a problem file's path and a model
folder's path holding quotes, $HOME, backticks, $(...), a backslash and a newline go through the
real workflow (prepare_problems, check_problems, sample_shard with vLLM on the tiny model) and
arrive exactly as configured."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from test_workflow import tiny_config

from confagg.tables import SAMPLES, read_table
from conftest import REPO, snakemake

pytestmark = pytest.mark.integration

# Each would break, expand or run if a rule pasted it into its command line unquoted or in
# '...': the canaries name files that a command substitution would create.
HOSTILE = 'Let\'s "say" $HOME `touch CANARY1` $(touch CANARY2) back\\slash\nnew line'


def test_hostile_strings_reach_the_stages_exactly(tmp_path, tiny_model):
    workdir = tmp_path / "work"
    shutil.copytree(REPO / "config", workdir / "config")
    weird = tmp_path / f"in {HOSTILE}"
    weird.mkdir()
    model = weird / "model"
    shutil.copytree(tiny_model, model)
    problems = [
        {"id": "q'1", "problem": f"What is 2 + 3? {HOSTILE}", "answer": 5},
        {"id": "q2", "problem": "What is 4 + 4?", "answer": "8"},
    ]
    source = weird / "o'brien.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in problems))

    prompt = {
        "system": f"System {HOSTILE}",
        "instruction": f"Instruction {HOSTILE} \\boxed{{}}",
        "example": {"problem": f"Example {HOSTILE}", "solution": "\\boxed{1}"},
    }
    cfg = tiny_config(model, prompt=prompt)
    cfg["benchmarks"] = {"mini": {"source": {"path": str(source)}}}
    cfg["evaluation"].update(samples_per_problem=2, ks=[1, 2], set_sizes=[2])
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))

    target = "results/tiny/samples/mini/seed0/shard0.parquet"
    args = ("--configfile", "tiny.yaml", "--replace-workflow-config", "--cores", "2", target)
    snakemake(*args, cwd=workdir)

    # nothing ran or expanded: no canary anywhere the jobs could have written it
    for where in (workdir, tmp_path, REPO):
        assert not list(where.glob("CANARY*")), where
    # the problem file was read through its path, the answers written out as text
    prepared = [
        json.loads(line)
        for line in (workdir / "results/tiny/data/mini.jsonl").read_text().splitlines()
    ]
    assert prepared == [{**p, "answer": str(p["answer"])} for p in problems]
    check = json.loads((workdir / "results/tiny/data/mini.check.json").read_text())
    assert check["problems"] == 2
    # the sample stage got the configured prompt, character for character (the rule writes
    # the settings word it passes into the job's log first)
    log = (workdir / "logs/tiny/sample_shard/mini/seed0/shard0.log").read_text()
    assert log.startswith("settings: ")
    settings = json.JSONDecoder().raw_decode(log[len("settings: ") :])[0]
    assert settings["prompt"] == prompt
    table = read_table(workdir / target, SAMPLES)
    assert table.column("problem_id").to_pylist() == ["q'1", "q'1", "q2", "q2"]

    # a new aggregator prompt rechecks the prompt lengths but does not resample (check_problems
    # is a checkpoint whose output does not change with it); a new solver prompt resamples
    shard, check_log = workdir / target, workdir / "logs/tiny/check_problems/mini.log"
    before = shard.stat().st_mtime_ns, check_log.stat().st_mtime_ns
    cfg["aggregator"]["prompt"]["instruction"] = "Write one solution."
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(*args, cwd=workdir)
    assert check_log.stat().st_mtime_ns > before[1] and shard.stat().st_mtime_ns == before[0]
    cfg["prompt"]["instruction"] = "Box the answer."
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(*args, cwd=workdir)
    assert shard.stat().st_mtime_ns > before[0]
    log = (workdir / "logs/tiny/sample_shard/mini/seed0/shard0.log").read_text()
    assert json.JSONDecoder().raw_decode(log[len("settings: ") :])[0]["prompt"] == cfg["prompt"]
