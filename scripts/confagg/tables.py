"""Every table the workflow writes: its declared Arrow schema, atomic parquet I/O, and the
readers and joiners of those tables that more than one stage uses.

A file appears under its final name only once it is complete (written to a temporary name in
the same folder, flushed, then renamed), so a killed job never leaves a half file that looks
finished; outputs of one job that belong together are published together (:class:`OutputSet`).

Damage is caught where a table is read: every table is written with Parquet page checksums
(CRC-32 of each page) and every reader verifies them, so a flipped bit that still decompresses
stops the read instead of becoming a number. Every read or write failure becomes a
:class:`TableError` that names the file, its role in the run (:func:`table_role`), what
happened (a damaged page, a truncated file, a full disk and the space left) and what to do.

Tables of any size (a full-scale pool shard holds ~3 GB of text): writers gather rows into row
groups of at most about ``ROW_GROUP_BYTES`` (:class:`TableWriter`, also under
:func:`write_table`); readers take only the columns they need and, where a table can be large,
iterate it in batches of about ``READ_BATCH_BYTES`` (:func:`iter_batches`), so a stage's memory
does not grow with its input. Columns where one array could pass 2 GiB (texts, confidence
lists, candidate lists) use 64-bit offsets (``large_string``, ``large_list``); files written
with the 32-bit types before read as the schema says (cast on read).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from confagg.answers import after_think
from confagg.confidence import METRICS

# Every per-sample table starts with these: one row per (problem, sample).
_KEY_FIELDS = [
    pa.field("problem_id", pa.string(), nullable=False),
    pa.field("sample_idx", pa.int32(), nullable=False),
]
_METRIC_FIELDS = [pa.field(m, pa.float64()) for m in METRICS]

# One row per sampled solution.
SAMPLES = pa.schema(
    [
        *_KEY_FIELDS,
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("answer", pa.string()),  # last \boxed{} after </think>; null when none
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),  # "stop" | "length" | ...
        # -mean(top-20 logprobs) per generated token, see confagg.confidence
        pa.field("token_confidence", pa.large_list(pa.float16()), nullable=False),
    ],
    metadata={"table": "samples"},
)

# One row per sampled solution: the DeepConf trace metrics of confagg.confidence.
SCORES = pa.schema(
    [*_KEY_FIELDS, *_METRIC_FIELDS],
    metadata={"table": "scores"},
)

# One row per sampled solution: its verdict against the gold answer (confagg.verify).
GRADES = pa.schema(
    [
        *_KEY_FIELDS,
        pa.field("correct", pa.bool_(), nullable=False),
        # "correct" | "incorrect" | "no_answer" | "timeout" | "unparseable"
        pa.field("status", pa.string(), nullable=False),
        # equal within a problem = the same answer (confagg.grouping); -1: no answer
        pa.field("answer_group", pa.int32(), nullable=False),
        # thinking mode: the text never closes its thinking, so it has no answer (confagg.grade)
        pa.field("unfinished_thinking", pa.bool_(), nullable=False),
    ],
    metadata={"table": "grades"},
)

# One candidate inside an aggregation set.
CANDIDATE = pa.struct(
    [
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),  # the part after </think>
        pa.field("answer", pa.string()),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),
        *_METRIC_FIELDS,
    ]
)

# One row per set of m candidates of one problem (AggLM training / evaluation sets).
SETS = pa.schema(
    [
        pa.field("set_id", pa.string(), nullable=False),  # "<problem_id>/<set index>"
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("problem", pa.large_string(), nullable=False),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("hard", pa.bool_(), nullable=False),  # the majority answer is wrong
        pa.field("majority_answer", pa.string()),
        pa.field("candidates", pa.large_list(CANDIDATE), nullable=False),
    ],
    metadata={"table": "sets"},
)

# One row per aggregator completion (confagg.aggregate).
AGG_OUTPUTS = pa.schema(
    [
        pa.field("method", pa.string(), nullable=False),  # the variant's name
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("set_idx", pa.int32(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("output_idx", pa.int32(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),  # generated tokens
        pa.field("prompt_tokens", pa.int32(), nullable=False),
        pa.field("prompt_truncated", pa.bool_(), nullable=False),
    ],
    metadata={"table": "aggregator_outputs"},
)

# One row per evaluation sample of a benchmark x seed: what the report re-scores (confidence
# plots, calibration, accuracy by difficulty: the methods on a subset of problems).
EVAL_CANDIDATES = pa.schema(
    [
        *_KEY_FIELDS,
        GRADES.field("answer_group"),
        GRADES.field("correct"),
        SAMPLES.field("num_tokens"),
        SAMPLES.field("finish_reason"),
        *_METRIC_FIELDS,
    ],
    metadata={"table": "eval_candidates"},
)

# Written with zstd: the confidence arrays compress a little and text a lot. Every page carries
# a CRC-32 checksum, which every reader verifies (READ_OPTIONS): no cost above the noise to write
# (36 s) or read (15 s) a full-size samples shard (benchmarks/bench_scale.py --checksum).
WRITE_OPTIONS = {
    "compression": "zstd",
    "use_dictionary": ["problem_id", "finish_reason"],
    "write_page_checksum": True,
}
READ_OPTIONS = {"page_checksum_verification": True}
# Row groups hold at most about this much Arrow memory, and readers take batches of about this
# much: a stage's memory follows these, not the table's size (a pool shard holds ~3 GB of text).
ROW_GROUP_BYTES = 32 << 20
READ_BATCH_BYTES = 8 << 20


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
    return f"{_table_name(schema)} table" if schema is not None else "output"


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
def _named(
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
    with _named(path, writing=True):
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
    with _named(path, writing=True):
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


def write_table(
    table: pa.Table,
    path: str | os.PathLike,
    schema: pa.Schema,
    together: OutputSet | None = None,
) -> None:
    """Check ``table`` against ``schema`` and write it atomically as parquet, in row groups of
    at most about ``ROW_GROUP_BYTES`` (see :class:`TableWriter`)."""
    with TableWriter(path, schema, together=together) as writer:
        writer.write(table)


class TableWriter:
    """Write a table piece by piece, atomically (``atomic_path``): each ``write`` is cast to
    ``schema`` and its rows are gathered into row groups of at most about ``row_group_bytes``
    of Arrow memory (a row larger than that is a group alone). Memory stays about one row group
    whatever the file's size, and a reader never needs more than one group at a time.

        with TableWriter(out, SCORES) as writer:
            for batch in ...:
                writer.write(batch)

    The file appears under its name only when the ``with`` block ends without an error (with
    ``together``: when that :class:`OutputSet` publishes it with the job's other outputs).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: pa.Schema,
        row_group_bytes: int | None = None,
        together: OutputSet | None = None,
    ):
        self.path, self.schema, self.together = Path(path), schema, together
        self.row_group_bytes = row_group_bytes or ROW_GROUP_BYTES
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self._stack: ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> TableWriter:
        with ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(self.path, self.together))
            self._writer = pq.ParquetWriter(tmp, self.schema, **WRITE_OPTIONS)
            self._stack = stack.pop_all()
        return self

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Add rows (any column order; extra columns are dropped, types cast to the schema)."""
        if self._writer is None:
            raise RuntimeError("TableWriter.write outside its with block")
        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        try:
            table = table.select(self.schema.names).cast(self.schema)
        except (KeyError, pa.ArrowException) as e:
            raise ValueError(f"{self.path}: rows do not fit the {_table_name(self.schema)} "
                             f"table: {e}") from None  # fmt: skip
        ends = np.cumsum(row_nbytes(table))
        start = 0
        while start < table.num_rows:
            base = ends[start - 1] if start else 0
            room = self.row_group_bytes - self._pending_bytes
            stop = int(np.searchsorted(ends, base + room, side="right"))
            if stop == start and not self._pending:
                stop = start + 1  # one row larger than a group: a group alone
            if stop > start:
                self._pending.append(table.slice(start, stop - start))
                self._pending_bytes += int(ends[stop - 1] - base)
            if stop < table.num_rows:
                self._flush()
            start = stop

    def _flush(self) -> None:
        if self._pending:
            group = pa.concat_tables(self._pending)
            self._writer.write_table(group, row_group_size=max(group.num_rows, 1))
            self.rows += group.num_rows
        self._pending, self._pending_bytes = [], 0

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, writer = self._stack, self._writer
        if exc_type is not None:
            self._stack = self._writer = None
            with suppress(Exception):
                writer.close()
            return stack.__exit__(exc_type, exc, tb)  # the temporary file is removed
        try:
            self._flush()
            self._stack = self._writer = None
            writer.close()
        except BaseException:
            self._stack = self._writer = None
            if not stack.__exit__(*sys.exc_info()):
                raise
            return False
        return stack.__exit__(None, None, None)


def row_nbytes(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """Arrow memory of each row in bytes (values plus offsets; validity bitmaps left out)."""
    sizes = np.zeros(table.num_rows, np.float64)
    for column in table.columns:
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        if chunks:
            sizes += np.concatenate([_array_row_nbytes(c) for c in chunks])
    return sizes


def _array_row_nbytes(arr: pa.Array) -> np.ndarray:
    t = arr.type
    if pa.types.is_dictionary(t):
        return _array_row_nbytes(arr.indices)
    if pa.types.is_struct(t):
        sizes = np.zeros(len(arr), np.float64)
        for child in arr.flatten():  # flatten applies the array's own offset
            sizes += _array_row_nbytes(child)
        return sizes
    offset = 8 if pa.types.is_large_string(t) or pa.types.is_large_binary(t) else 4
    if pa.types.is_string(t) or pa.types.is_binary(t) or offset == 8:
        return pc.binary_length(arr).fill_null(0).to_numpy(zero_copy_only=False) + offset
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        child = _array_row_nbytes(arr.flatten())
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        per_row = np.bincount(parents, weights=child, minlength=len(arr))
        return per_row + (8 if pa.types.is_large_list(t) else 4)
    try:
        width = max(t.bit_width // 8, 1)
    except ValueError:  # any other type: its average
        width = arr.nbytes / max(len(arr), 1)
    return np.full(len(arr), float(width))


def _checked_columns(
    path: str | os.PathLike, schema: pa.Schema, columns: Sequence[str] | None
) -> tuple[list[str], pa.Schema]:
    """The column names to read and their target schema; a clear error naming the file when
    it is not a table of ``schema``."""
    names = list(schema.names if columns is None else columns)
    unknown = [n for n in names if n not in schema.names]
    if unknown:
        raise ValueError(f"columns {unknown} are not in the {_table_name(schema)} table")
    with _named(path, schema, footer=True):  # pyarrow's message names no file
        present = pq.read_schema(path).names
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(f"{path}: not a {_table_name(schema)} table (missing columns {missing})")
    return names, pa.schema([schema.field(n) for n in names])


def _cast(table: pa.Table, target: pa.Schema, path, schema: pa.Schema) -> pa.Table:
    """``table`` in the declared types (files written before the 64-bit types read as well)."""
    try:
        return table.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise ValueError(f"{path}: not a {_table_name(schema)} table ({e})") from None


def read_table(
    path: str | os.PathLike, schema: pa.Schema, columns: Sequence[str] | None = None
) -> pa.Table:
    """Read a parquet file written with ``schema`` (only ``columns`` of it, in that order, when
    given: the others are never read); a clear error if it is something else. For a table
    that can be large, :func:`iter_batches` reads it piece by piece."""
    names, target = _checked_columns(path, schema, columns)
    with _named(path, schema):
        table = pq.read_table(path, columns=names, **READ_OPTIONS)
    return _cast(table, target, path, schema)


def iter_batches(
    path: str | os.PathLike,
    schema: pa.Schema,
    columns: Sequence[str] | None = None,
    batch_bytes: int | None = None,
    row_groups: Sequence[int] | None = None,
) -> Iterator[pa.Table]:
    """The rows of a parquet file written with ``schema`` (of ``row_groups`` only, when given),
    in order, as tables of about ``batch_bytes`` (uncompressed) each, holding only ``columns``
    (in that order): memory stays about one batch plus one compressed row group whatever the
    file's size. Batches never span two row groups."""
    names, target = _checked_columns(path, schema, columns)
    with _named(path, schema, footer=True):
        pf = pq.ParquetFile(path, **READ_OPTIONS)
    with pf:
        meta = pf.metadata
        # the parquet leaf columns under each wanted top-level column
        leaves = [
            i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] in names
        ]
        for rg in range(meta.num_row_groups) if row_groups is None else row_groups:
            group = meta.row_group(rg)
            size = sum(group.column(i).total_uncompressed_size for i in leaves)
            rows = max(1, int(group.num_rows * (batch_bytes or READ_BATCH_BYTES) / max(size, 1)))
            batches = pf.iter_batches(batch_size=rows, row_groups=[rg], columns=names)
            try:
                while True:
                    with _named(path, schema):  # a damaged page is found here
                        batch = next(batches, None)
                    if batch is None:
                        break
                    yield _cast(pa.Table.from_batches([batch]), target, path, schema)
            finally:  # the allocator keeps freed pages otherwise: memory creeps up group by group
                pa.default_memory_pool().release_unused()


