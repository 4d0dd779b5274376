"""Time limits for real, in the local single-node Slurm of tests/test_slurm.py (same fixtures,
same profile derived from profiles/slurm): jobs whose `runtime` is a minute or two.

- Training: the profile asks Slurm for SIGTERM before the time limit (`slurm_extra:
  --signal=TERM@<s>`). Slurm delivers it to every process of the job step: the step's own
  snakemake ends gracefully (waits for its job), the rule's shell and the launcher ignore it,
  the trainer finishes its step, saves a checkpoint and exits 75. The profile's
  `preemptible-retries` resubmits the job, which resumes from the checkpoint and finishes at
  `max_steps`, each step logged once.
- Sampling: a shard whose job runs out of time is killed by Slurm (state TIMEOUT), resubmitted,
  and resumes from its finished parts until it completes: every sample once.

Neither depends on the machine's speed: each training step is made STEP_DELAY_S longer
(tests/faults/inject/sitecustomize.py), so no 2-minute job can train MAX_STEPS; the first sampling
job waits after its PAUSE_AFTER_PARTS-th part until Slurm kills it (confagg.parts.pause).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from datetime import datetime

import pytest
from test_slurm import SnakemakeRun, _setup, local_slurm, rule_of, sacct_jobs

from confagg.problems import demo_problems
from confagg.tables import SAMPLES, read_table
from conftest import REPO, snakemake

pytestmark = [pytest.mark.integration, pytest.mark.services]
__all__ = ["local_slurm"]  # the fixture that starts the local cluster (tests/test_slurm.py)

TRAIN_RUNTIME_MIN = 2
# SIGTERM this long before the limit (Slurm checks every 30 s or so: it may come earlier). One
# that arrives before the trainer installed its handler passes it by (the rule's shell ignores
# TERM); the trainer's own clock (stop_margin_min before the job's end) then stops it.
SIGNAL_BEFORE_S = 50
STOP_MARGIN_MIN = 0.75
# Each step at least STEP_DELAY_S: by the trainer's clock (stop when the next step would end
# past 75 s) or Slurm's signal (at 70 s or before) a job trains at most 4 steps, however fast the
# machine, and at least one step once started (2-3 jobs here).
MAX_STEPS = 5
STEP_DELAY_S = 15
SLOW_STEPS = {
    "PYTHONPATH": str(REPO / "tests/faults/inject"),
    "CONFAGG_FAULT_DELAY": "call:transformers.trainer_callback:CallbackHandler.on_step_end",
    "CONFAGG_FAULT_DELAY_S": str(STEP_DELAY_S),
}
PAUSE_AFTER_PARTS = 4


def _sacct_times(prefix: str, since: datetime) -> dict[str, str]:
    """Timelimit of each job of the run (sacct's Timelimit column)."""
    import subprocess

    out = subprocess.run(
        ["sacct", "-a", "-X", "-n", "-P", "-o", "JobID,JobName,Timelimit",
         "-S", since.strftime("%Y-%m-%dT%H:%M:%S")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines()]
    return {r[0]: r[2] for r in rows if r[1].startswith(prefix)}


def test_training_saves_before_its_time_limit_and_the_retry_finishes(
    local_slurm, workdir, tiny_model
):
    prefix = f"confaggtest{secrets.token_hex(3)}"
    since = datetime.now()
    training = {
        "gpus": 0,
        "max_steps": MAX_STEPS,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "num_generations": 4,
        "max_completion_length": 12,
        "lora": {"r": 4, "alpha": 8},
        "save_steps": 1000,  # no checkpoint on schedule: only the stops save one
        "stop_margin_min": STOP_MARGIN_MIN,
        "vllm": {"enabled": False},  # a quicker start: rollouts by transformers' generate
    }
    args = _setup(
        workdir,
        tiny_model,
        prefix,
        set_resources={
            "train_aggregator": {
                "runtime": TRAIN_RUNTIME_MIN,
                "slurm_extra": f"'--signal=TERM@{SIGNAL_BEFORE_S}'",
            }
        },
        training=training,
    )
    # what training reads, made first without Slurm: only the training jobs go through it
    curated = ("results/tiny/curated/train.parquet", "results/tiny/curated/val.parquet")
    snakemake(*args[2:], "--cores", "2", *curated, cwd=workdir)
    target = "results/tiny/train/plain/seed0/adapter"
    with SnakemakeRun(workdir, prefix, *args, target, env=SLOW_STEPS) as run:
        output = run.wait(timeout=1800)

    jobs = sacct_jobs(prefix, since)
    train_jobs = sorted((j for j, r in jobs.items() if rule_of(r) == "train_aggregator"), key=int)
    assert len(train_jobs) >= 2, (jobs, output[-4000:])
    states = [jobs[j]["State"] for j in train_jobs]
    assert states == ["FAILED"] * (len(train_jobs) - 1) + ["COMPLETED"], states
    limits = _sacct_times(prefix, since)
    assert {limits[j] for j in train_jobs} == {f"00:0{TRAIN_RUNTIME_MIN}:00"}, limits

    out = workdir / "results/tiny/train/plain/seed0"
    attempts = [
        json.loads(x) for x in (out / "checkpoints/attempts.jsonl").read_text().splitlines()
    ]
    print("attempts:", json.dumps(attempts, indent=1))
    # every job but the last stopped before its limit with a checkpoint (Slurm's signal or the
    # trainer's clock), the next resumed exactly there, and the last finished. One race is
    # allowed: a job that trained to max_steps and got Slurm's signal while writing its outputs
    # fails all the same (the job step's snakemake ends its run as failed after a TERM, and
    # deletes the outputs), and the next job writes them from the final checkpoint, training
    # nothing (CI saw it once: steps 0->3 stopped, 3->5 finished then signalled, 5->5).
    assert [a["slurm_job_id"] for a in attempts] == train_jobs
    stops = ("signal SIGTERM", "time limit ahead")
    assert attempts[0]["stopped"] in stops, attempts  # no job can train all MAX_STEPS
    for a in attempts[:-1]:
        stopped_early = a["stopped"] in stops and a["to_step"] > a["from_step"]
        signalled_at_the_end = a["stopped"] is None and a["to_step"] == MAX_STEPS
        assert stopped_early or signalled_at_the_end, attempts
    for before, after in itertools.pairwise(attempts):
        assert after["from_step"] == before["to_step"], attempts
    assert attempts[0]["from_step"] == 0
    assert attempts[-1]["stopped"] is None and attempts[-1]["to_step"] == MAX_STEPS
    log = (workdir / "logs/tiny/train_aggregator/plain/seed0.log").read_text()
    assert "resuming from" in log, log[-3000:]
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, MAX_STEPS + 1))
    assert json.loads((out / "manifest.json").read_text())["steps"] == MAX_STEPS


