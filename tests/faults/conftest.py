"""The fault suite's shared run and its figures.

``pipeline``: one uninterrupted run of every job of a tiny config (the tiny Qwen3, a pool of 6
problems, a benchmark of 3), each job run from its rule's own command line (harness.py); every
kill test starts from a copy of it and compares what its reruns leave with it.

``figures``: what the tests found (kill points, samples lost and duplicated, outputs compared,
hostile inputs and their errors), printed at the end of the pytest run.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_workflow import tiny_config as workflow_config

from conftest import REPO

from .harness import Job, plan_jobs, run_job

RUN = "f"
POOL_N, BENCH_N, SAMPLES = 6, 3, 4  # problems in the pool and the benchmark, samples each
# every rule's place in a run (a job's inputs come from rules before it)
RULE_ORDER = [
    "record_model",
    "prepare_problems",
    "check_problems",
    "sample_shard",
    "score_shard",
    "grade_shard",
    "curate_sets",
    "train_aggregator",
    "merge_adapter",
    "aggregate_sets",
    "merge_aggregators",
    "evaluate_seed",
    "report_training",
    "report_benchmark",
    "report_summary",
]
# not run: no stage reads its output (tests/test_checks.py and the hostile table cover it)
SKIPPED_RULES = {"check_problems"}


def tiny_config(model: Path) -> dict:
    """The tiny workflow's config (tests/test_workflow.py), sized for the kill tests: one pool
    shard, two disjoint sets per problem, one training variant and one prompted and one trained
    aggregator on its merged model (so merge_adapter is part of the run)."""
    cfg = workflow_config(model, run_name=RUN)
    cfg["training_pool"].update(
        source={"demo": {"n": POOL_N, "seed": 1}}, samples_per_problem=SAMPLES, shards=1
    )
    cfg["benchmarks"] = {"mini": {"source": {"demo": {"n": BENCH_N, "seed": 2}}}}
    cfg["evaluation"].update(
        samples_per_problem=SAMPLES,
        aggregate_shards=1,  # one aggregation job: the kill test stops it between its engines
        trained_model="merged",
        aggregators=[
            {"name": "prompted", "trained": None, "confidence": True},
            {"name": "trained", "trained": "confidence", "confidence": True},
        ],
    )
    cfg["curation"]["sets_per_problem"] = 2
    cfg["training"]["variants"] = {"confidence": {"confidence": True}}
    cfg["training"]["seeds"] = [0]  # one training run: the kill tests stop each job once
    return cfg


@dataclass
class Pipeline:
    """The uninterrupted run: its working folder, jobs and how long each took."""

    workdir: Path
    config: dict
    jobs: list[Job]
    seconds: dict[str, float]

    def job(self, rule: str, wildcards: str = "") -> Job:
        found = [j for j in self.jobs if j.rule == rule and wildcards in j.wildcards]
        assert len(found) == 1, f"{rule} [{wildcards}]: {[j.name for j in found]}"
        return found[0]

    @property
    def results(self) -> Path:
        return self.workdir / "results" / RUN


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, tiny_model) -> Pipeline:

    workdir = tmp_path_factory.mktemp("faults") / "base"
    workdir.mkdir()
    shutil.copytree(REPO / "config", workdir / "config")  # accelerate's config files
    config = tiny_config(tiny_model)
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    jobs = plan_jobs(workdir, "tiny.yaml")
    unknown = {j.rule for j in jobs} - set(RULE_ORDER)
    assert not unknown, f"rules the fault suite does not know: {unknown}"
    jobs = sorted(
        (j for j in jobs if j.rule not in SKIPPED_RULES), key=lambda j: RULE_ORDER.index(j.rule)
    )
    seconds = {}
    for job in jobs:
        t0 = time.monotonic()
        run_job(job, workdir)
        seconds[job.name] = time.monotonic() - t0
    FIGURES.baseline_seconds = sum(seconds.values())
    return Pipeline(workdir, config, jobs, seconds)


# --------------------------------------------------------------------------------------------
# Figures


@dataclass
class Figures:
    kills: list[tuple[str, str, str]] = field(default_factory=list)  # stage, point, state
    samples_expected: int = 0
    samples_lost: int = 0
    samples_duplicated: int = 0
    rows_lost: int = 0  # rows of the other stages' tables, against the uninterrupted run
    rows_duplicated: int = 0
    outputs: list[tuple[str, str]] = field(default_factory=list)  # rule, "equal" | "valid"
    strays: list[str] = field(default_factory=list)  # temporaries left after the reruns
    hostile: list[tuple[str, str, bool]] = field(default_factory=list)  # kind, input, named
    baseline_seconds: float = 0.0

    def kill(self, stage: str, point: str, state: str) -> None:
        self.kills.append((stage, point, state))


FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return FIGURES


def pytest_terminal_summary(terminalreporter) -> None:
    f = FIGURES
    if not (f.kills or f.hostile):
        return
    w = terminalreporter
    w.section("fault suite (issue 13)")
    if f.kills:
        _print_kills(w, f)
    if f.hostile:
        named = sum(ok for _, _, ok in f.hostile)
        w.line(f"hostile inputs: {len(f.hostile)}, {named} stopped with a named error")
        for kind in sorted({k for k, _, _ in f.hostile}):
            rows = [(i, ok) for k, i, ok in f.hostile if k == kind]
            bad = [i for i, ok in rows if not ok]
            w.line(f"  {kind:<8} {len(rows):>2}" + (f"  NOT named: {bad}" if bad else ""))


def _print_kills(w, f: Figures) -> None:
    w.line(f"kill points: {len(f.kills)} (SIGKILL of the job's process group, then a rerun)")
    for stage in sorted({s for s, _, _ in f.kills}):
        points = [(p, state) for s, p, state in f.kills if s == stage]
        w.line(f"  {stage:<10} {len(points):>2}: {', '.join(p for p, _ in points)}")
        if w.verbosity > 0:  # what each kill left (-v)
            for point, state in points:
                w.line(f"      {point}: {state}")
    w.line(
        f"samples: {f.samples_expected} expected after the sample stage's reruns, "
        f"{f.samples_lost} lost, {f.samples_duplicated} duplicated"
    )
    w.line(f"rows of the other stages' tables: {f.rows_lost} lost, {f.rows_duplicated} duplicated")
    equal = [r for r, how in f.outputs if how == "equal"]
    valid = [r for r, how in f.outputs if how != "equal"]
    w.line(
        f"final outputs after the reruns: {len(equal)} job(s) byte-equal to the uninterrupted "
        f"run ({', '.join(equal)}); {len(valid)} complete and valid, not bit-reproducible by "
        f"design ({', '.join(valid) or '-'})"
    )
    w.line(f"temporaries left after the reruns: {len(f.strays)} {f.strays or ''}")
    if f.baseline_seconds:
        w.line(f"the uninterrupted run the kill tests start from: {f.baseline_seconds:.0f}s")
