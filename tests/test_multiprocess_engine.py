"""vLLM's engine core in its own process (``VLLM_ENABLE_V1_MULTIPROCESSING=1``, vLLM's default
and so the cluster's mode; the CPU stages otherwise run it in-process), on CPU with the tiny
Qwen3, every stage through its real command line:

- the sample stage's texts and confidences equal, sample for sample, what vLLM's own
  ``LLM.generate`` returns in that mode with logprobs, given the problems' seeds;
- two runs with one seed write the same samples, one of them killed after its first part and
  resumed (the engine core's batches differ from run to run in this mode: requests reach its
  process while it steps);
- the aggregator runs write the same outputs in that mode twice and in-process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from test_sample import ENGINE, PROMPT, _command, _run_until, make_settings, rows_by_key

from confagg.config import validate
from confagg.problems import demo_problems, write_problems
from confagg.seeds import derive_seed
from confagg.settings import for_rule, to_json
from conftest import BIN, REPO

pytestmark = pytest.mark.integration

SEED = derive_seed(5, "kill", 0)  # the seed test_sample's _command gives the stage
MODES = {"multiprocess": "1", "in-process": "0"}


def _env(mode: str) -> dict[str, str]:
    # INFO: vLLM's log then names the engine core's process, "(EngineCore pid=...)"
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": MODES[mode], "VLLM_LOGGING_LEVEL": "INFO"}


def _run(argv: list[str], mode: str, timeout: int = 600) -> str:
    """Run a command with vLLM in ``mode``; its output (vLLM logs to stdout)."""
    proc = subprocess.run(
        argv,
        env={**os.environ, **_env(mode)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


# LLM.generate with the seeds the stage gives each problem; the confidences as the stage
# computes them (confagg.confidence.token_confidence of vLLM's flat logprobs)
GENERATE = """
import dataclasses, json, sys
import numpy as np
from vllm import LLM
from confagg.confidence import token_confidence
from confagg.engine import sampling_params
from confagg.prompts import render, solver_messages
from confagg.seeds import derive_seed

model, problems, base, seed, prompt, engine, out = json.loads(sys.argv[1])
if __name__ == "__main__":
    llm = LLM(model=model, seed=0, **engine)
    tokenizer = llm.get_tokenizer()
    prompts = [render(tokenizer, solver_messages(p["problem"], prompt), {}) for p in problems]
    params = [sampling_params(base, seed=derive_seed(seed, p["id"])) for p in problems]
    rows = []
    for p, o in zip(problems, llm.generate(prompts, params, use_tqdm=False)):
        for c in o.outputs:
            conf = token_confidence(c.logprobs.logprobs, base["logprobs"]).astype(np.float16)
            rows.append([p["id"], c.index, c.text, conf.tobytes().hex()])
    json.dump(rows, open(out, "w"))
