"""vLLM's streaming loop for many samples per prompt, with per-token confidence (the sample
stage's engine loop; ``confagg.engine`` starts the engine).

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
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from confagg.answers import THINK_END, extract_boxed
from confagg.confidence import token_confidence
from confagg.engine import child_request_ids, intercept_outputs
from confagg.tables import SAMPLES

STREAM_INTERVAL = 16


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

    def run(
        self,
        jobs: Iterable[tuple[str, str, object]],
        after_first_step: Callable[[], None] = lambda: None,
    ) -> Iterator[list[Finished]]:
        """Feed ``(problem id, prompt, SamplingParams)`` jobs, in order, keeping up to
        ``in_flight`` problems in the engine; yield the problems each step finished
        (``after_first_step``: called once the engine has run a step, e.g. a kill test's
        pause)."""
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
                        after_first_step()
                    if done:
                        yield done
        finally:
            if self.block_of:  # stopped early: leave the engine clean for its next user
                self.engine.abort_request(list(self.block_of))


# --------------------------------------------------------------------------------------------
# Rows


def decoder(tokenizer):
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
    decode = decode or decoder(tokenizer)
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
            # the sampler's first reading; the grader reads again by the config
            "answer": [extract_boxed(t, THINK_END) for t in texts],
            "num_tokens": pa.array(lengths, pa.int32()),
            "finish_reason": [d.finish_reasons[i] or "unknown" for d, i in keys],
            "token_confidence": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        },
    ).cast(SAMPLES)


def delta_output_kind():
    from vllm.sampling_params import RequestOutputKind

    return RequestOutputKind.DELTA
