"""Sample stage: ``n`` solutions per problem of one shard with vLLM, with per-token confidence.

Streaming. The shard's problems go through vLLM's engine loop (``LLMEngine.add_request`` /
``step``, delta outputs every ``STREAM_INTERVAL`` tokens), at most ``problems_in_flight`` at a
time: a problem is admitted as soon as another one has all its ``n`` samples, so the engine
never idles behind the slowest sample of a chunk. Each step's top-k logprobs are reduced to
token confidences before vLLM sees them (``confagg.engine.intercept_outputs``): one numpy pass
per step over every running sample, and vLLM never builds its per-token Python lists. Token ids
and confidences go into fixed buffers of ``problems_in_flight * n`` rows x ``max_tokens`` (4 + 2
bytes per token; pages are touched only as samples grow), so memory follows
``problems_in_flight``, not the shard. vLLM does not detokenise; each finished sample's text is
decoded once from its token ids, the same text ``LLM.generate`` returns (the stop token left
out, as vLLM does).

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

Seeding: vLLM is seeded once per engine (``LLM(seed=...)``; a per-request seed with ``n > 1``
crashes on the CPU build). The seed is derived from (run seed, data set, shard, number of
problems already finished), so an uninterrupted shard is reproducible, and so is a resumed one
given the same point of interruption.

Kill tests: with ``CONFAGG_PAUSE_AT=sample.<point>`` in the environment the stage prints
``paused at sample.<point>`` and waits to be killed there: ``first-step`` (the engine has run,
nothing is written), ``part-<i>`` (the i-th part of this run is written), ``merge`` (inside the
merged file's write), ``finish`` (one part deleted, the merged file not yet renamed), ``cleanup``
(the output in place, the parts folder not yet removed).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import heapq
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from confagg.answers import extract_boxed
from confagg.confidence import token_confidence
from confagg.engine import child_request_ids, intercept_outputs, make_engine, sampling_params
from confagg.problems import read_problems, shard_of
from confagg.prompts import render, solver_messages
from confagg.seeds import derive_seed
from confagg.settings import from_mapping
from confagg.tables import READ_OPTIONS, SAMPLES, WRITE_OPTIONS, TableWriter, named_write

_META_KEY = b"confagg.sample"  # the settings fingerprint, in each part's and the output's schema
_PROGRESS_S = 60.0
STREAM_INTERVAL = 16


def _pause(point: str) -> None:
    """The kill tests' seam (module docstring): wait at ``point`` when asked to."""
    if os.environ.get("CONFAGG_PAUSE_AT") == f"sample.{point}":
        print(f"paused at sample.{point}", file=sys.stderr, flush=True)
        time.sleep(3600)


@dataclass(frozen=True)
class Sampling:
    """The config's ``sampling`` section as vLLM reads it, with ``n`` per data set."""

    n: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    max_tokens: int
    logprobs: int


@dataclass(frozen=True)
class SampleSettings:
    """What the stage reads from the config (``sample_settings`` in workflow/rules/common.smk)."""

    sampling: Sampling
    problems_in_flight: int
    engine: dict
    prompt: dict
    chat_template_kwargs: dict


class PartError(RuntimeError):
    """The parts folder of a shard cannot be used as it is; the message says what to delete."""


def parts_dir(out: str | os.PathLike) -> Path:
    """Where a shard keeps its finished problems until it is complete."""
    return Path(f"{out}.parts")


def fingerprint(problems: list[dict], model: str, seed: int, settings: SampleSettings) -> dict:
    """What the samples of a shard depend on: parts of another fingerprint are never mixed."""
    digest = hashlib.sha256(
        json.dumps([[p["id"], p["problem"]] for p in problems]).encode()
    ).hexdigest()
    return {
        "sampling": dataclasses.asdict(settings.sampling),
        "prompt": settings.prompt,
        "chat_template_kwargs": settings.chat_template_kwargs,
        "model": str(model),
        "seed": seed,
        "problems": digest,
    }


def _differences(before: Mapping, now: Mapping) -> list[str]:
    keys = sorted(set(before) | set(now))
    return [
        f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)
    ]


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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def _write_parquet(table: pa.Table, tmp: Path, schema: pa.Schema, row_group_rows: int) -> None:
    with pq.ParquetWriter(tmp, schema, **WRITE_OPTIONS) as writer:
        writer.write_table(table.cast(schema), row_group_size=row_group_rows)
    _seal(tmp)


