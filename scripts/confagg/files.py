"""Files the workflow writes, and what a failed read or write of one says.

A file appears under its final name only once it is complete (written to a temporary name in
the same folder, flushed, then renamed: :func:`atomic_path`, :func:`atomic_dir`), so a killed
job never leaves a half file that looks finished; outputs of one job that belong together are
published together (:class:`OutputSet`).

Every read or write failure of a workflow file becomes a :class:`TableError` (:func:`table_error`,
the one place that words it) that names the file, its role in the run (:func:`table_role`),
what happened (a damaged page, a truncated file, a full disk and the space left) and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa


def file_mode() -> int:
    """The permissions a new file gets under the process's umask (``0o666 & ~umask``), for the
    temporaries that mkstemp makes 0600. The umask is read from /proc where it can be, since
    reading it with ``os.umask`` means setting it for a moment, for every thread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class TableError(OSError, ValueError):
    """A table or output that could not be read or written. The message names the file, its
    role in the run, what happened and what to do (built by :func:`table_error` only)."""


# What a path is in a run, from its place under results/<run>/ (the rules' output names).
_ROLES = (
    (r"/(?P<t>samples|scores|grades)/(?P<d>[^/]+)/seed(?P<s>\d+)/shard(?P<n>\d+)\.parquet",
     "{t} of {d} seed {s}, shard {n}"),
    (r"/samples/(?P<d>[^/]+)/seed(?P<s>\d+)/shard(?P<n>\d+)\.parquet\.parts(/[^/]+)?",
     "finished problems of the samples of {d} seed {s}, shard {n} (its parts folder)"),
    (r"/curated/train\.parquet", "curated training sets"),
    (r"/curated/val\.parquet", "curated validation sets"),
    (r"/curated/summary\.json", "curation summary"),
    (r"/eval/(?P<b>[^/]+)/seed(?P<s>\d+)/aggregators\.parquet",
     "aggregator outputs of {b} seed {s}"),
    (r"/eval/(?P<b>[^/]+)/seed(?P<s>\d+)/candidates\.parquet",
     "evaluation candidates of {b} seed {s}"),
    (r"/eval/(?P<b>[^/]+)/seed(?P<s>\d+)/metrics\.json", "metrics of {b} seed {s}"),
)  # fmt: skip
# Write failures that say something about the file system rather than the program.
_WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is larger than the file system allows",
    errno.EIO: "the file system reported an input/output error",
    errno.EROFS: "the file system is read-only",
}


def table_role(path: str | os.PathLike, schema: pa.Schema | None = None) -> str:
    """What ``path`` is in a run, e.g. "samples of aime25 seed 1, shard 0" (from its place under
    ``results/<run>/``); else its table's name, or "output"."""
    where = Path(path).absolute().as_posix()
    for pattern, role in _ROLES:
        m = re.search(pattern + "$", where)
        if m:
            return role.format(**m.groupdict())
    return f"{schema.metadata[b'table'].decode()} table" if schema is not None else "output"


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def table_error(
    path: str | os.PathLike,
    error: BaseException,
    schema: pa.Schema | None = None,
    *,
    writing: bool = False,
    footer: bool = False,
) -> TableError:
    """The one description of a failed read or write of ``path``: which file, its role, what
    happened, what to do. ``footer``: the failure came from opening the file (its footer),
    not from reading its pages."""
    role = table_role(path, schema)
    said = " ".join(str(error).split()) or type(error).__name__  # pyarrow's, on one line
    said = "".join(c if c.isprintable() else "?" for c in said)
    if writing:
        what = _WRITE_FAILURES.get(getattr(error, "errno", None), f"{said}")
        folder = Path(path).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            free = f"{_size(shutil.disk_usage(folder).free)} free on the file system of {folder}"
        except OSError:
            free = f"free space on {folder} unknown"
        full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        todo = "Free space there (or give the run a larger file system)" if full else (
            "Check that file system")  # fmt: skip
        return TableError(
            f"{path}: could not write the {role}: {what} ({said}; {free}). Nothing half-written "
            f"is left under that name. {todo} and run the job again."
        )
    if isinstance(error, FileNotFoundError):
        return TableError(f"{path}: the {role} is missing (no such file): run the job that "
                          "writes it first.")  # fmt: skip
    if footer:
        what = f"not a readable parquet file: truncated, empty or not parquet ({said})"
    elif "checksum" in said.lower():
        what = f"a data page is damaged: its checksum does not match what was written ({said})"
    else:
        what = f"a data page is damaged: it does not decode ({said})"
    return TableError(
        f"{path}: {what}. It holds the {role} (damaged by a torn copy or a bad disk): delete "
        f"this one file and make it again: rm {shlex.quote(str(path))}, then run the workflow "
        "again (it remakes the file and what was made from it; by hand: rerun the stage that "
        "writes it)."
    )


