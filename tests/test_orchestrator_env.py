"""Snakemake's own environment (setup.sh: .venv-snakemake) apart from the jobs' (.venv): it has
the newest Slurm plugin and neither torch nor vLLM, it dry-runs the full-scale config with the
Slurm profile, and the rules' jobs run in the jobs' environment."""

from __future__ import annotations

import os
import subprocess

import pytest
from test_dryrun import _job_counts

from confagg import orchestrator
from conftest import BIN, REPO, SNAKEMAKE_BIN, SNAKEMAKE_ENV, snakemake

if SNAKEMAKE_BIN == BIN:
    reason = f"no {SNAKEMAKE_ENV} (run setup.sh): Snakemake runs in the jobs' environment here"
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must test Snakemake's own environment, but {reason}")
    pytest.skip(reason, allow_module_level=True)


def _python(code: str) -> str:
    proc = subprocess.run(
        [str(SNAKEMAKE_BIN / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    return proc.stdout.strip()


def test_snakemake_env_has_the_newest_plugin_and_no_compute_stack():
    found = _python(
        "import importlib.util as u, importlib.metadata as m\n"
        "print([n for n in ('torch', 'vllm', 'transformers', 'trl') if u.find_spec(n)],"
        " m.version('snakemake-executor-plugin-slurm'))"
    )
    missing, version = found.rsplit(" ", 1)
    assert missing == "[]", found
    assert tuple(map(int, version.split(".")[:2])) >= (2, 8), found


def test_full_scale_dry_run_with_slurm_profile_without_torch_or_vllm(workdir):
    proc = snakemake(
        "-n", "--quiet", "rules", "--profile", str(REPO / "profiles/slurm"), cwd=workdir
    )
    counts = _job_counts(proc.stdout)
    assert counts["sample_shard"] == 256 + 4 * 3 * 2
    assert counts["train_aggregator"] == 2 * 3  # two variants x three training seeds


def test_jobs_bin_is_the_jobs_environment(tmp_path, monkeypatch):
    """The rules' jobs run from CONFAGG_JOBS_ENV, else the checkout's .venv (the workflows of
    the other tests run their stage code, torch and vLLM included, that way: Snakemake's
    environment could not)."""
    monkeypatch.delenv(orchestrator.JOBS_ENV_VAR, raising=False)
    assert orchestrator.jobs_bin(REPO / "workflow") == REPO / ".venv/bin"
    monkeypatch.setenv(orchestrator.JOBS_ENV_VAR, str(BIN.parent))
    assert orchestrator.jobs_bin(REPO / "workflow") == BIN
    monkeypatch.setenv(orchestrator.JOBS_ENV_VAR, str(tmp_path))
    with pytest.raises(orchestrator.OrchestratorError, match=f"CONFAGG_JOBS_ENV={tmp_path}: no"):
        orchestrator.jobs_bin(REPO / "workflow")


def test_start_checks_read_the_jobs_trl(workdir):
    """A training key that is neither the workflow's nor a field of GRPOConfig stops the run at
    start, although Snakemake's environment has no TRL: the check reads the jobs' TRL."""
    (workdir / "typo.yaml").write_text("training:\n  learnig_rate: 1.0e-5\n")
    proc = snakemake("-n", "--configfile", "typo.yaml", cwd=workdir, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "training.learnig_rate: unknown key: neither a key of this workflow nor" in out
    assert "TRL 1.16" in out, out[-3000:]


def test_plugin_reads_a_cancelled_job_as_cancelled():
    """The plugin's own status query, on sacct's lines for a job a user cancelled: its state
    alone is no state the plugin knows; the workflow's wrapping reads it as CANCELLED, one of
    the plugin's failed states (the real scancel: tests/test_slurm_cancel.py)."""
    code = (
        "import asyncio, logging\n"
        "import snakemake_executor_plugin_slurm as p\n"
        "from confagg import orchestrator\n"
        "cmd = \"printf '7|CANCELLED by 0\\\\n8|RUNNING\\\\n'\"\n"
        "log = logging.getLogger()\n"
        "print(asyncio.run(p.query_job_status(cmd, log))[0])\n"
        "assert orchestrator.read_cancelled_slurm_jobs_as_failed()\n"
        "print(asyncio.run(p.query_job_status(cmd, log))[0])\n"
    )
    before, after = _python(code).splitlines()
    assert before == "{'7': 'CANCELLED by 0', '8': 'RUNNING'}"
    assert after == "{'7': 'CANCELLED', '8': 'RUNNING'}"
