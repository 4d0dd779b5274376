"""What a run will cost, before it runs: ``python -m confagg.plan --configfile ... [--profile
profiles/slurm]``.

Prints, per rule: jobs left (of all), generated tokens (upper bound and expected), expected
device-hours, the largest job's expected wall time against the rule's runtime, and disk; totals
at the bottom; the training job's per-GPU memory estimate term by term; and the checks the
workflow runs at start (``confagg.config.check_budget``). The arithmetic is ``confagg.budget``
and ``confagg.memory``; this module reads what it needs: the config as Snakemake would build it,
the profile's runtimes and retries, the rules' own runtimes, which outputs already exist (they
are not counted again), and the mean sample length of the samples the run already has.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from confagg import budget, memory
from confagg import config as cfg

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
RULES = REPO / "workflow" / "rules"
GB = memory.GB


def _merge(base: dict, over: Mapping) -> dict:
    """Snakemake's --configfile merge: nested mappings merged, anything else replaced."""
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def profile_file(name: str) -> Path:
    """A profile's config.yaml: a folder, or a name where Snakemake looks one up (the user's
    ``~/.config/snakemake/<name>``, as ``setup.sh`` links ``slurm``)."""
    for folder in (Path(name), Path.home() / ".config" / "snakemake" / name):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise SystemExit(f"--profile {name}: no config.yaml there nor in ~/.config/snakemake/{name}")


def load_config(configfiles: list[str], profile: Mapping, replace: bool) -> dict:
    """The config Snakemake builds: config/config.yaml (the Snakefile's) with every config file
    merged over it, or the config files alone with --replace-workflow-config; validated."""
    files = list(configfiles) or ([profile["configfile"]] if profile.get("configfile") else [])
    replace = replace or bool(profile.get("replace-workflow-config"))
    config: dict = {} if replace else yaml.safe_load((REPO / "config/config.yaml").read_text())
    for f in files:
        _merge(config, yaml.safe_load(Path(f).read_text()) or {})
    cfg.validate(config, SCHEMA)
    cfg.check_consistency(config)
    return config


def _hours(value) -> float | None:
    """A Snakemake runtime (minutes, or "12h", "90m", "2d") in hours."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return value / 60
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", str(value))
    if not m:
        return None
    scale = {"d": 24, "h": 1, "m": 1 / 60, "s": 1 / 3600, "": 1 / 60}[m.group(2)]
    return float(m.group(1)) * scale


def rule_runtimes() -> dict[str, float]:
    """The ``runtime`` a rule file gives each rule (a literal only: computed ones are skipped)."""
    runtimes = {}
    for path in sorted(RULES.glob("*.smk")):
        rule = None
        for line in path.read_text().splitlines():
            head = re.match(r"(?:rule|checkpoint) (\w+):", line)
            if head:
                rule = head.group(1)
            found = re.match(r"\s+runtime=(\"[^\"]+\"|\d+),", line)
            if rule and found:
                runtimes[rule] = _hours(found.group(1).strip('"'))
    return runtimes


def runtimes_of(profile: Mapping) -> dict[str, float]:
    """Each rule's runtime in hours: the profile's set-resources, else the rule's own."""
    runtimes = rule_runtimes()
    for rule, res in (profile.get("set-resources") or {}).items():
        if isinstance(res, Mapping) and res.get("runtime") is not None:
            runtimes[rule] = _hours(res["runtime"])
    return {k: v for k, v in runtimes.items() if v is not None}


def measured_lengths(config: Mapping, root: Path) -> dict[str, float]:
    """Mean generated tokens per sample, per family (pool; benchmarks), over the samples the run
    already has (only the num_tokens column is read)."""
    import pyarrow.parquet as pq

    from confagg.tables import READ_OPTIONS

    out = root / "results" / config["run_name"] / "samples"
    families = {budget.POOL: [budget.POOL], "benchmarks": list(config["benchmarks"])}
    means = {}
    for family, datasets in families.items():
        total = count = 0
        for dataset in datasets:
            for path in sorted((out / dataset).glob("seed*/shard*.parquet")):
                column = pq.read_table(path, columns=["num_tokens"], **READ_OPTIONS)["num_tokens"]
                total += sum(column.to_pylist())
                count += len(column)
        if count:
            means[family] = total / count
    return means


def adapter_bytes(config: Mapping, root: Path) -> float:
    """One LoRA adapter's float32 weights on disk (0 where the model's shape is unknown)."""
    shape = cfg.model_shape(config, "aggregator", root)
    lora = config["training"]["lora"]
    return 4 * shape.lora_params(lora["r"], lora["target_modules"]) if shape else 0.0


def _tokens(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f}"


def _hrs(h: float) -> str:
    """Hours as "12.3 h", or "4.5 min" under 0.1 h (CPU demo jobs), "-" for none."""
    return f"{h:,.1f} h" if h >= 0.1 else (f"{h * 60:.2g} min" if h else "-")


def _disk(b: float) -> str:
    return f"{b / GB:,.1f} GB" if b >= 0.1 * GB else f"{b / 1e6:,.2g} MB"


