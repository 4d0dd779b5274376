"""Damaged tables and full disks, through the stages as their rules run them (issue 23).

* A page damaged with the footer intact (200 bytes flipped a third of the way into a column
  the stage reads), in a samples, scores, grades and curated table: the stage that reads it
  stops with a :class:`~confagg.files.TableError` naming the file, its role and the file to
  delete, and no pyarrow traceback of its own; a single flipped byte that still decompresses is
  caught by the page checksum.
* Writes into a full file system (a small tmpfs, filled): the error names the output and the
  free space, nothing that looks finished is left, and the rerun with space gives the clean
  run's outputs byte for byte. A rename that fails while curate publishes its three outputs
  (an injected error, inject/sitecustomize.py) says which are written and which are missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_curate import curate_settings

from confagg.files import TableError
from confagg.parts import Parts
from confagg.problems import write_problems
from confagg.tables import SAMPLES, read_table
from conftest import BIN

from .harness import digest, fault_env

RUN = "r"
READING = {"extraction": "boxed", "think_end": "</think>", "require_think_end": False}
GRADING = json.dumps({"timeout": 5, "reading": READING})
PROBLEMS, SAMPLES_EACH = 12, 8
EVAL_SETTINGS = {"ks": [1, 2, 4], "window": 2,
                 "online": {"warmup": 2, "etas": [10, 90], "consensus": 0.95}}  # fmt: skip


@dataclass
class Run:
    """A small run's results folder, ``<workdir>/results/r``, laid out as the rules name it."""

    workdir: Path

    @property
    def root(self) -> Path:
        return self.workdir / "results" / RUN

    @property
    def problems(self) -> Path:
        return self.root / "data/pool.jsonl"

    def shard(self, table: str) -> Path:
        return self.root / table / "pool/seed1/shard0.parquet"

    @property
    def curated(self) -> dict[str, Path]:
        names = {"train": "train.parquet", "val": "val.parquet", "summary": "summary.json"}
        return {k: self.root / "curated" / name for k, name in names.items()}

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval/pool/seed1"

    def command(self, stage: str) -> list[str]:
        """The stage's command line, as its rule writes it."""
        s, sc, gr = (str(self.shard(t)) for t in ("samples", "scores", "grades"))
        args = {
            "score": ["--settings", json.dumps({"window": 2, "tail_tokens": 2}), s, sc],
            "grade": ["--problems", str(self.problems), "--processes", "1", "--settings",
                      GRADING, s, gr],
            "curate": ["--problems", str(self.problems), "--samples", s, "--scores", sc,
                       "--grades", gr, "--benchmarks", "--settings",
                       json.dumps(curate_settings(0, sets_per_problem=2, set_size=4)),
                       "--train", str(self.curated["train"]), "--val", str(self.curated["val"]),
                       "--summary", str(self.curated["summary"])],
            "evaluate": ["--samples", s, "--scores", sc, "--grades", gr, "--settings",
                         json.dumps(EVAL_SETTINGS), "--seed", "1",
                         "--metrics", str(self.eval_dir / "metrics.json"),
                         "--candidates", str(self.eval_dir / "candidates.parquet")],
        }[stage]  # fmt: skip
        return [str(BIN / "python"), "-m", f"confagg.{stage}", *args]

    def outputs(self, stage: str) -> list[Path]:
        return {
            "score": [self.shard("scores")],
            "grade": [self.shard("grades")],
            "curate": list(self.curated.values()),
            "evaluate": [self.eval_dir / "candidates.parquet", self.eval_dir / "metrics.json"],
        }[stage]

    def run(self, stage: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(stage), check=False, capture_output=True, text=True,
                              timeout=600, cwd=self.workdir, env=env)  # fmt: skip


