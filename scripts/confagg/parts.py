"""The resumable part files of one sample shard (the sample stage's store).

Resumable parts. A problem is written as soon as its ``n`` samples are done, to
``<out>.parts/part-<N>.parquet`` (the problems finished in one engine step, one row group each).
A part is written under a temporary name, flushed, then hard-linked to a number no part has
(the largest + 1; the link fails rather than overwrite), so a kill leaves at most a stray
temporary (removed on the next start). A rerun reads which problems the parts hold and samples
only the others. A part that no longer reads (truncated, damaged) stops the run with its name:
deleting that one file loses only its own problems, which the next run samples again. Parts of
other settings (sampling, prompt, seed, model, problems) stop the run rather than mix.

Merge. With every problem done, the parts are streamed in problem order into
``<out>.parts/merged.parquet`` (row groups of about ``tables.ROW_GROUP_BYTES``), the parts are
deleted, and that file is renamed to ``<out>``: a kill at any point leaves either the parts or
the merged file, and the rerun finishes from there without sampling again. A complete ``<out>``
is never rewritten: a rerun finds it and only removes what is left of the parts folder.
(Snakemake deletes the output of a job that died: one killed after the rename but before the
empty parts folder is gone samples the shard again from the start, with the same seed, so the
same way.)

Kill tests: with ``CONFAGG_PAUSE_AT=sample.<point>`` in the environment the stage prints
``paused at sample.<point>`` and waits to be killed there (``pause``): ``first-step`` (the engine
has run, nothing is written), ``part-<i>`` (the i-th part of this run is written), ``merge``
(inside the merged file's write), ``finish`` (one part deleted, the merged file not yet renamed),
``cleanup`` (the output in place, the parts folder not yet removed).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from confagg.files import file_mode, named_write
from confagg.fingerprints import differences
from confagg.tables import READ_OPTIONS, SAMPLES, WRITE_OPTIONS, TableWriter

_META_KEY = b"confagg.sample"  # the settings fingerprint, in each part's and the output's schema


def pause(point: str) -> None:
    """The kill tests' seam (module docstring): wait at ``point`` when asked to."""
    if os.environ.get("CONFAGG_PAUSE_AT") == f"sample.{point}":
        print(f"paused at sample.{point}", file=sys.stderr, flush=True)
        time.sleep(3600)


class PartError(RuntimeError):
    """The parts folder of a shard cannot be used as it is; the message says what to delete."""


