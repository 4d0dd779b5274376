"""Dry-runs of the shipped configs: the DAG a cluster user gets, without torch or vllm."""

import json
import re
import shlex
import subprocess

import yaml

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
    # 256 training-pool shards + 4 benchmarks x 3 seeds x 2 shards
    assert counts["sample_shard"] == 256 + 4 * 3 * 2
    assert counts["score_shard"] == 256 + 4 * 3 * 2
    assert counts["prepare_problems"] == 5
    assert counts["check_problems"] == 5  # prompt lengths, one per data set, before sampling
    assert counts["download_model"] == 1
    # 4 benchmarks x 3 seeds evaluated, one report per benchmark, one overall summary
    assert counts["evaluate_seed"] == 4 * 3
    assert counts["report_benchmark"] == 4
    assert counts["report_summary"] == 1
    # the confidence-aware aggregator and plain AggLM, each once per training seed (3); every
    # variant and run at every set size in 16 aggregation jobs per benchmark x seed (a shard of
    # its problems each: evaluation.aggregate_shards), merged into one table
    assert counts["train_aggregator"] == 2 * 3
    assert counts["aggregate_sets"] == 4 * 3 * 16
    assert counts["merge_aggregators"] == 4 * 3


def test_full_scale_dry_run_with_slurm_profile(workdir):
    proc = snakemake(
        "-n", "--quiet", "rules", "--profile", str(REPO / "profiles/slurm"), cwd=workdir
    )
    assert _job_counts(proc.stdout)["sample_shard"] == 256 + 24


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


def _sample_settings(stdout: str) -> dict[str, dict]:
    """The settings JSON each data set's sample jobs receive, from a dry-run's shell commands
    (``settings=<quoted JSON>; ...``), the same for every job of a data set."""
    found: dict[str, list] = {}
    for line in stdout.splitlines():
        if "python -m confagg.sample" not in line:
            continue
        words = shlex.split(line.split("; printf", 1)[0])
        word = next(w for w in words if w.startswith("settings="))
        settings = json.loads(word.split("=", 1)[1])
        dataset = re.search(r"--dataset (\w+)", line)[1]
        found.setdefault(dataset, []).append(settings)
    assert all(all(s == v[0] for s in v) for v in found.values())
    return {d: v[0] for d, v in found.items()}


def test_pool_and_benchmark_sampling_reach_their_sample_jobs(workdir):
    """training_pool.sampling and evaluation.sampling over `sampling`, key by key: each data
    set's sample jobs get their own, the rest the shared keys."""
    (workdir / "split.yaml").write_text(
        yaml.safe_dump(
            {
                "training_pool": {"sampling": {"temperature": 1.0, "top_k": -1}},
                "evaluation": {"sampling": {"temperature": 0.7, "max_tokens": 30000}},
            }
        )
    )
    proc = snakemake("-n", "-p", "--configfile", "split.yaml", cwd=workdir)
    got = _sample_settings(proc.stdout)
    assert set(got) == {"train_pool", "aime24", "aime25", "hmmt24", "hmmt25"}
    pool = got.pop("train_pool")["sampling"]
    assert (pool["temperature"], pool["top_k"], pool["max_tokens"]) == (1.0, -1, 32768)
    for bench in got.values():
        params = bench["sampling"]
        assert (params["temperature"], params["top_k"], params["max_tokens"]) == (0.7, 20, 30000)
        assert params["top_p"] == pool["top_p"] == 0.95  # a key neither sets: `sampling`'s
    # the default sets neither: both get `sampling` alone
    default = _sample_settings(snakemake("-n", "-p", cwd=workdir).stdout)
    assert default["train_pool"]["sampling"] | {"n": 0} == default["aime24"]["sampling"] | {"n": 0}


def test_agglm_protocol_config_plans_its_own_run(workdir):
    """config/agglm.yaml over the default: its run, AggLM's variants and one training seed."""
    proc = snakemake("-n", "--quiet", "rules", "--configfile", "config/agglm.yaml", cwd=workdir)
    counts = _job_counts(proc.stdout)
    # merged over the default, whose `confidence` training variant stays (one seed each)
    assert counts["train_aggregator"] == 2
    assert counts["aggregate_sets"] == 4 * 3 * 16