def _samples(rng: np.random.Generator) -> pa.Table:
    """Problem i has gold answer 100 + i and about i % 9 right answers out of 8; texts and
    confidences random (they barely compress: the pages are large enough to damage)."""
    rows = [(i, j) for i in range(PROBLEMS) for j in range(SAMPLES_EACH)]
    answers = [str(100 + i + (j >= i % 9)) for i, j in rows]
    return pa.table(
        {
            "problem_id": [f"p{i:02d}" for i, _ in rows],
            "sample_idx": [j for _, j in rows],
            "text": [f"<think>{rng.bytes(300).hex()}</think> So \\boxed{{{a}}}." for a in answers],
            "answer": answers,
            "num_tokens": [int(n) for n in rng.integers(50, 150, len(rows))],
            "finish_reason": ["stop"] * len(rows),
            "token_confidence": [rng.random(100).astype(np.float16) * 10 for _ in rows],
        }
    ).cast(SAMPLES)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Run:
    """The uninterrupted run: samples made here, then score, grade, curate and evaluate."""
    from confagg.tables import write_table

    run = Run(tmp_path_factory.mktemp("damage") / "clean")
    write_problems(
        [{"id": f"p{i:02d}", "problem": f"What is {100 + i}?", "answer": str(100 + i)}
         for i in range(PROBLEMS)],
        run.problems,
    )  # fmt: skip
    write_table(_samples(np.random.default_rng(0)), run.shard("samples"), SAMPLES)
    for stage in ("score", "grade", "curate", "evaluate"):
        proc = run.run(stage)
        assert proc.returncode == 0, f"{stage}:\n{proc.stderr[-3000:]}"
    return run


def _copy(clean: Run, dest: Path, drop: str) -> Run:
    """A copy of the clean run without the outputs of stage ``drop``."""
    shutil.copytree(clean.workdir, dest)
    run = Run(dest)
    for out in run.outputs(drop):
        out.unlink()
    return run


def _chunk(path: Path, column: str) -> tuple[int, int]:
    """(first byte, bytes) of ``column``'s data in the first row group of a parquet file."""
    meta = pq.read_metadata(path).row_group(0)
    for i in range(meta.num_columns):
        col = meta.column(i)
        if col.path_in_schema.split(".")[0] == column:
            start = col.dictionary_page_offset or col.data_page_offset
            return start, col.total_compressed_size
    raise KeyError(column)


def damage(path: Path, column: str) -> None:
    """Flip 200 bytes (fewer in a small chunk) a third of the way into ``column``'s pages; the
    footer is left intact (asserted: the file still opens)."""
    start, size = _chunk(path, column)
    data = bytearray(path.read_bytes())
    at, n = start + size // 3, min(200, size // 3)
    data[at : at + n] = bytes(b ^ 0xFF for b in data[at : at + n])
    path.write_bytes(data)
    pq.read_metadata(path)  # the footer reads


def assert_named_damage(proc: subprocess.CompletedProcess, path: Path, role: str) -> None:
    """The stage failed with a TableError naming ``path``, its role and the file to delete,
    raised without pyarrow's own exception chained to it."""
    err = proc.stderr
    assert proc.returncode != 0, f"the stage read a damaged {path} without an error:\n{err}"
    line = re.search(r"^confagg\.files\.TableError: (.*)$", err, re.M)
    assert line, f"no TableError:\n{err[-3000:]}"
    assert line.group(1).startswith(f"{path}: a data page is damaged"), line.group(1)
    assert f"It holds the {role}" in line.group(1) and f"rm {path}," in line.group(1)
    assert "During handling of the above exception" not in err  # no pyarrow traceback chained
    assert "The above exception was the direct cause" not in err


