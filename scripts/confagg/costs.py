"""What a run cost, per stage, from its jobs' own records, beside what the plan expected.

Hours come from Snakemake's ``benchmark:`` files (``logs/<run>/<rule>/...benchmark.tsv``: the
job's wall time ``s`` and the CPU seconds of its processes ``cpu_time``); GPU-hours are wall
time x the GPUs the rule holds (``sample_shard``/``aggregate_sets``: one when ``plan.device`` is
GPU; ``train_aggregator``: ``training.gpus``). Tokens are generated tokens: the samples'
``num_tokens``, the aggregator outputs' ``num_tokens``, and the training rollouts (each logged
step's mean completion length x the completions of a step). The estimate beside them is
``confagg.budget``'s plan of the whole run from its config (``python -m confagg.plan``), so the
two can be compared stage by stage. A rerun keeps one benchmark file per job: the last
attempt's (a resumed job's earlier attempts are not counted).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from confagg import budget
from confagg import config as cfg
from confagg.tables import READ_OPTIONS

POOL = budget.POOL
# rules whose jobs are split by data set family in the plan (the pool; the benchmarks)
BY_FAMILY = {"sample_shard", "score_shard", "grade_shard"}


@dataclass
class Spent:
    jobs: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    gpu_s: float = 0.0
    max_rss_mb: float = 0.0
    tokens: int = 0


def stage_of(rule: str, parts: tuple[str, ...]) -> str:
    """The plan's row name of a job: ``rule``, or ``rule (train_pool|benchmarks)``."""
    if rule in BY_FAMILY and parts:
        return f"{rule} ({POOL if parts[0] == POOL else 'benchmarks'})"
    return rule


def gpus_of(config: Mapping, rule: str) -> int:
    if rule == "train_aggregator":
        return int(config["training"]["gpus"])
    if rule in ("sample_shard", "aggregate_sets"):
        return 1 if config["plan"]["device"] == "GPU" else 0
    return 0


def _number(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "", "NA", "-") else 0.0
    except ValueError:
        return 0.0


def from_benchmarks(logs: Path, config: Mapping) -> dict[str, Spent]:
    """Per stage, the jobs' wall, CPU and GPU seconds and peak memory from their benchmark
    files (the last row of each: the last attempt)."""
    spent: dict[str, Spent] = {}
    for path in sorted(Path(logs).rglob("*.benchmark.tsv")):
        parts = path.relative_to(logs).parts
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        row = rows[-1]
        s = spent.setdefault(stage_of(parts[0], parts[1:]), Spent())
        wall = _number(row.get("s"))
        s.jobs += 1
        s.wall_s += wall
        s.cpu_s += _number(row.get("cpu_time"))
        s.gpu_s += wall * gpus_of(config, parts[0])
        s.max_rss_mb = max(s.max_rss_mb, _number(row.get("max_rss")))
    return spent


def _token_sum(paths) -> int:
    total = 0
    for path in paths:
        table = pq.read_table(path, columns=["num_tokens"], **READ_OPTIONS)
        total += sum(table["num_tokens"].to_pylist())
    return total


def add_tokens(spent: dict[str, Spent], run: Path, config: Mapping) -> None:
    """Generated tokens per stage, from the run's outputs as they are now."""
    samples = Path(run) / "samples"
    families = {POOL: [POOL], "benchmarks": list(config["benchmarks"])}
    for family, datasets in families.items():
        paths = [p for d in datasets for p in sorted((samples / d).glob("seed*/shard*.parquet"))]
        if paths:
            spent.setdefault(f"sample_shard ({family})", Spent()).tokens += _token_sum(paths)
    aggregated = sorted((Path(run) / "eval").glob("*/seed*/aggregators.parquet"))
    if aggregated:
        spent.setdefault("aggregate_sets", Spent()).tokens += _token_sum(aggregated)
    _, per_step = budget.training_completions(config, 0)
    for log in sorted((Path(run) / "train").glob("*/log.jsonl")):
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        lengths = [r["completion_length"] for r in rows if r.get("split") == "train"]
        rollout = sum(x for x in lengths if x is not None) * per_step
        spent.setdefault("train_aggregator", Spent()).tokens += int(rollout)


def _hours(seconds: float) -> str:
    h = seconds / 3600
    return "-" if not seconds else (f"{h:,.2f}" if h >= 0.01 else f"{seconds / 60:.1f} min")


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f}" if n else "-"


def section(run: Path, logs: Path, config: Mapping) -> str:
    """The report's cost section (Markdown): per stage, what the jobs spent and the plan's
    expected figures beside them."""
    spent = from_benchmarks(logs, config)
    add_tokens(spent, run, config)
    root = Path(run).parent.parent  # results/<run> -> the working directory
    inputs = budget.Inputs(problems=cfg.problem_counts(config, root))
    planned = {r.rule: r for r in budget.plan(config, inputs)}
    device = config["plan"]["device"]
    lines = [
        "## What this run cost",
        "",
        "Per stage: the jobs' own benchmark files (wall time x GPUs held; CPU time of their",
        "processes), the generated tokens of their outputs, and the plan's expected figures",
        f"(`python -m confagg.plan`; {device}-hours at the config's plan.* throughputs).",
        "",
        "| stage | jobs | wall h | GPU-h | CPU-h | peak RSS | tokens | plan: tokens "
        f"| plan: {device}-h |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total = Spent()
    order = list(planned) + sorted(set(spent) - set(planned))
    for stage in order:
        s, p = spent.get(stage, Spent()), planned.get(stage)
        if not s.jobs and not s.tokens:
            continue
        for name in ("jobs", "wall_s", "cpu_s", "gpu_s", "tokens"):
            setattr(total, name, getattr(total, name) + getattr(s, name))
        lines.append(
            f"| {stage} | {s.jobs} | {_hours(s.wall_s)} | {_hours(s.gpu_s)} | {_hours(s.cpu_s)} "
            f"| {f'{s.max_rss_mb / 1000:.1f} GB' if s.max_rss_mb else '-'} | {_count(s.tokens)} "
            f"| {_count(p.tokens_expected) if p else '-'} "
            f"| {_hours(p.hours * 3600) if p and p.device == device else '-'} |"
        )
    plan_total = budget.totals(list(planned.values())).get(device, budget.Row("", 0, 0, device))
    lines.append(
        f"| **total** | {total.jobs} | {_hours(total.wall_s)} | {_hours(total.gpu_s)} | "
        f"{_hours(total.cpu_s)} | | {_count(total.tokens)} | "
        f"{_count(budget.totals(list(planned.values()))['all'].tokens_expected)} | "
        f"{_hours(plan_total.hours * 3600)} |"
    )
    return "\n".join(lines) + "\n"
