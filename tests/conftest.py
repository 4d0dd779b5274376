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
BIN = Path(sys.executable).parent  # the venv's bin: snakemake, python, accelerate


def snakemake(
    *args: str, cwd: Path = REPO, timeout: int = 1200, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the repository's workflow with this interpreter's snakemake."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "workflow/Snakefile"), *args],
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