# (table damaged, its column, the stage that reads it, the role in the error)
DAMAGE_CASES = [
    ("samples", "token_confidence", "score", "samples of pool seed 1, shard 0"),
    ("samples", "text", "grade", "samples of pool seed 1, shard 0"),  # it reads the texts
    ("samples", "token_confidence", "evaluate", "samples of pool seed 1, shard 0"),
    ("samples", "text", "curate", "samples of pool seed 1, shard 0"),
    ("scores", "tail", "curate", "scores of pool seed 1, shard 0"),
    ("scores", "tail", "evaluate", "scores of pool seed 1, shard 0"),
    ("grades", "answer_group", "curate", "grades of pool seed 1, shard 0"),
    ("grades", "answer_group", "evaluate", "grades of pool seed 1, shard 0"),
]


@pytest.mark.parametrize(
    "table, column, stage, role", DAMAGE_CASES, ids=[f"{c[0]}-{c[2]}" for c in DAMAGE_CASES]
)
def test_a_damaged_page_is_named_by_the_stage_that_reads_it(
    clean, tmp_path, table, column, stage, role
):
    run = _copy(clean, tmp_path / "run", drop=stage)
    damage(run.shard(table), column)
    assert_named_damage(run.run(stage), run.shard(table), role)
    assert not any(p.exists() for p in run.outputs(stage))  # nothing made from it


def test_a_damaged_curated_table_is_named_by_training(clean, tmp_path, tiny_model):
    """The training stage (`accelerate launch -m confagg.train`, the rule's command) reads the
    curated sets before it builds its trainer: a damaged page there is named."""
    from test_train import _env, _launch, _settings

    run = _copy(clean, tmp_path / "run", drop="score")
    train = run.curated["train"]
    damage(train, "candidates")
    cmd = _launch(train, tiny_model, run.root / "train/confidence", _settings())
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=_env())
    assert_named_damage(proc, train, "curated training sets")


