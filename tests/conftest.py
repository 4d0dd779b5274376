"""Shared fixtures: paths, the repository's Python tools, small generated inputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent  # the jobs' environment (these tests run in it): python
# Snakemake's own environment (setup.sh), without torch or vLLM; a checkout set up before there
# were two has Snakemake in the jobs' environment only
SNAKEMAKE_ENV = REPO / ".venv-snakemake"
SNAKEMAKE_BIN = SNAKEMAKE_ENV / "bin" if (SNAKEMAKE_ENV / "bin/snakemake").exists() else BIN


def workflow_env(env: dict | None = None) -> dict[str, str]:
    """The environment Snakemake runs in: its rules' jobs run in this interpreter's
    environment (confagg.orchestrator.jobs_bin)."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "CONFAGG_JOBS_ENV": sys.prefix,
        **(env or {}),
    }


def snakemake(
    *args: str, cwd: Path = REPO, timeout: int = 1200, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the repository's workflow with Snakemake's environment, the jobs in this one."""
    full_env = workflow_env(env)
    proc = subprocess.run(
        [str(SNAKEMAKE_BIN / "snakemake"), "--snakefile", str(REPO / "workflow/Snakefile"), *args],
        cwd=cwd,
        env=full_env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch working directory holding the config/ folder a run reads."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Qwen3 with a locally trained tokenizer (seconds to build)."""
    from confagg.tinymodel import build_tiny_qwen3

    out = tmp_path_factory.mktemp("models") / "tiny-qwen3"
    build_tiny_qwen3(out, seed=0)
    return out
