"""Running the workflow's jobs outside Snakemake, killing them, and comparing what they leave.

The jobs' command lines are the rules' own: a dry-run (``snakemake -n -p``) of a tiny config
prints every job's shell command, which the suite runs with ``bash -c`` in the run's working
folder (as Snakemake would, without its scheduling). A job is killed either

* at a file-system event of its own (``inject/sitecustomize.py``: the n-th rename, parquet row
  group, temporary file, ... under ``results/``; or a call of a named function), a SIGKILL of
  its whole process group before the event happens; or
* at a pause point the stage already honours (``CONFAGG_PAUSE_AT``, the sample stage's), a
  SIGKILL of the job's process group once its log says it waits there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from conftest import BIN, snakemake

INJECT = Path(__file__).resolve().parent / "inject"


@dataclass
class Job:
    """One job of the dry-run: its rule, wildcards, shell command, outputs and log."""

    rule: str
    wildcards: str = ""
    shell: str = ""
    outputs: list[str] = field(default_factory=list)
    log: str | None = None

    @property
    def name(self) -> str:
        return f"{self.rule}[{self.wildcards}]" if self.wildcards else self.rule


def plan_jobs(workdir: Path, configfile: str) -> list[Job]:
    """Every job a run of ``configfile`` needs, in the dry-run's order (dependencies first for
    this workflow's rules), with the shell command Snakemake would run."""
    proc = snakemake(
        "--configfile", configfile, "--replace-workflow-config", "-n", "-p", "--cores", "2",
        cwd=workdir, timeout=300,
    )  # fmt: skip
    jobs: list[Job] = []
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        head = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if head:
            jobs.append(Job(head.group(1)))
            continue
        if not jobs:
            continue
        item = re.match(r"^    (output|log|wildcards): (.*)$", line)
        if item:
            key, value = item.groups()
            if key == "output":
                jobs[-1].outputs = value.split(", ")
            elif key == "log":
                jobs[-1].log = value
            else:
                jobs[-1].wildcards = value
        elif line.startswith("Shell command: "):
            jobs[-1].shell = line[len("Shell command: ") :]
    jobs = [j for j in jobs if j.shell and j.shell != "None"]
    if not jobs:
        raise AssertionError(f"no job in the dry-run:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return jobs


@dataclass
class Outcome:
    """How a job ended: its exit code, seconds, where it was killed (None: it was not), log."""

    returncode: int
    seconds: float
    killed_at: dict | None
    log: str


def _tail(text: str, n: int = 4000) -> str:
    return text[-n:]


def run_job(
    job: Job,
    workdir: Path,
    *,
    kill: str | None = None,
    at: int = 1,
    match: str = "",
    pause: str | None = None,
    trace: Path | None = None,
    timeout: float = 900,
) -> Outcome:
    """Run ``job`` in ``workdir``. With ``kill`` (an event of inject/sitecustomize.py, its
    ``at``-th occurrence whose path holds ``match``) or ``pause`` (a CONFAGG_PAUSE_AT point of
    the sample stage), the job must be killed there (asserted); without, it must succeed."""
    for path in [*job.outputs, job.log or ""]:
        if path:
            (workdir / path).parent.mkdir(parents=True, exist_ok=True)  # as Snakemake does
    mark = workdir / ".fault-mark.jsonl"
    mark.unlink(missing_ok=True)
    env = fault_env(workdir / "results", mark)
    if kill:
        env.update(CONFAGG_FAULT_KILL=kill, CONFAGG_FAULT_AT=str(at), CONFAGG_FAULT_MATCH=match)
    if trace:
        env["CONFAGG_FAULT_TRACE"] = str(trace)
    if pause:
        env["CONFAGG_PAUSE_AT"] = f"sample.{pause}"
    log = workdir / job.log if job.log else None
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", job.shell],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the job is one process group, killed as one
    )
    killed_at = None
    try:
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(f"{job.name} ran over {timeout}s: {_read(log)[-3000:]}")
            if pause and f"paused at sample.{pause}" in _read(log):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed_at = {"event": f"pause {pause}"}
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds = time.monotonic() - t0
    text = _read(log)
    if kill and mark.is_file():
        killed_at = json.loads(mark.read_text().splitlines()[0])
        mark.unlink()
    if kill or pause:
        assert killed_at is not None and proc.returncode == -signal.SIGKILL, (
            f"{job.name} was not killed at {kill or pause} (exit {proc.returncode}):\n{_tail(text)}"
        )
    else:
        assert proc.returncode == 0, f"{job.name} failed ({proc.returncode}):\n{_tail(text)}"
    return Outcome(proc.returncode, seconds, killed_at, text)