def _schema(fp: Mapping) -> pa.Schema:
    return SAMPLES.with_metadata({**SAMPLES.metadata, _META_KEY: json.dumps(fp, sort_keys=True)})


def _stored_fingerprint(schema: pa.Schema) -> dict | None:
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
                stored = _stored_fingerprint(pf.schema_arrow)
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
                    f"({'; '.join(_differences(stored, fp))}). Delete that folder to sample "
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
                _pause("merge")
        return writer.rows

    def finish(self) -> None:
        """Parts deleted, the merged file renamed onto the output, the folder removed (a kill
        before the rename leaves the merged file, which the next run finishes from)."""
        for i, path in enumerate(self.files()):
            path.unlink()
            if i == 0:
                _pause("finish")
        os.replace(self.merged, self.out)
        _fsync_dir(self.out.parent)
        _pause("cleanup")
        shutil.rmtree(self.dir, ignore_errors=True)


def _check_output(out: Path, rows: int, fp: Mapping) -> None:
    """A complete output of this shard, or an error naming the file."""
    try:
        meta = pq.ParquetFile(out).metadata
        stored = _stored_fingerprint(meta.schema.to_arrow_schema())
    except (OSError, pa.ArrowException) as e:
        raise RuntimeError(
            f"{out} exists but does not read ({e}): delete it to sample again"
        ) from None
    if meta.num_rows != rows or (stored is not None and stored != dict(fp)):
        why = _differences(stored, fp) if stored is not None and stored != dict(fp) else []
        raise RuntimeError(
            f"{out} exists but is not this shard's {rows} samples ({meta.num_rows} rows"
            f"{'; ' + '; '.join(why) if why else ''}): delete it to sample again"
        )


# --------------------------------------------------------------------------------------------
# The engine loop


@dataclass
class Finished:
    """One problem with all its samples: token ids, confidences and finish reasons."""

    problem_id: str
    tokens: list[np.ndarray]  # int32 per sample
    confidence: list[np.ndarray]  # float16 per sample, one per token
    finish_reasons: list[str]
    prompt_token_ids: list[int]


@dataclass
class _InFlight:
    problem_id: str
    request_id: str  # ours (the RequestOutputs carry it)
    children: list[str]  # the engine core's, for its outputs
    remaining: int
    finish_reasons: list
    prompt_token_ids: list[int] | None = None