def row_group_starts(path: str | os.PathLike) -> np.ndarray:
    """The first row of each row group of a parquet file, then its number of rows."""
    with _named(path, footer=True):
        meta = pq.read_metadata(path)
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))


def _table_name(schema: pa.Schema) -> str:
    return schema.metadata[b"table"].decode()


# Columns of the samples table that the joined candidate table carries (text on request).
_CANDIDATE_SAMPLE_COLUMNS = ("problem_id", "sample_idx", "answer", "num_tokens", "finish_reason")
KEY = ["problem_id", "sample_idx"]


def load_candidates(
    samples: Sequence[str | os.PathLike],
    scores: Sequence[str | os.PathLike],
    grades: Sequence[str | os.PathLike],
) -> pd.DataFrame:
    """One row per sample of some shards, sorted by (problem_id, sample_idx): its answer (null
    where the grader found none: ``answer_group`` -1), tokens, finish reason, confidence
    metrics, the grades columns and where it is stored (``shard``: position in ``samples``,
    ``row``: row in that file; :class:`CandidateTexts` reads the texts of some rows).

    Shards pair up by position in the three lists; scores and grades are written in their
    samples' row order, so a row that does not match is a wrong input, reported with its file.
    The solution texts are not read here (a pool's traces do not fit in memory).
    """
    if not len(samples) == len(scores) == len(grades):
        raise ValueError(
            f"{len(samples)} samples, {len(scores)} scores and {len(grades)} grades shards: "
            "expected one of each per shard"
        )
    if not samples:
        raise ValueError("no shards given")
    frames = []
    for shard, (sa, sc, gr) in enumerate(zip(samples, scores, grades, strict=True)):
        df = read_table(sa, SAMPLES, _CANDIDATE_SAMPLE_COLUMNS).to_pandas()
        df["shard"], df["row"] = shard, np.arange(len(df))
        for path, schema in ((sc, SCORES), (gr, GRADES)):
            other = read_table(path, schema).to_pandas()
            if len(other) != len(df) or not other[KEY].equals(df[KEY]):
                raise ValueError(f"{path}: its rows do not match the samples of {sa}")
            df = pd.concat([df, other.drop(columns=KEY)], axis=1)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    dup = df.duplicated(KEY)
    if dup.any():
        pid, idx = df.loc[dup, KEY].iloc[0]
        raise ValueError(f"sample {pid!r}/{idx} appears in more than one shard")
    # the grader's reading wins: no answer where it found none (e.g. unfinished thinking)
    df["answer"] = df["answer"].where(df["answer_group"] >= 0, None)
    return df.sort_values(KEY, kind="stable").reset_index(drop=True)