@contextmanager
def named_failures(
    path: str | os.PathLike, schema: pa.Schema | None = None, *, writing=False, footer=False
) -> Iterator[None]:
    """Turn pyarrow's (or the OS's) errors about ``path`` into a :class:`TableError`; a write
    only for the failures of ``_WRITE_FAILURES`` (others name their file already)."""
    try:
        yield
    except TableError:
        raise
    except (OSError, pa.ArrowException) as e:
        if writing and getattr(e, "errno", None) not in _WRITE_FAILURES:
            raise
        raise table_error(path, e, schema, writing=writing, footer=footer) from None


@contextmanager
def named_write(path: str | os.PathLike) -> Iterator[None]:
    """Writes of ``path`` in the block fail with a :class:`TableError` naming it (and the free
    space left when the disk is full): for writers outside :func:`atomic_path`."""
    with named_failures(path, writing=True):
        yield


class OutputSet:
    """Outputs of one job that belong together, published together: each is written to its
    temporary (``atomic_path(..., together=outputs)``, :class:`TableWriter`, :func:`write_json`)
    and all are renamed onto their names only when the block ends without an error, in the
    order given: the last one last (the one that says the set is complete), after removing an
    older version of it first. On an error nothing is published (the error says so); a rename
    that fails part way raises an error listing what was published and what is missing.

        with OutputSet([train, val, summary]) as outputs:
            ... TableWriter(train, SETS, together=outputs) ...
    """

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [Path(p) for p in paths]
        self._ready: dict[Path, Path] = {}

    def __enter__(self) -> OutputSet:
        return self

    def add(self, tmp: Path, path: Path) -> None:
        if Path(path) not in self.paths:
            raise ValueError(f"{path} is not one of the outputs {self._names()}")
        self._ready[Path(path)] = tmp

    def _names(self) -> str:
        return ", ".join(str(p) for p in self.paths)

    def __exit__(self, exc_type, exc, tb) -> bool:
        ready, self._ready = self._ready, {}
        try:
            if exc_type is not None:
                if isinstance(exc, Exception):
                    exc.add_note(
                        f"None of this job's outputs was written: {self._names()} (they are "
                        "published together; earlier versions are left as they were)."
                    )
                return False
            unwritten = [p for p in self.paths if p not in ready]
            if unwritten:
                raise RuntimeError(f"outputs never written: {unwritten}")
            self.paths[-1].unlink(missing_ok=True)  # its presence says the set is complete
            done: list[Path] = []
            try:
                for path in self.paths:
                    os.replace(ready[path], path)
                    done.append(path)
            except OSError as e:
                missing = [str(p) for p in self.paths if p not in done]
                raise TableError(
                    f"publishing the outputs that belong together failed at {missing[0]} ({e}): "
                    f"written: {', '.join(map(str, done)) or 'none'}; MISSING: "
                    f"{', '.join(missing)}. The set is incomplete: delete the written ones and "
                    "run the job again."
                ) from None
        finally:
            for tmp in ready.values():
                tmp.unlink(missing_ok=True)
        return False


def _remove_leftovers(folder: Path, pattern: str) -> None:
    """Remove the temporaries that killed writes of one output left in ``folder`` (names that
    fully match ``pattern``): a job is the only writer of its outputs, so they are dead."""
    for leftover in folder.glob(".*"):
        if re.fullmatch(pattern, leftover.name):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike, together: OutputSet | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success (the
    temporaries of earlier writes of ``path`` that a kill cut short are removed first), or,
    ``together`` with other outputs, hand it to that :class:`OutputSet` to publish. A full
    disk (or another failure of the file system) is a :class:`TableError` naming ``path``."""
    path = Path(path)
    with named_failures(path, writing=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp's names: prefix, 8 characters of [a-z0-9_], suffix
        _remove_leftovers(path.parent, re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, file_mode())  # mkstemp makes 0600; give the usual permissions
            if together is None:
                os.replace(tmp, path)
            else:
                together.add(tmp, path)
                tmp = None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``out_dir``; on success rename it onto ``out_dir``.

    An existing ``out_dir`` is replaced (moved aside first, removed after the rename). On any
    error the temporary folder is removed and ``out_dir`` is left as it was.
    """
    final = Path(out_dir).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final.parent, re.escape(f".{final.name}.") + r"(tmp|old)-\d+-[0-9a-f]{8}")
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = final.parent / f".{final.name}.tmp-{tag}"
    tmp.mkdir()  # honours the umask, unlike tempfile.mkdtemp's 0700
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{tag}"
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:
                os.replace(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(obj, path: str | os.PathLike, together: OutputSet | None = None) -> None:
    """Write ``obj`` as indented JSON, atomically (``together``: see :class:`OutputSet`)."""
    with atomic_path(path, together) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
