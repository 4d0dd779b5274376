"""What Snakemake's own process needs besides the config (the rule files call it; it imports
no torch, vLLM or numpy, since Snakemake's environment has none of them):

- ``jobs_bin``: the bin folder of the jobs' environment, where the rules' ``python -m
  confagg.<stage>`` runs. Snakemake runs in its own environment (setup.sh: ``.venv-snakemake``,
  the newest Slurm plugin, whose numpy vLLM's pins exclude) and the stage code in the jobs'
  (``.venv``: torch, vLLM, TRL), as conda environments do on a cluster.
- ``read_cancelled_slurm_jobs_as_failed``: snakemake-executor-plugin-slurm (2.6 to 2.8, the
  newest) reads a job's state from ``sacct``, which writes a job cancelled by a user as
  ``CANCELLED by <uid>``; the plugin knows ``CANCELLED`` only, treats the state as still
  running, and Snakemake waits for the job forever. Its status query is wrapped so that such a
  state reads ``CANCELLED``: the plugin then reports the job failed (tests/test_slurm_cancel.py).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

JOBS_ENV_VAR = "CONFAGG_JOBS_ENV"


class OrchestratorError(Exception):
    """A setting of Snakemake's own process that cannot work."""


def jobs_bin(workflow_dir: str | os.PathLike) -> Path:
    """The jobs' environment's bin folder: ``$CONFAGG_JOBS_ENV/bin`` when set, else the
    checkout's ``.venv/bin`` (``workflow_dir`` is the Snakefile's folder), else the bin folder of
    the interpreter running Snakemake (one environment for both, e.g. a conda env)."""
    env = os.environ.get(JOBS_ENV_VAR)
    if env:
        path = Path(env) / "bin"
        if not (path / "python").exists():
            raise OrchestratorError(
                f"{JOBS_ENV_VAR}={env}: no bin/python there; set it to the jobs' environment "
                "(the folder setup.sh made, .venv by default), or unset it"
            )
        return path
    venv = Path(workflow_dir).parent / ".venv" / "bin"
    return venv if (venv / "python").exists() else Path(sys.executable).parent


def _main_state(state: str) -> str:
    """``CANCELLED by 1000`` -> ``CANCELLED``; every other state as it is."""
    return state.split(" by ", 1)[0] if state.startswith("CANCELLED by ") else state


def read_cancelled_slurm_jobs_as_failed() -> bool:
    """Wrap the Slurm plugin's status query (see the module docstring); False when the plugin
    is not installed or has no such query (another version: nothing changed)."""
    try:
        import snakemake_executor_plugin_slurm as plugin
    except ImportError:
        return False
    query = getattr(plugin, "query_job_status", None)
    if query is None:
        return False
    if getattr(query, "reads_cancelled_by", False):  # already wrapped (a second parse)
        return True

    @functools.wraps(query)
    async def query_job_status(*args, **kwargs):
        states, duration = await query(*args, **kwargs)
        if states:
            states = {job: _main_state(state) for job, state in states.items()}
        return states, duration

    query_job_status.reads_cancelled_by = True
    plugin.query_job_status = query_job_status
    return True
