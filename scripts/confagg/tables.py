"""Every table the workflow writes: its declared Arrow schema, its parquet writer and readers.

A table is written atomically (``confagg.files``: complete under its name or not there).
Damage is caught where a table is read: every table is written with Parquet page checksums
(CRC-32 of each page) and every reader verifies them, so a flipped bit that still decompresses
stops the read instead of becoming a number; a read that fails is a ``files.TableError`` naming
the file, its role in the run, what happened and what to do.

Tables of any size (a full-scale pool shard holds ~3 GB of text): writers gather rows into row
groups of at most about ``ROW_GROUP_BYTES`` (:class:`TableWriter`, also under
:func:`write_table`); readers take only the columns they need and, where a table can be large,
iterate it in batches of about ``READ_BATCH_BYTES`` (:func:`iter_batches`), so a stage's memory
does not grow with its input. Columns where one array could pass 2 GiB (texts, confidence
lists, candidate lists) use 64-bit offsets (``large_string``, ``large_list``); files written
with the 32-bit types before read as the schema says (cast on read).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from confagg.confidence import METRICS
from confagg.files import OutputSet, atomic_path, named_failures

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
        # the sampler's first reading (last \boxed{} after </think>); later stages read the
        # grader's (GRADES.answer: grading.extraction, grading.think_end)
        pa.field("answer", pa.string()),
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
        # the final answer read from the text (grading.extraction after grading.think_end;
        # confagg.verifier.read_and_verify); null when none
        pa.field("answer", pa.string()),
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
        pa.field("text", pa.large_string(), nullable=False),  # the part after think_end
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

# One row per aggregator completion (confagg.aggregate): k is the set size m, set_idx the set
# among the problem's disjoint sets of that size, output_idx the completion (0..r-1).
AGG_OUTPUTS = pa.schema(
    [
        pa.field("method", pa.string(), nullable=False),  # the variant's name
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("set_idx", pa.int32(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("output_idx", pa.int32(), nullable=False),
        # the training seed of a trained variant's run (training.seeds); null: prompted
        pa.field("train_seed", pa.int32()),
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
    with named_failures(path, schema, footer=True):  # pyarrow's message names no file
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
    with named_failures(path, schema):
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
    with named_failures(path, schema, footer=True):
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
                    with named_failures(path, schema):  # a damaged page is found here
                        batch = next(batches, None)
                    if batch is None:
                        break
                    yield _cast(pa.Table.from_batches([batch]), target, path, schema)
            finally:  # the allocator keeps freed pages otherwise: memory creeps up group by group
                pa.default_memory_pool().release_unused()


def row_group_starts(path: str | os.PathLike) -> np.ndarray:
    """The first row of each row group of a parquet file, then its number of rows."""
    with named_failures(path, footer=True):
        meta = pq.read_metadata(path)
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))


def _table_name(schema: pa.Schema) -> str:
    return schema.metadata[b"table"].decode()


def flat_confidence(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The ``token_confidence`` column as (flat float16 values, int64 offsets), zero-copy
    where Arrow allows."""
    col = table.column("token_confidence").combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False)
    # a sliced list array starts its offsets past 0
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]
