"""Every table the workflow writes: its declared Arrow schema and atomic parquet I/O.

A file appears under its final name only once it is complete (written to a temporary name in
the same folder, flushed, then renamed), so a killed job never leaves a half file that looks
finished.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from confagg.confidence import METRICS

# One row per sampled solution.
SAMPLES = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("answer", pa.string()),  # last \boxed{} after </think>; null when none
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),  # "stop" | "length" | ...
        # -mean(top-20 logprobs) per generated token, see confagg.confidence
        pa.field("token_confidence", pa.list_(pa.float16()), nullable=False),
    ],
    metadata={"table": "samples"},
)

# One row per sampled solution: the DeepConf trace metrics of confagg.confidence.
SCORES = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        *[pa.field(m, pa.float64()) for m in METRICS],
    ],
    metadata={"table": "scores"},
)

# One row per sampled solution: its verdict against the gold answer (confagg.verify).
GRADES = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        # "correct" | "incorrect" | "no_answer" | "timeout" | "unparseable"
        pa.field("status", pa.string(), nullable=False),
    ],
    metadata={"table": "grades"},
)

# One candidate inside an aggregation set.
CANDIDATE = pa.struct(
    [
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),  # the part after </think>
        pa.field("answer", pa.string()),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),
        *[pa.field(m, pa.float64()) for m in METRICS],
    ]
)

# One row per set of m candidates of one problem (AggLM training / evaluation sets).
SETS = pa.schema(
    [
        pa.field("set_id", pa.string(), nullable=False),  # "<problem_id>/<set index>"
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("problem", pa.string(), nullable=False),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("hard", pa.bool_(), nullable=False),  # the majority answer is wrong
        pa.field("majority_answer", pa.string()),
        pa.field("candidates", pa.list_(CANDIDATE), nullable=False),
    ],
    metadata={"table": "sets"},
)

# One row per problem, the normalised form of every input data set.
PROBLEMS_FIELDS = ("id", "problem", "answer")

# Written with zstd: the confidence arrays compress a little and text a lot.
_WRITE_OPTS = {"compression": "zstd", "use_dictionary": ["problem_id", "finish_reason"]}


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``out_dir``; on success rename it onto ``out_dir``.

    An existing ``out_dir`` is replaced (moved aside first, removed after the rename). On any
    error the temporary folder is removed and ``out_dir`` is left as it was.
    """
    final = Path(out_dir).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
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


def write_table(table: pa.Table, path: str | os.PathLike, schema: pa.Schema) -> None:
    """Check ``table`` against ``schema`` and write it atomically as parquet."""
    table = table.select(schema.names).cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **_WRITE_OPTS)


def read_table(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """Read a parquet file written with ``schema``; a clear error if it is something else."""
    table = pq.read_table(path)
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(
            f"{path}: not a {schema.metadata[b'table'].decode()} table (missing columns {missing})"
        )
    return table.select(schema.names).cast(schema)


def write_json(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def flat_confidence(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The ``token_confidence`` column as (flat float16 values, int64 offsets), zero-copy
    where Arrow allows."""
    col = table.column("token_confidence").combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False)
    # a sliced list array starts its offsets past 0
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """Concatenate tables of one schema (an empty table when there are none)."""
    return pa.concat_tables(tables) if tables else schema.empty_table()