def table(rows: list[budget.Row], attempts: int) -> str:
    """The plan as a Markdown table, totals at the bottom."""
    over = {r.rule for r in budget.over_runtime(rows, attempts)}
    lines = [
        "| rule | jobs left (all) | device | tokens, upper bound | tokens, expected "
        "| device-hours, expected | largest job vs runtime | disk |",
        "|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        per_job = ""
        if r.hours_per_job:
            devices = f" on {r.devices_per_job} {r.device}s" if r.devices_per_job > 1 else ""
            limit = f" / {r.runtime_h:g} h" if r.runtime_h else ""
            per_job = f"{_hrs(r.hours_per_job)}{devices}{limit}" + (
                " **over**" if r.rule in over else ""
            )
        hours = _hrs(r.hours) if r.hours else "-"
        if r.device == "CPU" and not r.hours:
            hours = "(minutes)"
        lines.append(
            f"| {r.rule} | {r.jobs} ({r.jobs_total}) | {r.device} | "
            f"{_tokens(r.tokens_max) if r.tokens_max else '-'} | "
            f"{_tokens(r.tokens_expected) if r.tokens_expected else '-'} | {hours} | {per_job} | "
            f"{_disk(r.disk_bytes)} |"
        )
    sums = budget.totals(rows)
    total = sums["all"]
    hours = "; ".join(
        f"{_hrs(sums[d].hours)} of {d}" for d in ("GPU", "CPU") if d in sums and sums[d].hours
    )
    lines.append(
        f"| **total** | {total.jobs} ({total.jobs_total}) | | {_tokens(total.tokens_max)} | "
        f"{_tokens(total.tokens_expected)} | **{hours or '-'}** | | "
        f"{_disk(total.disk_bytes)} |"
    )
    return "\n".join(lines)


def memory_lines(config: Mapping, root: Path) -> list[str]:
    estimate = cfg.training_memory(config, root)
    if estimate is None:
        return ["training memory: the aggregator's model shape is unknown (not downloaded)"]
    terms, peak, shape = estimate
    t = config["training"]
    where = (
        f"per GPU (plan.gpu_memory_gb {config['plan']['gpu_memory_gb']:g})"
        if int(t["gpus"])
        else "the CPU process (RAM; no CUDA context)"
    )
    lines = [f"training memory {where}: peak about {peak / GB:.1f} GB"]
    lines += [f"  {name}: {value / GB:.2f} GB" for name, value in terms.items()]
    if int(t["gpus"]) and t["vllm"]["enabled"]:
        room = memory.kv_room_tokens(shape, terms["colocated vLLM share"])
        seqs = t["per_device_train_batch_size"] * (
            t.get("steps_per_generation") or t["gradient_accumulation_steps"]
        )
        full = config["aggregator"]["prompt"]["max_prompt_tokens"] or 0
        full += t["max_completion_length"]
        lines.append(
            f"  colocated engine's KV cache: about {room:,} tokens for up to {seqs} rollouts "
            f"of up to {full:,} tokens ({room / max(full, 1):.1f} at full length at once; "
            "vLLM queues the rest)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m confagg.plan", description=__doc__.split("\n")[0])
    ap.add_argument("--configfile", nargs="*", default=[], help="as snakemake's --configfile")
    ap.add_argument("--profile", help="a Snakemake profile folder (runtimes, retries, config)")
    ap.add_argument(
        "--replace-workflow-config", action="store_true", help="as snakemake's: no base config"
    )
    ap.add_argument("--root", default=".", help="the workflow's working directory")
    args = ap.parse_args(argv)
    profile = {}
    if args.profile:
        profile = yaml.safe_load(profile_file(args.profile).read_text()) or {}
    root = Path(args.root)
    try:
        config = load_config(args.configfile, profile, args.replace_workflow_config)
    except cfg.ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    attempts = 1  # as the workflow's start check: the expected work fits one runtime
    retries = int(profile.get("retries") or 0)
    out = root / "results" / config["run_name"]
    inputs = budget.Inputs(
        problems=cfg.problem_counts(config, root),
        measured=measured_lengths(config, root),
        runtimes_h=runtimes_of(profile),
        attempts=attempts,
        done=lambda path: (root / path).exists(),
        adapter_bytes=adapter_bytes(config, root),
    )
    rows = budget.plan(config, inputs)
    p = config["plan"]
    print(f"# Plan of run {config['run_name']!r} ({out})\n")
    print(table(rows, attempts))
    lengths = ", ".join(f"{k} {v:,.0f} tokens" for k, v in inputs.measured.items())
    print(
        f"\nThroughput (config plan.*): generation {p['generation_tokens_per_s']:g} tokens/s, "
        f"training {p['training_tokens_per_s']:g} tokens/s per device. Expected length: "
        + (f"measured on this run's samples ({lengths}); " if lengths else "")
        + f"plan.expected_length {p['expected_length']:g} of each limit elsewhere. "
        "Runtimes: the profile's set-resources, else the rules'; a job's expected work must "
        f"fit one runtime (the profile's {retries} retr{'y' if retries == 1 else 'ies'} and "
        "the resumes are the margin). Outputs that exist are not counted."
    )
    for row in rows:
        for note in row.notes:
            print(f"- {row.rule}: {note}")
    print()
    print("\n".join(memory_lines(config, root)))
    try:
        cfg.check_budget(config, inputs.runtimes_h, attempts, root)
    except cfg.ConfigError as e:
        print(f"\nThe workflow refuses this run at start:\n{e}")
        return 1
    print("\nStart checks: pass (every job fits its runtime; training fits its memory).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