class StreamingSampler:
    """``n`` samples per prompt through one engine, ``in_flight`` prompts at a time.

    Rows ``block * n + index`` of two ``[in_flight * n, max_tokens]`` buffers hold the token ids
    and confidences of the samples of the problem in ``block``. With ``capture_in_engine``
    (default) confidences are taken from the engine-core outputs before vLLM turns them into
    Python objects; otherwise, or for a request whose id that capture does not know, from the
    delta outputs' flat logprobs (the same numbers; slower, and vLLM keeps them until the
    request ends).
    """

    def __init__(
        self, llm, n: int, k: int, max_tokens: int, in_flight: int, capture_in_engine=True
    ):
        self.llm, self.engine = llm, llm.llm_engine
        self.n, self.k, self.width = n, k, max_tokens
        rows = in_flight * n
        # np.zeros maps pages lazily: memory grows with what samples write, up to this bound
        self.tok = np.zeros((rows, max_tokens), np.int32)
        self.conf = np.zeros((rows, max_tokens), np.float16)
        self.tlen = np.zeros(rows, np.int64)
        self.clen = np.zeros(rows, np.int64)
        self.free = list(range(in_flight))
        self.blocks: dict[int, _InFlight] = {}
        self.block_of: dict[str, int] = {}  # our request id -> block
        self.row_of: dict[str, int] = {}  # engine-core request id -> row
        self.capture = capture_in_engine
        self.tokens = 0
        self._seq = 0

    # -- buffers

    @staticmethod
    def _put(store: np.ndarray, lens: np.ndarray, rows, values: np.ndarray, counts=None) -> None:
        """Append ``values`` to the rows ``rows`` (one value each, or ``counts[i]`` each)."""
        rows = np.asarray(rows, np.int64)
        if counts is None:
            store[rows, lens[rows]] = values
            lens[rows] += 1
            return
        counts = np.asarray(counts, np.int64)
        rep = np.repeat(rows, counts)
        within = np.arange(len(rep)) - np.repeat(np.cumsum(counts) - counts, counts)
        store[rep, lens[rep] + within] = values
        lens[rows] += counts

    def _capture(self, outputs: list) -> None:
        """Engine-core outputs of one step -> confidences of our samples, in one numpy pass."""
        rows, arrays = [], []
        row_of = self.row_of
        for o in outputs:
            lp = o.new_logprobs
            if lp is None:
                continue
            row = row_of.get(o.request_id)
            if row is None:
                continue
            rows.append(row)
            arrays.append(lp.logprobs)
            o.new_logprobs = None  # vLLM skips its per-token lists for this request
        if not rows:
            return
        lp = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        # as confagg.confidence.token_confidence: column 0 is the sampled token, 1..k the top-k
        conf = -lp[:, 1 : self.k + 1].mean(axis=1)
        counts = None if len(lp) == len(rows) else [len(a) for a in arrays]
        self._put(self.conf, self.clen, rows, conf, counts)

    # -- requests

    def _add(self, problem_id: str, prompt: str, params) -> None:
        request_id = f"confagg-{self._seq}"
        self._seq += 1
        n = params.n
        if n != self.n or params.max_tokens > self.width:
            raise ValueError(
                f"problem {problem_id!r}: n={n}, max_tokens={params.max_tokens} do not fit this "
                f"sampler's buffers (n={self.n}, max_tokens={self.width})"
            )
        try:
            internal = self.engine.add_request(request_id, prompt, params)
        except ValueError as e:  # e.g. a prompt longer than the engine's max_model_len
            raise ValueError(f"problem {problem_id!r}: {e}") from e
        block = heapq.heappop(self.free)
        children = child_request_ids(internal, n) if isinstance(internal, str) else []
        for i, child in enumerate(children):
            self.row_of[child] = block * self.n + i
        self.block_of[request_id] = block
        self.blocks[block] = _InFlight(problem_id, request_id, children, n, [None] * n)

    def _collect(self, block: int) -> Finished:
        p = self.blocks.pop(block)
        lo = block * self.n
        tlen, clen = self.tlen[lo : lo + self.n].copy(), self.clen[lo : lo + self.n].copy()
        if not np.array_equal(tlen, clen):
            raise RuntimeError(
                f"problem {p.problem_id!r}: {clen.tolist()} token confidences for "
                f"{tlen.tolist()} tokens: this vLLM's outputs are not what confagg.engine "
                "expects (checked with vLLM 0.31 and 0.32)"
            )
        done = Finished(
            p.problem_id,
            [self.tok[lo + i, : tlen[i]].copy() for i in range(self.n)],
            [self.conf[lo + i, : tlen[i]].copy() for i in range(self.n)],
            p.finish_reasons,
            p.prompt_token_ids or [],
        )
        self.tlen[lo : lo + self.n] = 0
        self.clen[lo : lo + self.n] = 0
        del self.block_of[p.request_id]
        for child in p.children:
            del self.row_of[child]
        heapq.heappush(self.free, block)
        return done

    def _consume(self, request_outputs: list) -> list[Finished]:
        """One step's delta outputs: new tokens into the buffers, finished problems out."""
        rows, counts, tokens, finished = [], [], [], []
        for ro in request_outputs:
            block = self.block_of.get(ro.request_id)
            if block is None:
                continue
            p = self.blocks[block]
            if p.prompt_token_ids is None:
                p.prompt_token_ids = ro.prompt_token_ids
            for c in ro.outputs:
                row = block * self.n + c.index
                ids = c.token_ids
                if ids:
                    rows.append(row)
                    counts.append(len(ids))
                    tokens += ids
                if c.logprobs:  # not taken in the engine (see the class docstring)
                    conf = token_confidence(c.logprobs.logprobs, self.k)
                    self._put(self.conf, self.clen, [row], conf, [len(conf)])
                if c.finish_reason is not None:
                    finished.append((block, c.index, c.finish_reason))
        if rows:  # every delta of the step in one numpy pass
            counts = None if len(tokens) == len(rows) else counts
            self._put(self.tok, self.tlen, rows, np.asarray(tokens, np.int32), counts)
            self.tokens += len(tokens)
        done = []
        for block, index, reason in finished:
            p = self.blocks[block]
            p.finish_reasons[index] = str(reason)
            p.remaining -= 1
            if p.remaining == 0:
                done.append(self._collect(block))
        return done

    def run(self, jobs: Iterable[tuple[str, str, object]]) -> Iterator[list[Finished]]:
        """Feed ``(problem id, prompt, SamplingParams)`` jobs, in order, keeping up to
        ``in_flight`` problems in the engine; yield the problems each step finished."""
        jobs = iter(jobs)
        more = first = True
        capture = intercept_outputs(self.llm, self._capture) if self.capture else nullcontext()
        try:
            with capture:
                while True:
                    while more and self.free:
                        job = next(jobs, None)
                        if job is None:
                            more = False
                        else:
                            self._add(*job)
                    if not self.blocks:
                        return
                    done = self._consume(self.engine.step())
                    if first:
                        first = False
                        _pause("first-step")
                    if done:
                        yield done
        finally:
            if self.block_of:  # stopped early: leave the engine clean for its next user
                self.engine.abort_request(list(self.block_of))