"""


@pytest.fixture(scope="module")
def shard_runs(tiny_model, tmp_path_factory):
    """Two multiprocess runs of one shard (the second killed after its first part, then
    resumed) and LLM.generate on its problems in that mode."""
    tmp = tmp_path_factory.mktemp("mp-sample")
    problem_list = demo_problems(6, seed=3)
    problems = tmp / "problems.jsonl"
    write_problems(problem_list, problems)
    # two problems in flight: problems join while others run, so the engine's batches are
    # never generate's
    settings = make_settings(n=4, max_tokens=48, in_flight=2)
    outs = [tmp / "run1.parquet", tmp / "run2.parquet"]
    logs = [_run(_command(problems, tiny_model, outs[0], settings), "multiprocess")]
    cmd = _command(problems, tiny_model, outs[1], settings)
    with pytest.MonkeyPatch.context() as mp:  # _run_until passes os.environ on
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
        _run_until(cmd, "part-1")
        logs.append(_run_until(cmd, None))
    reference = tmp / "generate.json"
    args = [str(tiny_model), problem_list, dataclasses.asdict(settings.sampling), SEED, PROMPT]
    args += [ENGINE, str(reference)]
    _run([str(BIN / "python"), "-c", GENERATE, json.dumps(args)], "multiprocess")
    return outs, logs, json.loads(reference.read_text())


def test_sample_stage_equals_generate_in_multiprocess_mode(shard_runs):
    outs, logs, reference = shard_runs
    # the engine core ran in its own process (vLLM's log names it)
    assert "EngineCore pid=" in logs[0], logs[0][-3000:]
    table = pq.read_table(outs[0]).to_pydict()
    got = [
        [pid, idx, text, np.asarray(conf, np.float16).tobytes().hex()]
        for pid, idx, text, conf in zip(
            table["problem_id"],
            table["sample_idx"],
            table["text"],
            table["token_confidence"],
            strict=True,
        )
    ]
    assert len(got) == len(reference) == 6 * 4
    texts = sum(g[:3] == r[:3] for g, r in zip(got, reference, strict=True))
    confidences = sum(g == r for g, r in zip(got, reference, strict=True))
    assert (texts, confidences) == (24, 24), f"{texts}/24 texts, {confidences}/24 equal"
    assert len({g[2] for g in got}) > 12  # samples of one problem differ: real sampling


def test_two_runs_with_one_seed_agree_in_multiprocess_mode(shard_runs):
    outs, logs, _ = shard_runs
    assert "already sampled" in logs[1] and " 0 already sampled" not in logs[1]  # resumed
    first, second = (rows_by_key(pq.read_table(out)) for out in outs)
    assert len(first) == 24
    assert first == second


def _aggregator_config(tiny_model: Path) -> dict:
    """The demo config on the tiny model, two prompted (untrained) aggregator variants."""
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["generator"]["model"] = str(tiny_model)
    config["generator"]["engine"] = ENGINE
    ev = config["evaluation"]
    ev.update(samples_per_problem=4, set_sizes=[2], outputs_per_set=2)
    ev["aggregator_sampling"]["max_tokens"] = 24
    ev["aggregators"] = [
        {"name": "agg_conf", "trained": None, "confidence": True},
        {"name": "agg_plain", "trained": None, "confidence": False},
    ]
    validate(config, REPO / "workflow/schemas/config.schema.yaml")
    return config


def test_aggregator_runs_agree_across_runs_and_modes(shard_runs, tiny_model, tmp_path):
    """Scores and grades of the multiprocess shard, then the aggregate stage three times: in
    multiprocess mode twice and in-process; every output text the same."""
    outs, _, _ = shard_runs
    config = _aggregator_config(tiny_model)
    problems = outs[0].parent / "problems.jsonl"
    py = str(BIN / "python")
    scores, grades = tmp_path / "scores.parquet", tmp_path / "grades.parquet"
    score = to_json(for_rule(config, "score_shard"))
    _run([py, "-m", "confagg.score", "--settings", score, str(outs[0]), str(scores)], "in-process")
    grade = to_json(for_rule(config, "grade_shard", dataset="demo"))
    grading = ["--problems", str(problems), "--processes", "1", "--settings", grade]
    _run([py, "-m", "confagg.grade", *grading, str(outs[0]), str(grades)], "in-process")
    inputs = ["--samples", str(outs[0]), "--scores", str(scores), "--grades", str(grades)]
    settings = to_json(for_rule(config, "aggregate_sets", benchmark="demo", seed=0, shard=0))
    inputs += ["--model", str(tiny_model), "--settings", settings]
    texts = {}
    for run, mode in (("mp1", "multiprocess"), ("mp2", "multiprocess"), ("inproc", "in-process")):
        out = tmp_path / f"{run}.parquet"
        log = _run(
            [py, "-m", "confagg.aggregate", "--problems", str(problems), *inputs, str(out)],
            mode,
        )
        assert ("EngineCore pid=" in log) == (mode == "multiprocess"), log[-3000:]
        t = pq.read_table(out).to_pydict()
        keys = zip(t["method"], t["problem_id"], t["set_idx"], t["output_idx"], strict=True)
        texts[run] = dict(zip(keys, t["text"], strict=True))
    # 6 problems x 2 sets x 2 outputs x 2 variants
    assert len(texts["mp1"]) == 48
    assert texts["mp1"] == texts["mp2"] == texts["inproc"]
    assert len(set(texts["mp1"].values())) > 24  # real sampling, not one text
