"""The preflight of GPU jobs (confagg.preflight): machines faked where the versions are read
(``read_versions``), the checks and the stages that call them real."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from test_train import validated

from confagg import preflight
from confagg.preflight import CudaUnusable, DriverTooOld, TooFewGpus, Versions
from conftest import REPO

H100 = ("NVIDIA H100 80GB HBM3", 85_520_809_984)


def machine(driver="580.82.07", cuda="13.0", gpus=(H100,), error=None) -> Versions:
    return Versions(driver, cuda, f"2.13.0+cu{cuda.replace('.', '')}" if cuda else "2.13.0+cpu",
                    "0.31.0", "1.16.0", list(gpus), error)  # fmt: skip


def run(v: Versions, env: dict, requested: int = 0) -> str:
    out = io.StringIO()
    preflight.run(requested, env=env, read=lambda: v, out=out)
    return out.getvalue()


def test_a_cuda13_environment_on_an_r535_driver_is_refused_naming_the_cu12_environment():
    old = machine(driver="535.183.01", cuda="13.0", gpus=(), error="RuntimeError: driver too old")
    with pytest.raises(DriverTooOld) as err:
        run(old, {"CUDA_VISIBLE_DEVICES": "0,1"})
    text = str(err.value)
    assert "535.183.01" in text and "CUDA 13.0" in text and "580.65.06" in text
    assert "vllm-cu12.yaml" in text and "cuda: 12" in text


def test_cuda12_on_r535_runs_by_minor_version_compatibility_with_a_warning():
    printed = run(machine(driver="535.183.01", cuda="12.9"), {"CUDA_VISIBLE_DEVICES": "0"})
    assert "warning: driver 535.183.01 is older than CUDA 12.9's own (575.51.03)" in printed
    assert "NVIDIA H100 80GB HBM3 (79.6 GiB)" in printed
    with pytest.raises(DriverTooOld, match=r"needs driver 525\.60\.13"):
        run(machine(driver="470.256.02", cuda="12.9"), {})


@pytest.mark.parametrize(
    "env, requested",
    [
        ({"CUDA_VISIBLE_DEVICES": "0"}, 0),
        ({"SLURM_GPUS_ON_NODE": "4"}, 0),
        ({"SLURM_JOB_GPUS": "2,3"}, 0),
        ({}, 8),  # the rule's gpu resource (training.gpus)
    ],
)
def test_gpus_given_but_cuda_unusable_stops_the_job(env, requested):
    broken = machine(gpus=(), error="RuntimeError: CUDA driver initialization failed")
    with pytest.raises(CudaUnusable, match="No CPU fallback") as err:
        run(broken, env, requested)
    assert "CUDA driver initialization failed" in str(err.value)
    # a CPU build of torch in a GPU job is named as such
    with pytest.raises(CudaUnusable, match="CPU build"):
        run(machine(cuda=None, gpus=()), env, requested)


def test_no_gpus_given_and_none_there_passes_and_prints_the_versions():
    printed = run(machine(driver=None, cuda=None, gpus=()), {"CUDA_VISIBLE_DEVICES": ""})
    assert "torch:       2.13.0+cpu (CUDA none: a CPU build)" in printed
    assert "vllm:        0.31.0" in printed and "GPUs:        none visible" in printed


def test_a_test_cluster_with_fake_gpus_runs_on_the_cpu_when_told_so_aloud():
    cpu = machine(driver=None, cuda=None, gpus=())
    printed = run(cpu, {"CUDA_VISIBLE_DEVICES": "0", "CONFAGG_ALLOW_CPU": "1"})
    assert "warning: GPUs given (CUDA_VISIBLE_DEVICES=0) but none usable" in printed


def test_fewer_gpus_than_training_gpus_is_refused():
    with pytest.raises(TooFewGpus, match="needs 8 GPUs on one node"):
        run(machine(gpus=(H100,) * 4), {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, requested=8)
    run(machine(gpus=(H100,) * 8), {}, requested=8)


def test_caches_go_under_the_job_tmpdir_in_slurm_jobs_only(tmp_path):
    env = {"SLURM_JOB_ID": "42", "TMPDIR": str(tmp_path), "TRITON_CACHE_DIR": "/mine"}
    chosen = preflight.job_caches(env)
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "confagg-cache/vllm")
    assert env["TRITON_CACHE_DIR"] == "/mine" and "TRITON_CACHE_DIR" not in chosen
    assert set(chosen) == set(preflight.JOB_CACHES) - {"TRITON_CACHE_DIR"}
    outside = {"TMPDIR": str(tmp_path)}
    assert preflight.job_caches(outside) == {} and "VLLM_CACHE_ROOT" not in outside


def _stage_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_VISIBLE"))}
    env.pop("CONFAGG_ALLOW_CPU", None)
    return {**env, "PYTHONPATH": str(REPO / "scripts"), **extra}


def test_the_command_line_passes_on_this_cpu_machine_and_refuses_given_gpus():
    """This machine for real: no GPU, a CPU build of torch."""
    ok = subprocess.run([sys.executable, "-m", "confagg.preflight"], env=_stage_env(),
                        capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "[preflight] torch:" in ok.stdout and ok.stdout.rstrip().endswith("[preflight] ok")
    given = subprocess.run([sys.executable, "-m", "confagg.preflight"],
                           env=_stage_env(CUDA_VISIBLE_DEVICES="0"),
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert given.returncode == 1
    assert "CudaUnusable: GPUs were given (CUDA_VISIBLE_DEVICES=0)" in given.stderr


def test_the_train_stage_refuses_to_train_on_the_cpu_when_given_gpus(tmp_path):
    """The train stage runs the preflight first: with training.gpus 2 and no CUDA here it stops
    with the named error before it reads any data or model, or writes anything."""
    settings = json.dumps(validated(training={"gpus": 2}))
    out = tmp_path / "train"
    proc = subprocess.run(
        [sys.executable, "-m", "confagg.train", "--train", str(tmp_path / "absent.parquet"),
         "--model", str(tmp_path / "no-model"), "--out", str(out), "--settings", settings],
        env=_stage_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "CudaUnusable: GPUs were given (the rule asks for 2 GPU(s))" in proc.stderr, proc.stderr
    assert not out.exists()


def test_rendezvous_ports_differ_between_jobs_and_fall_back_to_a_free_one():
    """The rule passes `python -m confagg.train --rendezvous-port` to accelerate's
    --main_process_port: two jobs on one node get different ports; outside Slurm 0 (accelerate
    then picks a free port)."""

    def port(**env) -> int:
        proc = subprocess.run([sys.executable, "-m", "confagg.train", "--rendezvous-port"],
                              env=_stage_env(**env), capture_output=True, text=True,
                              timeout=120, check=True)  # fmt: skip
        return int(proc.stdout)

    first, second = port(SLURM_JOB_ID="81234"), port(SLURM_JOB_ID="81235")
    assert first != second and all(1024 < p < 32768 for p in (first, second))
    assert port() == 0


def test_the_gpu_smoke_script_stops_at_once_without_cuda(tmp_path):
    """benchmarks/gpu_smoke.py on this CPU machine: exit 2 with a clear message, nothing run."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_smoke.py"), "--work", str(tmp_path / "w")],
        env=_stage_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "gpu_smoke.py needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "w").exists()