def _flip_one_byte_unnoticed(path: Path, column: str) -> int:
    """Flip one bit inside ``column``'s pages where the page still decompresses and reads as
    other values when the checksum is not verified; the offset."""
    start, size = _chunk(path, column)
    original = path.read_bytes()
    want = pq.read_table(path, columns=[column])
    for at in range(start + size // 2, start + size):
        data = bytearray(original)
        data[at] ^= 0x10
        path.write_bytes(data)
        try:
            got = pq.read_table(path, columns=[column], page_checksum_verification=False)
        except (OSError, pa.ArrowException):
            continue
        if not got.equals(want):
            return at
    raise AssertionError(f"no byte of {column} flips without a decoding error")


def test_a_flipped_byte_that_still_decompresses_is_caught_by_the_checksum(clean, tmp_path):
    run = _copy(clean, tmp_path / "run", drop="score")
    samples = run.shard("samples")
    _flip_one_byte_unnoticed(samples, "token_confidence")  # unverified: wrong numbers, no error
    with pytest.raises(TableError, match="its checksum does not match what was written"):
        read_table(samples, SAMPLES, ["token_confidence"])
    proc = run.run("score")
    assert_named_damage(proc, samples, "samples of pool seed 1, shard 0")
    assert "checksum does not match" in proc.stderr


# --------------------------------------------------------------------------------------------
# full disks


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs at ``tmp_path/disk``, and a function that fills it (0 bytes free) or frees
    it again. Skipped where mounting is not permitted (not root, or a container without it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: a full file system cannot be made here")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                          check=False, capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not permitted here: {proc.stderr.strip()}")
    filler = disk / f"filler-{uuid.uuid4().hex}"

    def fill(full: bool) -> None:
        if not full:
            filler.unlink(missing_ok=True)
            return
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        assert shutil.disk_usage(disk).free == 0

    try:
        yield disk, fill
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*")) if folder.exists() else []


# (stage, the output named in the error, its role)
DISK_CASES = [
    ("score", "scores/pool/seed1/shard0.parquet", "scores of pool seed 1, shard 0"),
    ("grade", "grades/pool/seed1/shard0.parquet", "grades of pool seed 1, shard 0"),
    ("curate", "curated/", "curated "),
    ("evaluate", "eval/pool/seed1/", "of pool seed 1"),
]


@pytest.mark.parametrize("stage, named, role", DISK_CASES, ids=[c[0] for c in DISK_CASES])
def test_a_full_disk_is_named_and_the_rerun_with_space_is_the_clean_run(
    clean, tmp_path, small_disk, stage, named, role
):
    """The stage writes its outputs into a full tmpfs (its inputs there too): it names the
    output, says the disk is full and the space left, and leaves nothing that looks finished
    (no output, no temporary); once there is space, the rerun writes the clean run's outputs
    byte for byte."""
    disk, fill = small_disk
    # the run's results on the small disk: the inputs copied there first, then the disk filled
    run = _copy(clean, disk / "run", drop=stage)
    fill(True)
    proc = run.run(stage)
    err = proc.stderr
    assert proc.returncode != 0, f"{stage} succeeded on a full disk"
    line = re.search(r"^confagg\.files\.TableError: (.*)$", err, re.M)
    assert line, f"no TableError:\n{err[-3000:]}"
    message = line.group(1)
    assert message.startswith(str(run.root / named)), message
    assert "could not write the " in message and role in message, message
    assert "the disk is full" in message and "0 B free on the file system of" in message
    assert "Free space there" in message
    if len(run.outputs(stage)) > 1:  # outputs published together: none of them
        assert "None of this job's outputs was written" in err
    assert not [p for p in run.outputs(stage) if p.exists()]
    assert _leftovers(run.root) == []
    fill(False)
    again = run.run(stage)
    assert again.returncode == 0, again.stderr[-3000:]
    for out in run.outputs(stage):
        clean_out = clean.root / out.relative_to(run.root)
        assert digest(out) == digest(clean_out), f"{out} differs from the clean run's"
    assert _leftovers(run.root) == []


def test_a_part_written_to_a_full_disk_is_named_and_left_out(small_disk):
    """The sample stage's parts (its only writes outside files.atomic_path)."""
    from .test_hostile import _samples as part_rows

    disk, fill = small_disk
    out = disk / "results/r/samples/pool/seed1/shard0.parquet"
    parts = Parts(out)
    first = parts.write(part_rows(["p0"], 2), 2, {"seed": 1})
    fill(True)
    with pytest.raises(TableError) as e:
        parts.write(part_rows(["p1"], 2), 2, {"seed": 1})
    assert str(e.value).startswith(f"{parts.dir}: could not write the finished problems of the "
                                   "samples of pool seed 1, shard 0")  # fmt: skip
    assert "the disk is full" in str(e.value) and "free on the file system" in str(e.value)
    assert sorted(p.name for p in parts.dir.iterdir()) == [first.name]  # no temporary left
    fill(False)
    assert parts.write(part_rows(["p1"], 2), 2, {"seed": 1}).name == "part-00001.parquet"


def test_curate_says_which_outputs_are_missing_when_publishing_fails(clean, tmp_path):
    """An error at the second rename of curate's outputs (injected at the rename, as a full or
    failing file system would): train was published, val and the summary (the last, whose
    presence says the set is complete) are named as missing; the rerun completes the set."""
    run = _copy(clean, tmp_path / "run", drop="curate")
    mark = tmp_path / "mark.jsonl"
    env = fault_env(run.root, mark, fail="EIO", kill="replace", at=2, match="/curated/")
    proc = run.run("curate", env=env)
    assert proc.returncode != 0 and mark.is_file(), proc.stderr[-3000:]
    train, val, summary = run.curated.values()
    message = re.search(r"^confagg\.files\.TableError: (.*)$", proc.stderr, re.M).group(1)
    assert f"written: {train}; MISSING: {val}, {summary}" in message, message
    assert train.exists() and not val.exists() and not summary.exists()
    assert _leftovers(run.root) == []
    assert run.run("curate").returncode == 0
    for out in run.outputs("curate"):
        assert digest(out) == digest(clean.root / out.relative_to(run.root))