def fault_env(root: Path, mark: Path, fail: str | None = None, **event) -> dict[str, str]:
    """The environment of a job under inject/sitecustomize.py, counting the events under
    ``root``; with ``fail`` (an errno name such as ``ENOSPC``) and ``event`` (``kill``, ``at``,
    ``match``), that event raises that error instead of happening."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(INJECT), os.environ.get("PYTHONPATH")])),
        "CONFAGG_FAULT_ROOT": str(root),
        "CONFAGG_FAULT_MARK": str(mark),
    }
    for key in (
        "CONFAGG_FAULT_KILL",
        "CONFAGG_FAULT_ERRNO",
        "CONFAGG_FAULT_TRACE",
        "CONFAGG_PAUSE_AT",
    ):
        env.pop(key, None)
    if fail:
        env.update(
            CONFAGG_FAULT_ERRNO=fail,
            CONFAGG_FAULT_KILL=event["kill"],
            CONFAGG_FAULT_AT=str(event.get("at", 1)),
            CONFAGG_FAULT_MATCH=event.get("match", ""),
        )
    return env


def _read(path: Path | None) -> str:
    try:
        return path.read_text(errors="replace") if path else ""
    except FileNotFoundError:
        return ""


def read_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --------------------------------------------------------------------------------------------
# What a job leaves behind


def digest(path: Path) -> dict[str, str]:
    """sha256 of a file, or of every file under a folder (by relative name)."""
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.is_dir():
        return {}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def differing(base: Path, other: Path, outputs: list[str]) -> list[str]:
    """The outputs (and files inside output folders) that differ between two working folders."""
    diffs = []
    for out in outputs:
        a, b = digest(base / out), digest(other / out)
        if not b:
            diffs.append(f"{out} (missing)")
        elif a != b:
            names = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            diffs.append(f"{out} ({', '.join(n or 'content' for n in names)})")
    return diffs


def strays(workdir: Path) -> list[Path]:
    """Temporaries a killed job left under results/ (hidden ``.*.tmp`` files, ``.*.tmp-*``
    folders), and the sample stage's ``*.parts`` folders."""
    results = workdir / "results"
    found = [
        p
        for p in results.rglob(".*")
        if ".tmp" in p.name and not any(".tmp" in q.name for q in p.relative_to(results).parents)
    ]
    return sorted(found + [p for p in results.rglob("*.parts") if p.is_dir()])


def keyed_rows(path: Path, key: list[str]) -> list[tuple]:
    """The key of every row of a parquet file (absent file: no rows)."""
    if not path.is_file():
        return []
    table = pq.read_table(path, columns=key)
    return list(zip(*(table.column(k).to_pylist() for k in key), strict=True))


def lost_and_duplicated(expected: list[tuple], found: list[tuple]) -> tuple[int, int]:
    """Rows of ``expected`` missing from ``found``, and rows of ``found`` beyond the first of
    their key."""
    return len(set(expected) - set(found)), len(found) - len(set(found))


def clone(base: Path, dest: Path, drop: list[str]) -> Path:
    """A copy of a working folder without the paths ``drop`` (outputs to make again)."""
    shutil.copytree(base, dest, symlinks=True)
    for rel in drop:
        path = dest / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return dest
