"""`snakemake --profile slurm`, a bare profile name as Snakemake's docs teach, after the set-up's
link step (tools/link_slurm_profile.sh): Snakemake finds profiles/slurm through the user's
profile folder, and a `slurm` profile already there is never replaced."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from test_dryrun import _job_counts

from conftest import REPO, SNAKEMAKE_BIN, snakemake

LINK = REPO / "tools/link_slurm_profile.sh"


def _user(home: Path) -> dict[str, str]:
    """A user whose home, and so whose Snakemake profile folder (XDG, Linux), is ``home``."""
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def _link(home: Path) -> subprocess.CompletedProcess:
    """The set-up's link step, run as that user."""
    return subprocess.run(
        ["bash", str(LINK), str(SNAKEMAKE_BIN / "python")],  # Snakemake's own python
        env={**os.environ, **_user(home)},
        capture_output=True,
        text=True,
        check=True,
    )


def _dry_run(profile: str, home: Path, cwd: Path) -> dict[str, int]:
    proc = snakemake("--profile", profile, "-n", "--quiet", "rules", cwd=cwd, env=_user(home))
    return _job_counts(proc.stdout)


def test_a_bare_profile_name_finds_the_slurm_profile_after_the_link_step(workdir):
    home = workdir / "home"
    bare = snakemake("--profile", "slurm", "-n", cwd=workdir, check=False, env=_user(home))
    assert bare.returncode != 0 and "no profile.yaml (or config.yaml) found" in bare.stderr

    first = _link(home)
    link = home / ".config/snakemake/slurm"
    assert link.resolve() == (REPO / "profiles/slurm").resolve()
    assert "snakemake --profile slurm" in first.stdout
    # the full-scale config's jobs, submitted through the profile (64 pool + 4 x 3 x 2 shards)
    assert _dry_run("slurm", home, workdir)["sample_shard"] == 256 + 24

    # again: nothing new, the same name
    again = _link(home)
    assert "already links" in again.stdout
    assert sorted(p.name for p in link.parent.iterdir()) == ["slurm"]


def test_a_slurm_profile_already_there_is_left_alone(workdir):
    home = workdir / "home"
    theirs = home / ".config/snakemake/slurm"
    theirs.mkdir(parents=True)
    (theirs / "config.yaml").write_text("executor: slurm\njobs: 7\n")

    out = _link(home).stdout
    assert "snakemake --profile confagg-slurm" in out and "left as it is" in out
    assert not theirs.is_symlink()
    assert [p.name for p in theirs.iterdir()] == ["config.yaml"]
    assert (theirs / "config.yaml").read_text() == "executor: slurm\njobs: 7\n"
    assert _dry_run("confagg-slurm", home, workdir)["sample_shard"] == 256 + 24
    assert "already links" in _link(home).stdout


def test_a_broken_link_is_no_profile_and_gets_replaced(workdir):
    """A link left by a checkout since deleted holds no profile: the step links this one there."""
    home = workdir / "home"
    link = home / ".config/snakemake/slurm"
    link.parent.mkdir(parents=True)
    link.symlink_to(workdir / "deleted-checkout/profiles/slurm")
    assert "in place of a broken link" in _link(home).stdout
    assert link.resolve() == (REPO / "profiles/slurm").resolve()
    assert sorted(p.name for p in link.parent.iterdir()) == ["slurm"]