class CandidateTexts:
    """Candidate texts (the part after ``</think>``) of some rows of a :func:`load_candidates`
    frame, read from the samples shards only from the row groups that hold them: a stage asks
    for one batch of candidates at a time, so the traces never sit in memory at once."""

    def __init__(self, samples: Sequence[str | os.PathLike]):
        self.samples = list(samples)
        self._starts: dict[int, np.ndarray] = {}

    def read(self, positions: np.ndarray, where: np.ndarray) -> dict[int, tuple[str, int]]:
        """``{position: (text after </think>, characters of the whole text)}`` for rows
        ``positions`` of a frame whose ``where`` is its ``[shard, row]`` columns (int64)."""
        positions = np.asarray(positions, np.int64)
        out = {}
        for shard in np.unique(where[positions, 0]).tolist():
            mine = positions[where[positions, 0] == shard]
            read = self._read_shard(shard, np.unique(where[mine, 1]))
            out.update({int(p): read[int(r)] for p, r in zip(mine, where[mine, 1], strict=True)})
        return out

    def _read_shard(self, shard: int, rows: np.ndarray) -> dict[int, tuple[str, int]]:
        """:meth:`read` for the (sorted, distinct) ``rows`` of one shard, keyed by row."""
        path = self.samples[shard]
        if shard not in self._starts:
            self._starts[shard] = row_group_starts(path)
        starts = self._starts[shard]
        if len(rows) and rows[-1] >= starts[-1]:
            raise ValueError(f"{path}: has {starts[-1]} rows, row {rows[-1]} asked for")
        groups = np.searchsorted(starts, rows, side="right") - 1
        out: dict[int, tuple[str, int]] = {}
        for rg in np.unique(groups).tolist():
            want, offset = rows[groups == rg], int(starts[rg])
            for batch in iter_batches(path, SAMPLES, ["text"], row_groups=[rg]):
                lo, hi = np.searchsorted(want, [offset, offset + batch.num_rows])
                texts = batch.column(0).take(pa.array(want[lo:hi] - offset)).to_pylist()
                for r, text in zip(want[lo:hi].tolist(), texts, strict=True):
                    out[r] = (after_think(text), len(text))
                offset += batch.num_rows
                if offset > want[-1]:
                    break
        return out


def write_json(obj, path: str | os.PathLike, together: OutputSet | None = None) -> None:
    """Write ``obj`` as indented JSON, atomically (``together``: see :class:`OutputSet`)."""
    with atomic_path(path, together) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def flat_confidence(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The ``token_confidence`` column as (flat float16 values, int64 offsets), zero-copy
    where Arrow allows."""
    col = table.column("token_confidence").combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False)
    # a sliced list array starts its offsets past 0
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]
