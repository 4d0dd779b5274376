"""The cluster path for real: the tiny-model workflow submitted through
snakemake-executor-plugin-slurm to a single-node Slurm on this machine
(tools/slurm/start_local_slurm.sh), with a profile derived from profiles/slurm.

Every non-local job must be an sbatch job that `sacct` knows, GPU rules must carry a GPU
request (gres/gpu in ReqTRES), and a job killed midway must be resubmitted by the profile's
`retries` and resume from the chunks it had finished. The fixture starts the cluster (about 25 s
from nothing, packages included; 1 s when it is already up) and stops it at the end when it
started it. Measured on the 2-core machine while others ran tests too (load 4-7): the whole
workflow 8.5-10.5 min (18 jobs, 12 of them sbatch jobs), the killed-job test 3 min."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from test_workflow import tiny_config

from confagg.parts import parts_dir
from confagg.problems import demo_problems
from confagg.tables import SAMPLES, read_table
from conftest import REPO, SNAKEMAKE_BIN, snakemake, workflow_env

SNAKEMAKE = str(SNAKEMAKE_BIN / "snakemake")

pytestmark = pytest.mark.integration

START = REPO / "tools/slurm/start_local_slurm.sh"
STOP = REPO / "tools/slurm/stop_local_slurm.sh"
MARKER = "# confagg-local-slurm: written by tools/slurm/start_local_slurm.sh"
ACCOUNT = "root"  # the account sacctmgr creates with the local cluster
PARTITION = "debug"
PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client", "slurmdbd", "mariadb-server")
NODE_MEM_MB = 2000  # what each job asks for: the local node has the memory of this machine
RUN_TIMEOUT = 900  # seconds for one snakemake run; it is killed (and its jobs cancelled) after


def _cannot_run() -> str | None:
    """Why the local cluster cannot be started here, or None."""
    if os.geteuid() != 0:
        return "the local Slurm needs root (it installs Debian packages and starts daemons)"
    if shutil.which("dpkg-query") is None:
        return "the local Slurm needs Debian packages, and this is no Debian system (no apt)"
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\n", *PACKAGES],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.count("install ok installed")
    if installed < len(PACKAGES) and shutil.which("apt-get") is None:
        return f"Slurm packages ({', '.join(PACKAGES)}) are missing and apt-get is unavailable"
    return None


def _cluster_up() -> bool:
    conf = Path("/etc/slurm/slurm.conf")
    if not conf.exists() or MARKER not in conf.read_text().splitlines():
        return False
    if shutil.which("scontrol") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    return ping.returncode == 0 and "UP" in ping.stdout


@pytest.fixture(scope="session")
def local_slurm():
    """A running single-node Slurm with slurmdbd; stopped afterwards if this fixture started
    it. In CI (CI=true) a cluster that cannot start fails the test instead of skipping it."""
    reason = _cannot_run()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests, but {reason}")
        pytest.skip(reason)
    started_here = not _cluster_up()
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(START)], capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"start_local_slurm.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"local Slurm ready in {time.monotonic() - t0:.1f} s")
    yield
    if started_here:
        subprocess.run(["bash", str(STOP)], capture_output=True, timeout=120, check=False)


def derive_profile(
    dest: Path, prefix: str, rules: list[str], set_resources: dict | None = None
) -> Path:
    """profiles/slurm with the site lines set for the local cluster: its account and partition,
    sizes that fit one small node (every rule in `rules` gets at most NODE_MEM_MB and one CPU per
    GPU; `max-threads` caps --cpus-per-task), and short status checks. Everything else
    (executor, retries, GPU requests, the GPU cap) stays as shipped."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    per_rule = profile.setdefault("set-resources", {})
    for rule in rules:
        per_rule.setdefault(rule, {})
    for res in [profile["default-resources"], *per_rule.values()]:
        if "slurm_account" in res:
            res["slurm_account"] = ACCOUNT
        if "slurm_partition" in res:
            res["slurm_partition"] = PARTITION
        res["mem_mb"] = min(int(res.get("mem_mb", NODE_MEM_MB)), NODE_MEM_MB)
        if "cpus_per_gpu" in res:
            res["cpus_per_gpu"] = 1
        res.pop("gpu_model", None)  # the local GPUs are of type "fake"
    for rule, res in (set_resources or {}).items():
        per_rule.setdefault(rule, {}).update(res)
    profile.update(
        {
            "latency-wait": 5,
            "max-threads": 2,  # the node's CPUs; non-GPU rules ask for --cpus-per-task=threads
            # the first status check, and the step: the plugin adds 10 s a check while no job ends
            "slurm-init-seconds-before-status-checks": 5,
            "slurm-jobname-prefix": prefix,  # lets the test find (and cancel) its own jobs
            "slurm-keep-successful-logs": True,
        }
    )
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


