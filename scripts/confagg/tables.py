"""Every table the workflow writes: its declared Arrow schema, atomic parquet I/O, and the
readers and joiners of those tables that more than one stage uses.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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
        *_METRIC_FIELDS,
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

# One row per aggregator completion (confagg.aggregate).
AGG_OUTPUTS = pa.schema(
    [
        pa.field("method", pa.string(), nullable=False),  # the variant's name
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("set_idx", pa.int32(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("output_idx", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),  # generated tokens
        pa.field("prompt_tokens", pa.int32(), nullable=False),
        pa.field("prompt_truncated", pa.bool_(), nullable=False),
    ],
    metadata={"table": "aggregator_outputs"},
)

# One row per evaluation sample of a benchmark x seed (the report's confidence histograms).
EVAL_CANDIDATES = pa.schema(
    [
        *_KEY_FIELDS,
        GRADES.field("correct"),
        SAMPLES.field("num_tokens"),
        SAMPLES.field("finish_reason"),
        *_METRIC_FIELDS,
    ],
    metadata={"table": "eval_candidates"},
)

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


def read_table(
    path: str | os.PathLike, schema: pa.Schema, columns: Sequence[str] | None = None
) -> pa.Table:
    """Read a parquet file written with ``schema`` (only ``columns`` of it, in that order, when
    given: the others are never read); a clear error if it is something else."""
    names = list(schema.names if columns is None else columns)
    unknown = [n for n in names if n not in schema.names]
    if unknown:
        raise ValueError(f"columns {unknown} are not in the {_table_name(schema)} table")
    missing = [n for n in names if n not in pq.read_schema(path).names]
    if missing:
        raise ValueError(f"{path}: not a {_table_name(schema)} table (missing columns {missing})")
    table = pq.read_table(path, columns=names)
    return table.cast(pa.schema([schema.field(n) for n in names]))


def _table_name(schema: pa.Schema) -> str:
    return schema.metadata[b"table"].decode()


# Columns of the samples table that the joined candidate table carries (text on request).
_CANDIDATE_SAMPLE_COLUMNS = ("problem_id", "sample_idx", "answer", "num_tokens", "finish_reason")
KEY = ["problem_id", "sample_idx"]


def load_candidates(
    samples: Sequence[str | os.PathLike],
    scores: Sequence[str | os.PathLike],
    grades: Sequence[str | os.PathLike],
    text: bool = False,
) -> pd.DataFrame:
    """One row per sample of some shards, sorted by (problem_id, sample_idx): its answer, tokens,
    finish reason, confidence metrics, verdict (``correct``, ``status``), where it is stored
    (``shard``: position in ``samples``, ``row``: row in that file) and, with ``text``, its text.

    Shards pair up by position in the three lists; scores and grades are written in their
    samples' row order, so a row that does not match is a wrong input, reported with its file.
    Without ``text`` the solution texts are never read (a pool's traces do not fit in memory).
    """
    if not len(samples) == len(scores) == len(grades):
        raise ValueError(
            f"{len(samples)} samples, {len(scores)} scores and {len(grades)} grades shards: "
            "expected one of each per shard"
        )
    if not samples:
        raise ValueError("no shards given")
    columns = [*_CANDIDATE_SAMPLE_COLUMNS, *(["text"] if text else [])]
    frames = []
    for shard, (sa, sc, gr) in enumerate(zip(samples, scores, grades, strict=True)):
        df = read_table(sa, SAMPLES, columns).to_pandas()
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
    return df.sort_values(KEY, kind="stable").reset_index(drop=True)


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
