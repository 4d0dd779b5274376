"""The conda environments in envs/: every rule names one, every pip package is pinned, and the
pins satisfy each other's declared requirements (read from PyPI's metadata of the pinned
releases, for the environments' Python on Linux x86_64).

Creating the environments needs conda-forge, which this machine cannot reach, and the CUDA
wheels of torch, which its package mirror lacks; the requirement check reads each pinned
release's own metadata instead (``pip install --dry-run --no-deps --report``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

ENVS = sorted((REPO / "envs").glob("*.yaml"))
PLATFORMS = ("manylinux_2_28", "manylinux_2_17", "manylinux2014")  # a cluster's Linux x86_64


def _env(path):
    """Python version and pins of an environment file (pip options such as --extra-index-url
    aside)."""
    spec = yaml.safe_load(path.read_text())
    python = next(d for d in spec["dependencies"] if isinstance(d, str) and d.startswith("python="))
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    return python.split("=", 1)[1], [Requirement(line) for line in pip if not line.startswith("-")]


def _pypi_release(req: Requirement) -> Requirement:
    """The PyPI release a pin builds on: a wheel URL or a local version (``+cu129``: a CUDA build
    from another index) becomes ``name==<release>``, whose metadata PyPI has."""
    if req.url:
        version = re.match(rf"{re.escape(req.name)}-([^-+]+)", req.url.rsplit("/", 1)[1])[1]
    else:
        version = next(iter(req.specifier)).version.split("+")[0]
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return Requirement(f"{req.name}{extras}=={version}")


def test_every_rule_names_an_environment_of_envs():
    rules = sorted((REPO / "workflow/rules").glob("*.smk"))
    named = {
        m[1].replace("{CUDA_ENV}", cuda)  # the GPU environments: envs/<name>{,-cu12}.yaml
        for path in rules
        for m in re.finditer(r'conda:\s*\n\s*f?"\.\./\.\./envs/([\w.{}]+)"', path.read_text())
        for cuda in ("", "-cu12")
    }
    assert named == {p.name for p in ENVS}
    for path in rules:
        text = path.read_text()
        jobs = len(re.findall(r"^(?:rule|checkpoint) \w+:", text, re.M))
        assert text.count("conda:") == jobs, path


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.stem)
def test_pins_satisfy_each_others_requirements(path, tmp_path):
    python, pins = _env(path)
    assert all(
        r.url or (len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==") for r in pins
    )
    pins = [_pypi_release(r) for r in pins]
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
         "--quiet", "--only-binary=:all:", "--python-version", python,
         *[f"--platform={tag}_x86_64" for tag in PLATFORMS],
         "--target", str(tmp_path / "t"),
         "--report", str(report), *[str(r) for r in pins]],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if proc.returncode and re.search(r"(?i)connection|resolve host|network", proc.stderr):
        pytest.skip(f"PyPI not reachable: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pinned = {canonicalize_name(r.name): r for r in pins}
    releases = [item["metadata"] for item in json.loads(report.read_text())["install"]]
    versions = {canonicalize_name(meta["name"]): meta["version"] for meta in releases}
    assert versions.keys() == pinned.keys()
    marker_env = default_environment()
    marker_env.update(
        python_version=python,
        python_full_version=f"{python}.0",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
    )
    checked, broken = 0, []
    for meta in releases:
        extras = pinned[canonicalize_name(meta["name"])].extras
        for line in meta.get("requires_dist", []):
            need = Requirement(line)
            name = canonicalize_name(need.name)
            if name not in versions:
                continue
            if need.marker is not None and not any(
                need.marker.evaluate({**marker_env, "extra": extra}) for extra in {"", *extras}
            ):
                continue
            checked += 1
            if not need.specifier.contains(versions[name], prereleases=True):
                broken.append(
                    f"{meta['name']} {meta['version']} needs {need}: pinned {versions[name]}"
                )
    assert not broken, "\n".join(broken)
    assert checked >= len(pins) // 2  # the pins do depend on each other


def test_gpu_environments_agree_on_the_shared_stack():
    envs = {p.stem: {canonicalize_name(r.name): str(r.specifier) for r in _env(p)[1]} for p in ENVS}
    for name in ("torch", "vllm", "transformers", "math-verify", "numpy"):
        assert envs["vllm"][name] == envs["train"][name], name


def test_cuda12_environments_differ_only_in_the_cuda_builds():
    """envs/<name>-cu12.yaml pins what envs/<name>.yaml pins, torch and vLLM as CUDA 12 builds
    of the same releases."""
    for name in ("vllm", "train"):
        pins = {
            variant: {canonicalize_name(r.name): _pypi_release(r) for r in _env(path)[1]}
            for variant, path in (("13", REPO / f"envs/{name}.yaml"),
                                  ("12", REPO / f"envs/{name}-cu12.yaml"))
        }  # fmt: skip
        assert pins["12"].keys() == pins["13"].keys(), name
        for package, req in pins["12"].items():
            assert req.specifier == pins["13"][package].specifier, (name, package)
        cu12 = {canonicalize_name(r.name): r for r in _env(REPO / f"envs/{name}-cu12.yaml")[1]}
        assert "+cu12" in str(cu12["torch"].specifier) and "+cu12" in cu12["vllm"].url
