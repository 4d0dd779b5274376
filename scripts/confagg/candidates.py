"""The evaluation inputs joined: one row per sample of some shards (its samples, scores and
grades, no text: :func:`load_candidates`), and the texts of some of those rows read a batch at a
time (:class:`CandidateTexts`). Curation, aggregation and evaluation read candidates this way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from confagg.answers import after_think
from confagg.tables import GRADES, SAMPLES, SCORES, iter_batches, read_table, row_group_starts

# Columns of the samples table that the joined candidate table carries (text on request).
# (the answer is the grader's: GRADES.answer)
_CANDIDATE_SAMPLE_COLUMNS = ("problem_id", "sample_idx", "num_tokens", "finish_reason")
KEY = ["problem_id", "sample_idx"]


def load_candidates(
    samples: Sequence[str | os.PathLike],
    scores: Sequence[str | os.PathLike],
    grades: Sequence[str | os.PathLike],
) -> pd.DataFrame:
    """One row per sample of some shards, sorted by (problem_id, sample_idx): its answer (the
    grader's reading; null where it found none: ``answer_group`` -1), tokens, finish reason,
    confidence metrics, the grades columns and where it is stored (``shard``: position in
    ``samples``, ``row``: row in that file; :class:`CandidateTexts` reads the texts of some
    rows).

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
    """Candidate texts (the part after the end-of-thinking marker ``think_end``) of some rows of
    a :func:`load_candidates` frame, read from the samples shards only from the row groups that
    hold them: a stage asks for one batch of candidates at a time, so the traces never sit in
    memory at once."""

    def __init__(self, samples: Sequence[str | os.PathLike], think_end: str):
        self.samples = list(samples)
        self.think_end = think_end
        self._starts: dict[int, np.ndarray] = {}

    def read(self, positions: np.ndarray, where: np.ndarray) -> dict[int, tuple[str, int]]:
        """``{position: (text after think_end, characters of the whole text)}`` for rows
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
                    out[r] = (after_think(text, self.think_end), len(text))
                offset += batch.num_rows
                if offset > want[-1]:
                    break
        return out