class SnakemakeRun:
    """snakemake in the background with a hard timeout. Snakemake ignores SIGTERM while jobs
    run, so on timeout or test failure its process group is killed and its Slurm jobs are
    cancelled by job-name prefix."""

    def __init__(self, workdir: Path, prefix: str, *args: str, env: dict | None = None):
        self.workdir, self.prefix = workdir, prefix
        self.out = workdir / "snakemake.out"
        # the local cluster's GPUs are fake: its GPU jobs run on the CPU (confagg.preflight);
        # `env` reaches the jobs too (the plugin submits with --export=ALL)
        env = {**workflow_env(), "CONFAGG_ALLOW_CPU": "1", **(env or {})}
        with open(self.out, "w") as out:
            self.proc = subprocess.Popen(
                [SNAKEMAKE, "--snakefile", str(REPO / "workflow/Snakefile"), *args],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, timeout: float = RUN_TIMEOUT) -> str:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"snakemake ran past {timeout} s:\n{self.text()[-6000:]}")
        assert rc == 0, f"snakemake failed ({rc}):\n{self.text()[-8000:]}"
        return self.text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        ids = [j for j, name in _squeue() if name.startswith(self.prefix)]
        if ids:
            subprocess.run(["scancel", *ids], check=False)

    def __enter__(self) -> SnakemakeRun:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def _squeue() -> list[tuple[str, str]]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True, check=True
    ).stdout
    return [tuple(line.split("|", 1)) for line in out.splitlines() if "|" in line]


def sacct_jobs(prefix: str, since: datetime) -> dict[str, dict[str, str]]:
    """Accounting records (allocations, not steps) of the jobs whose name starts with prefix."""
    fields = ["JobID", "JobName", "Comment", "State", "ReqTRES", "AllocTRES", "Account"]
    out = subprocess.run(
        [
            *("sacct", "-a", "-X", "-n", "-P", "-o", ",".join(fields)),
            *("-S", since.strftime("%Y-%m-%dT%H:%M:%S")),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
    return {r["JobID"]: r for r in rows if r["JobName"].startswith(prefix)}


def rule_of(job: dict[str, str]) -> str:
    """The rule name from the plugin's job comment (rule_<name>[_wildcards_<...>])."""
    return re.match(r"rule_(\w+?)(_wildcards_.*)?$", job["Comment"])[1]


def planned_jobs(output: str) -> list[dict]:
    """The jobs a dry-run lists: rule and resources of each."""
    jobs = []
    for m in re.finditer(r"^(?:local)?rule (\w+):\n(.*?)(?=^\S|\Z)", output, re.M | re.S):
        resources = re.search(r"^\s+resources: (.*)$", m[2], re.M)
        pairs = resources[1].split(", ") if resources else []
        jobs.append({"rule": m[1], "resources": dict(kv.split("=", 1) for kv in pairs)})
    return jobs


def wants_gpu(resources: dict[str, str]) -> bool:
    return int(resources.get("gpu", 0)) > 0 or "gpu" in resources.get("gres", "")


def list_rules(workdir: Path, *args: str) -> list[str]:
    """The workflow's rule names (`--list-rules` prints each with its docstring, whose further
    lines are indented)."""
    out = snakemake(*args, "--list-rules", cwd=workdir).stdout
    return [line.split()[0] for line in out.splitlines() if line and not line[0].isspace()]


def _setup(workdir: Path, tiny_model: Path, prefix: str, set_resources=None, **config):
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(tiny_model, **config)))
    args = ("--configfile", "tiny.yaml", "--replace-workflow-config")
    rules = list_rules(workdir, *args)
    profile = derive_profile(workdir / "profile", prefix, rules, set_resources)
    return ("--profile", str(profile), *args)