def parts_dir(out: str | os.PathLike) -> Path:
    """Where a shard keeps its finished problems until it is complete."""
    return Path(f"{out}.parts")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(tmp: Path) -> None:
    """Flush a finished temporary file to disk and give it the usual permissions (mkstemp
    makes 0600), before it is linked or renamed to its name."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, file_mode())


def _write_parquet(table: pa.Table, tmp: Path, schema: pa.Schema, row_group_rows: int) -> None:
    with pq.ParquetWriter(tmp, schema, **WRITE_OPTIONS) as writer:
        writer.write_table(table.cast(schema), row_group_size=row_group_rows)
    _seal(tmp)


def _schema(fp: Mapping) -> pa.Schema:
    return SAMPLES.with_metadata({**SAMPLES.metadata, _META_KEY: json.dumps(fp, sort_keys=True)})


def stored_fingerprint(schema: pa.Schema) -> dict | None:
    raw = (schema.metadata or {}).get(_META_KEY)
    return None if raw is None else json.loads(raw)


class Parts:
    """The parts folder of one shard output: scan, write, merge, finish (module docstring)."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.dir = parts_dir(out)
        self.merged = self.dir / "merged.parquet"
        self.next = 0

    def files(self) -> list[Path]:
        """The parts, in the order they were written."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.glob("part-*.parquet") if p.stem[5:].isdigit()]
        return sorted(found, key=lambda p: int(p.stem[5:]))

    def clean_strays(self, log) -> None:
        """Remove the temporaries of writes a kill cut short (never a finished file)."""
        strays = [*self.dir.glob(".*.tmp")] if self.dir.is_dir() else []
        strays += self.out.parent.glob(f".{self.out.name}.*.tmp")  # the output's, older versions
        for path in strays:
            path.unlink(missing_ok=True)
        if strays:
            log(f"removed {len(strays)} temporary file(s) left by a killed run")

    def _damaged(self, damaged: list[tuple[Path, str]]) -> PartError:
        others = len(self.files()) - len(damaged)
        listing = "; ".join(f"{path} ({why})" for path, why in damaged)
        one = len(damaged) == 1
        return PartError(
            f"damaged part file{'' if one else 's'}: {listing}. Delete "
            f"{'that one file' if one else 'those files'} and run again: the problems "
            f"{'it' if one else 'they'} held are sampled again, and nothing else is lost (the "
            f"{others} other part(s) in {self.dir} are intact and kept)."
        )

    def _read_part(self, path: Path, n: int, order: Mapping[str, int]):
        """(fingerprint, problem per row group) of a part, or the reason it is damaged."""
        try:
            with pq.ParquetFile(path, **READ_OPTIONS) as pf:
                stored = stored_fingerprint(pf.schema_arrow)
                groups = [
                    pf.read_row_group(i, columns=["problem_id", "sample_idx"])
                    for i in range(pf.num_row_groups)
                ]
        except (OSError, pa.ArrowException, ValueError) as e:
            return None, None, f"{type(e).__name__}: {e}"
        if stored is None:
            return None, None, "no settings fingerprint in its metadata"
        pids = []
        for rg, group in enumerate(groups):
            ids = group.column("problem_id").unique().to_pylist()
            idx = sorted(group.column("sample_idx").to_pylist())
            if len(ids) != 1 or idx != list(range(n)) or ids[0] not in order:
                return stored, None, f"row group {rg} is not one problem's {n} samples"
            pids.append(ids[0])
        return stored, pids, None

    def scan(self, order: Mapping[str, int], n: int, fp: Mapping) -> dict[str, tuple[Path, int]]:
        """Where each finished problem is: ``{problem id: (part, row group)}``, after checking
        every part (readable, this run's settings, each row group one problem's ``n`` samples).
        Other settings stop at the first such part; damaged parts are all named at once."""
        where: dict[str, tuple[Path, int]] = {}
        damaged: list[tuple[Path, str]] = []
        files = self.files()
        self.next = int(files[-1].stem[5:]) + 1 if files else 0
        for path in files:
            stored, pids, why = self._read_part(path, n, order)
            if stored is not None and stored != dict(fp):
                raise PartError(
                    f"{self.dir} holds samples of other settings than this run "
                    f"({'; '.join(differences(stored, fp))}). Delete that folder to sample "
                    "this shard again with the current settings."
                )
            if why is not None:
                damaged.append((path, why))
                continue
            for rg, pid in enumerate(pids):
                if pid in where:
                    raise PartError(
                        f"problem {pid!r} is in both {where[pid][0]} and {path} (two jobs wrote "
                        f"this shard at once?): delete {path} and run again; nothing else is "
                        "lost."
                    )
                where[pid] = (path, rg)
        if damaged:
            raise self._damaged(damaged)
        return where

    def write(self, table: pa.Table, n: int, fp: Mapping) -> Path:
        """Write finished problems (``n`` rows each, one row group each) as a new part; never
        replaces an existing file."""
        with named_write(self.dir):  # a full disk: named, and no part left
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".part.", suffix=".tmp", dir=self.dir)
            os.close(fd)
            tmp = Path(name)
            try:
                _write_parquet(table, tmp, _schema(fp), n)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        try:
            while True:
                path = self.dir / f"part-{self.next:05d}.parquet"
                self.next += 1
                try:
                    os.link(tmp, path)  # atomic, and fails instead of replacing
                    break
                except FileExistsError:
                    continue
                except OSError:  # a file system without hard links
                    if path.exists():
                        continue
                    os.replace(tmp, path)
                    break
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.dir)
        return path

    def merge(self, where: Mapping[str, tuple[Path, int]], order: list[str], fp: Mapping) -> int:
        """Stream every problem's row group, in ``order``, into the merged file (row groups of
        about ``tables.ROW_GROUP_BYTES``, written atomically); its rows."""
        with TableWriter(self.merged, _schema(fp)) as writer:
            for pid in order:
                path, rg = where[pid]
                try:
                    with pq.ParquetFile(path, **READ_OPTIONS) as pf:
                        table = pf.read_row_group(rg).select(SAMPLES.names)
                except (OSError, pa.ArrowException) as e:
                    raise self._damaged([(path, f"{type(e).__name__}: {e}")]) from None
                writer.write(table)
                pause("merge")
        return writer.rows

    def finish(self) -> None:
        """Parts deleted, the merged file renamed onto the output, the folder removed (a kill
        before the rename leaves the merged file, which the next run finishes from)."""
        for i, path in enumerate(self.files()):
            path.unlink()
            if i == 0:
                pause("finish")
        os.replace(self.merged, self.out)
        _fsync_dir(self.out.parent)
        pause("cleanup")
        shutil.rmtree(self.dir, ignore_errors=True)


def check_output(out: Path, rows: int, fp: Mapping) -> None:
    """A complete output of this shard, or an error naming the file."""
    try:
        meta = pq.ParquetFile(out).metadata
        stored = stored_fingerprint(meta.schema.to_arrow_schema())
    except (OSError, pa.ArrowException) as e:
        raise RuntimeError(
            f"{out} exists but does not read ({e}): delete it to sample again"
        ) from None
    if meta.num_rows != rows or (stored is not None and stored != dict(fp)):
        why = differences(stored, fp) if stored is not None and stored != dict(fp) else []
        raise RuntimeError(
            f"{out} exists but is not this shard's {rows} samples ({meta.num_rows} rows"
            f"{'; ' + '; '.join(why) if why else ''}): delete it to sample again"
        )
