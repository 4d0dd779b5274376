"""A job cancelled with a plain `scancel` in the local Slurm (tests/test_slurm.py's cluster and
profile): sacct writes its state "CANCELLED by <uid>", which snakemake-executor-plugin-slurm
(2.6 to 2.8) does not know and reads as still running, so Snakemake would wait for it forever.
The workflow reads it as CANCELLED (confagg.orchestrator): the job fails and Snakemake stops."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from datetime import datetime

import pytest
from test_slurm import SnakemakeRun, _setup, _squeue, local_slurm, sacct_jobs  # noqa: F401

pytestmark = pytest.mark.integration

# after the cancel: the plugin's first status check comes within its initial interval (40 s)
# plus sacct's latency; a hang would last for ever
AFTER_CANCEL_S = 300


def _running(prefix: str, deadline: float, run: SnakemakeRun) -> str:
    """The id of the test's job once Slurm runs it."""
    while True:
        assert run.proc.poll() is None, run.text()[-6000:]
        assert time.time() < deadline, f"no job of {prefix} started:\n{run.text()[-3000:]}"
        out = subprocess.run(
            ["squeue", "-h", "-t", "R", "-o", "%i|%j"], capture_output=True, text=True, check=True
        ).stdout
        ids = [line.split("|")[0] for line in out.splitlines() if f"|{prefix}" in line]
        if ids:
            return ids[0]
        time.sleep(0.5)


@pytest.mark.services  # starts Slurm, munge and MariaDB (as root: installs them)
def test_scancelled_job_fails_and_snakemake_stops(local_slurm, workdir, tiny_model):  # noqa: F811
    prefix = f"confaggtest{secrets.token_hex(3)}"
    since = datetime.now()
    args = _setup(workdir, tiny_model, prefix)
    target = "results/tiny/samples/train_pool/seed3/shard0.parquet"
    # no retry: the cancelled job must end the run, not be resubmitted (the profile retries
    # sampling shards as preemptible: --preemptible-retries, not --retries, counts for them)
    no_retry = ("--retries", "0", "--preemptible-retries", "0")
    with SnakemakeRun(workdir, prefix, *args, *no_retry, target) as run:
        job = _running(prefix, time.time() + 600, run)
        subprocess.run(["scancel", job], check=True)
        cancelled = time.time()
        try:
            rc = run.proc.wait(timeout=AFTER_CANCEL_S)
        except subprocess.TimeoutExpired:
            os.killpg(run.proc.pid, signal.SIGKILL)
            pytest.fail(
                f"Snakemake still waits {AFTER_CANCEL_S} s after job {job} was cancelled:\n"
                f"{run.text()[-4000:]}"
            )
        output = run.text()
    assert rc != 0, output[-4000:]
    state = sacct_jobs(prefix, since)[job]["State"]
    assert state.startswith("CANCELLED by "), state  # what the plugin would have misread
    assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in output, output[-4000:]
    assert "Error in rule sample_shard" in output, output[-4000:]
    assert not (workdir / target).exists()
    assert not [j for j, name in _squeue() if name.startswith(prefix)]
    print(f"Snakemake stopped {time.time() - cancelled:.0f} s after the scancel")