# --------------------------------------------------------------------------------------------
# Rows


def _decoder(tokenizer):
    """``decode(id lists) -> texts`` as vLLM's detokeniser would write them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda seqs: tokenizer.batch_decode(
            seqs, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
    return lambda seqs: backend.decode_batch(seqs, skip_special_tokens=True)


def _held_back_text(tokenizer, prompt_ids: list[int], ids: list[int]) -> str:
    """vLLM's streaming detokeniser (``tokenizers``' DecodeStream, primed with the prompt)
    never emits a trailing incomplete UTF-8 sequence; decode the same way when a text ends in
    U+FFFD (rare: a sample cut inside a multi-byte character)."""
    from tokenizers.decoders import DecodeStream

    backend = tokenizer.backend_tokenizer
    stream = DecodeStream(ids=list(prompt_ids), skip_special_tokens=True)
    return "".join(s for t in ids if (s := stream.step(backend, t)))


def finished_to_table(done: list[Finished], tokenizer, decode=None) -> pa.Table:
    """SAMPLES rows of finished problems, ``n`` rows each in sample order."""
    decode = decode or _decoder(tokenizer)
    ids, keys = [], []
    for d in done:
        for i, (tokens, reason) in enumerate(zip(d.tokens, d.finish_reasons, strict=True)):
            # a "stop" ends on the stop token, which vLLM leaves out of the text
            ids.append((tokens[:-1] if reason == "stop" and len(tokens) else tokens).tolist())
            keys.append((d, i))
    texts = decode(ids) if ids else []
    for j, text in enumerate(texts):
        if text.endswith("\ufffd") and hasattr(tokenizer, "backend_tokenizer"):
            texts[j] = _held_back_text(tokenizer, keys[j][0].prompt_token_ids, ids[j])
    confs = [c for d in done for c in d.confidence]
    lengths = np.fromiter((len(c) for c in confs), np.int64, len(confs))
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    flat = np.concatenate(confs) if confs else np.zeros(0, np.float16)
    return pa.table(
        {
            "problem_id": [d.problem_id for d, _ in keys],
            "sample_idx": pa.array([i for _, i in keys], pa.int32()),
            "text": texts,
            "answer": [extract_boxed(t) for t in texts],
            "num_tokens": pa.array(lengths, pa.int32()),
            "finish_reason": [d.finish_reasons[i] or "unknown" for d, i in keys],
            "token_confidence": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        },
    ).cast(SAMPLES)


# --------------------------------------------------------------------------------------------
# The stage


def sample_shard(
    problems: list[dict],
    out: str | os.PathLike,
    model: str,
    seed: int,
    settings: SampleSettings,
    log=print,
    engine=None,
    request_params: Callable[[dict], Mapping] | None = None,
    capture_in_engine: bool = True,
) -> None:
    """Generate every problem of ``problems`` (one shard) into ``out``, resuming if needed.

    ``engine``: an already started vLLM engine to use instead of starting one (benchmarks).
    ``request_params``: per-problem ``SamplingParams`` fields over the settings' (benchmarks:
    lengths that differ); ``max_tokens`` may not exceed the settings'.
    """
    out = Path(out)
    parts = Parts(out)
    s = settings.sampling
    fp = fingerprint(problems, model, seed, settings)
    rows = len(problems) * s.n
    if out.exists():
        _check_output(out, rows, fp)
        if parts.dir.exists():
            shutil.rmtree(parts.dir)
            log(f"removed {parts.dir}, left over from the run that completed {out}")
        log(f"{out} is complete ({rows} samples): nothing to do")
        return
    parts.clean_strays(log)
    if parts.merged.exists():
        try:
            complete = _stored_fingerprint(pq.read_schema(parts.merged)) == fp
        except (OSError, pa.ArrowException):
            complete = False  # written atomically: cannot happen short of a damaged disk
        if complete:
            parts.finish()
            log(f"{out}: finished the merge a killed run had completed ({rows} samples)")
            return
        # a complete merge of other settings: that run is over and superseded
        shutil.rmtree(parts.dir)
        log(f"removed {parts.dir}: it held a merged shard of other settings")

    order = {p["id"]: i for i, p in enumerate(problems)}
    where = parts.scan(order, s.n, fp)
    pending = [p for p in problems if p["id"] not in where]
    log(
        f"{len(problems)} problems in shard; {len(where)} already sampled in "
        f"{len(parts.files())} part(s); {len(pending)} to go"
    )

    if pending:
        llm = engine or make_engine(model, derive_seed(seed, len(where)), settings.engine)
        tokenizer = llm.get_tokenizer()
        base = dataclasses.asdict(s)
        # delta outputs every STREAM_INTERVAL tokens: vLLM builds a RequestOutput per sample per
        # output, a per-token cost the stage does not need (confidences come every step anyway)
        common = {"output_kind": _delta(), "detokenize": False, "stream_interval": STREAM_INTERVAL}

        def jobs():
            for p in pending:
                extra = dict(request_params(p)) if request_params else {}
                if extra.get("max_tokens", s.max_tokens) > s.max_tokens:
                    raise ValueError(f"problem {p['id']}: max_tokens above {s.max_tokens}")
                prompt = render(
                    tokenizer,
                    solver_messages(p["problem"], settings.prompt),
                    settings.chat_template_kwargs,
                )
                yield p["id"], prompt, sampling_params(base, **common, **extra)

        sampler = StreamingSampler(
            llm, s.n, s.logprobs, s.max_tokens, settings.problems_in_flight, capture_in_engine
        )
        decode = _decoder(tokenizer)
        t0 = last = time.perf_counter()
        written = 0
        for count, done in enumerate(sampler.run(jobs()), 1):
            table = finished_to_table(done, tokenizer, decode)
            path = parts.write(table, s.n, fp)
            where.update({d.problem_id: (path, rg) for rg, d in enumerate(done)})
            written += len(done)
            _pause(f"part-{count}")
            now = time.perf_counter()
            if now - last >= _PROGRESS_S or written == len(pending):
                last = now
                log(
                    f"{len(where)}/{len(problems)} problems done; {sampler.tokens} tokens in "
                    f"{now - t0:.1f}s ({sampler.tokens / max(now - t0, 1e-9):.0f} tok/s)"
                )

    merged = parts.merge(where, [p["id"] for p in problems], fp)
    parts.finish()
    log(f"wrote {merged} samples to {out}")


def _delta():
    from vllm.sampling_params import RequestOutputKind

    return RequestOutputKind.DELTA


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Sample one shard of a problem set with vLLM.")
    ap.add_argument("--problems", required=True, help="normalised problem JSONL")
    ap.add_argument("--dataset", required=True, help="data set name (part of the seed)")
    ap.add_argument("--shard", type=int, required=True)
    ap.add_argument("--shards", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True, help="run or evaluation seed")
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument(
        "--settings",
        required=True,
        help="JSON: sampling, problems_in_flight, engine, prompt, chat_template_kwargs",
    )
    ap.add_argument("out")
    args = ap.parse_args(argv)
    settings = from_mapping(SampleSettings, json.loads(args.settings))
    problems = shard_of(read_problems(args.problems), args.shard, args.shards)
    seed = derive_seed(args.seed, args.dataset, args.shard)
    try:
        sample_shard(
            problems,
            args.out,
            args.model,
            seed,
            settings,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except PartError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