@pytest.mark.services  # starts Slurm, munge and MariaDB (as root: installs them)
def test_workflow_runs_through_slurm(local_slurm, workdir, tiny_model):
    """Every job of the tiny workflow that snakemake does not run itself is a Slurm job; GPU
    rules carry a GPU request, the others none."""
    prefix = f"confaggtest{secrets.token_hex(3)}"
    since = datetime.now()
    # the trained aggregator evaluated from the merged model here (rule merge_adapter), from the
    # LoRA adapter in test_workflow
    evaluation = {**tiny_config(tiny_model)["evaluation"], "trained_model": "merged"}
    args = _setup(workdir, tiny_model, prefix, evaluation=evaluation)
    plan = planned_jobs(snakemake(*args, "-n", cwd=workdir).stdout)
    with SnakemakeRun(workdir, prefix, *args) as run:
        output = run.wait()

    local = set(re.findall(r"^localrule (\w+):$", output, re.M))  # run by snakemake itself
    remote = [job for job in plan if job["rule"] not in local]
    gpu_rules = {job["rule"] for job in remote if wants_gpu(job["resources"])}
    accounted = sacct_jobs(prefix, since)
    submitted = set(re.findall(r"has been submitted with SLURM jobid (\d+)", output))
    # every job that snakemake did not run itself was an sbatch job that finished, under the
    # profile's account, with a GPU exactly when its rule asks for one
    assert submitted == set(accounted), (submitted, accounted)
    assert Counter(rule_of(r) for r in accounted.values()) == Counter(j["rule"] for j in remote)
    for record in accounted.values():
        assert record["State"] == "COMPLETED", record
        assert record["Account"] == ACCOUNT, record
        gpu = rule_of(record) in gpu_rules
        assert ("gres/gpu=" in record["ReqTRES"]) == gpu, record
        assert ("gres/gpu=" in record["AllocTRES"]) == gpu, record
    assert "sample_shard" in gpu_rules and "score_shard" not in gpu_rules
    assert "merge_adapter" in {rule_of(r) for r in accounted.values()}
    # the shards the tiny config asks for: 2 training-pool shards + 1 benchmark shard
    assert sum(rule_of(r) == "sample_shard" for r in accounted.values()) == 3
    for path in ("train_pool/seed3/shard0", "train_pool/seed3/shard1", "mini/seed0/shard0"):
        assert (workdir / f"results/tiny/scores/{path}.parquet").stat().st_size > 0
    # nothing was left undone (every target of `rule all` exists and is complete)
    proc = snakemake(
        "--configfile", "tiny.yaml", "--replace-workflow-config", "-n", "--cores", "1", cwd=workdir
    )
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.services  # starts Slurm, munge and MariaDB (as root: installs them)
def test_killed_job_is_resubmitted_and_resumes(local_slurm, workdir, tiny_model):
    """A sampling job killed midway (`scancel --signal=TERM`: its processes die, as
    on a crash or a preemption that signals the job) is resubmitted by the profile's `retries`;
    the new job resumes from the chunks the first had finished and the shard ends complete,
    without duplicates. The GPU is requested through `gres` here (the profile's alternative to
    `gpu`). A plain `scancel` is not used: plugin 2.6.1 reads its state "CANCELLED by <uid>" as
    still running and waits for ever (the README says to stop and rerun then)."""
    prefix = f"confaggtest{secrets.token_hex(3)}"
    since = datetime.now()
    problems, n = 8, 3
    cfg = tiny_config(tiny_model)
    pool = {"source": {"demo": {"n": problems, "seed": 5}}, "samples_per_problem": n, "shards": 1}
    sampling = {**cfg["sampling"], "problems_in_flight": 1, "max_tokens": 32}
    args = _setup(
        workdir,
        tiny_model,
        prefix,
        set_resources={"sample_shard": {"gpu": 0, "gres": "gpu:fake:1", "cpus_per_task": 1}},
        training_pool=pool,
        sampling=sampling,
    )
    target = workdir / "results/tiny/samples/train_pool/seed3/shard0.parquet"
    parts = parts_dir(target)
    with SnakemakeRun(workdir, prefix, *args, str(target.relative_to(workdir))) as run:
        deadline = time.time() + RUN_TIMEOUT
        while not list(parts.glob("part-*.parquet")):
            assert run.proc.poll() is None, run.text()[-6000:]
            assert time.time() < deadline, "no chunk finished in time"
            time.sleep(0.05)
        (first,) = [j for j, name in _squeue() if name.startswith(prefix)]
        subprocess.run(["scancel", "--signal=TERM", first], check=True)
        output = run.wait()

    accounted = sacct_jobs(prefix, since)
    assert accounted[first]["State"] == "FAILED", accounted
    retried = [j for j in accounted if j != first]
    assert len(retried) == 1, accounted
    assert accounted[retried[0]]["State"] == "COMPLETED"
    for record in accounted.values():
        assert rule_of(record) == "sample_shard"
        assert "gres/gpu=1" in record["ReqTRES"], record
    assert f"SLURM jobid {retried[0]}" in output

    # the resubmitted job started from the finished chunks, and the shard is whole
    log = (workdir / "logs/tiny/sample_shard/train_pool/seed3/shard0.log").read_text()
    done = int(re.search(r"(\d+) already sampled", log)[1])
    assert 0 < done < problems, log[-2000:]
    table = read_table(target, SAMPLES)
    keys = list(zip(table["problem_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == problems * n
    assert [k[0] for k in keys[::n]] == [p["id"] for p in demo_problems(problems, seed=5)]
    assert not parts.exists()


def test_profile_names_only_rules_that_exist(workdir):
    """Snakemake ignores set-resources of an unknown rule without a word: a renamed rule
    would silently lose its GPU request."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    rules = set(list_rules(workdir))
    assert set(profile["set-resources"]) <= rules, set(profile["set-resources"]) - rules
    gpu_rules = {r for r, res in profile["set-resources"].items() if "slurm_partition" in res}
    assert {"sample_shard", "aggregate_sets", "train_aggregator"} <= gpu_rules
