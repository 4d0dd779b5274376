"""Dry-runs of the shipped configs: the DAG a cluster user gets, without torch or vllm."""

import re
import subprocess

from conftest import REPO, SNAKEMAKE_BIN, snakemake


def _job_counts(stdout: str) -> dict[str, int]:
    table = stdout[stdout.rindex("Job stats:") :]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_full_scale_dry_run_lists_every_shard_and_imports_no_torch(workdir):
    # snakemake in-process (in its own environment), so that sys.modules shows what the dry-run
    # imported
    code = (
        "import sys\n"
        "from snakemake.cli import main\n"
        "try:\n"
        f"    main(['-n', '--quiet', 'rules', '--snakefile', r'{REPO}/workflow/Snakefile'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'vllm', 'transformers', 'trl') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run(
        [str(SNAKEMAKE_BIN / "python"), "-c", code],
        cwd=workdir,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "HEAVY []" in proc.stdout
    counts = _job_counts(proc.stdout)
    # 64 training-pool shards + 4 benchmarks x 3 seeds x 2 shards
    assert counts["sample_shard"] == 64 + 4 * 3 * 2
    assert counts["score_shard"] == 64 + 4 * 3 * 2
    assert counts["prepare_problems"] == 5
    assert counts["check_problems"] == 5  # prompt lengths, one per data set, before sampling
    assert counts["download_model"] == 1
    # 4 benchmarks x 3 seeds evaluated, one report per benchmark, one overall summary
    assert counts["evaluate_seed"] == 4 * 3
    assert counts["report_benchmark"] == 4
    assert counts["report_summary"] == 1
    assert counts["train_aggregator"] == 2  # the confidence-aware aggregator and plain AggLM


def test_full_scale_dry_run_with_slurm_profile(workdir):
    proc = snakemake(
        "-n", "--quiet", "rules", "--profile", str(REPO / "profiles/slurm"), cwd=workdir
    )
    assert _job_counts(proc.stdout)["sample_shard"] == 88


def _jobs(stdout: str) -> list[tuple[str, str]]:
    """(rule, wildcards line) of every job a dry-run lists."""
    jobs, rule = [], None
    for line in stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
            jobs.append((rule, ""))
        elif line.strip().startswith("wildcards:") and jobs:
            jobs[-1] = (rule, line.strip())
    return jobs


def test_one_benchmark_report_schedules_nothing_of_the_others(workdir):
    others = ("aime24", "hmmt24", "hmmt25")
    for target in ("report_aime25", "results/qwen3-1.7b/reports/aime25/report.html"):
        jobs = _jobs(snakemake("-n", target, cwd=workdir).stdout)
        rules = {r for r, _ in jobs}
        assert {"report_benchmark", "evaluate_seed", "sample_shard", "train_aggregator"} <= rules
        assert "report_summary" not in rules
        for rule, wildcards in jobs:
            # the training data's contamination guard reads every benchmark's problems
            if rule != "prepare_problems":
                assert not any(f"={o}," in wildcards + "," for o in others), (rule, wildcards)
        evals = [w for r, w in jobs if r == "evaluate_seed"]
        assert len(evals) == 3 and all("benchmark=aime25" in w for w in evals)