def test_a_sampling_job_past_its_time_limit_is_retried_until_the_shard_is_whole(
    local_slurm, workdir, tiny_model
):
    prefix = f"confaggtest{secrets.token_hex(3)}"
    since = datetime.now()
    # one problem a part; every job waits after its 4th part until Slurm's limit kills it: the
    # first job samples 4 (or fewer, if the limit comes first), a later one the rest and finishes
    problems, n = PAUSE_AFTER_PARTS + 2, 4
    pool = {"source": {"demo": {"n": problems, "seed": 5}}, "samples_per_problem": n, "shards": 1}
    sampling = {"max_tokens": 32, "temperature": 1.0, "top_k": -1, "top_p": 1.0,
                "problems_in_flight": 1}  # fmt: skip
    args = _setup(
        workdir,
        tiny_model,
        prefix,
        set_resources={"sample_shard": {"runtime": 1}},
        training_pool=pool,
        sampling=sampling,
    )
    target = workdir / "results/tiny/samples/train_pool/seed3/shard0.parquet"
    pause = {"CONFAGG_PAUSE_AT": f"sample.part-{PAUSE_AFTER_PARTS}"}
    with SnakemakeRun(workdir, prefix, *args, str(target.relative_to(workdir)), env=pause) as run:
        run.wait(timeout=1500)

    jobs = sacct_jobs(prefix, since)
    shard_jobs = sorted((j for j, r in jobs.items() if rule_of(r) == "sample_shard"), key=int)
    states = [jobs[j]["State"] for j in shard_jobs]
    assert "TIMEOUT" in states and states[-1] == "COMPLETED", states
    assert all(s in ("TIMEOUT", "COMPLETED") for s in states), states
    log = (workdir / "logs/tiny/sample_shard/train_pool/seed3/shard0.log").read_text()
    done = [int(x) for x in re.findall(r"(\d+) already sampled", log)]
    assert done[-1] > 0, log[-2000:]  # the last job resumed from parts of the earlier ones
    table = read_table(target, SAMPLES)
    keys = list(zip(table["problem_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == problems * n
    assert [k[0] for k in keys[::n]] == [p["id"] for p in demo_problems(problems, seed=5)]
