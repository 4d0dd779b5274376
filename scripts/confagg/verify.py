"""Is a model's answer right? The one verifier used by curation, the GRPO reward and evaluation.

A verdict is math-verify's ``verify(parse(gold), parse(pred))`` with both answers wrapped in
``\\boxed{}`` (``pred`` is an extracted final answer such as ``confagg.answers.extract_boxed``
gives, not a whole solution), under a hard time bound per check:

- **Bounded time, in any thread.** math-verify's own timeouts use ``signal.alarm`` (main thread
  only). Here they are off, and every math-verify call runs in a worker *process*
  (``python -c ... confagg.verify._serve``, not multiprocessing, so no re-import of the caller's
  ``__main__`` and no daemon restrictions) that is killed and replaced when a check passes its
  deadline. A worker also has an address-space limit and a CPU-time budget per check, and exits
  when its parent does. A timed-out check is ``status="timeout"``, a crashed one
  ``"unparseable"``: both count as incorrect.
- **Fast path**, in-process, for what needs no algebra and gives math-verify's verdict: no
  answer; an integer gold answer against an integer written plainly or in a common variant
  (``025``, ``25.0``, ``\\text{25}``, ``x = 25``, ``25^\\circ``, ``1{,}000``) or a fraction of
  integers (``\\frac{50}{2}``), compared exactly as math-verify does; identical answers made of
  ordinary math text (balanced braces, no ``$``, more than commands); an integer gold answer
  against a closed form ``q * sqrt(r) * pi`` (``3\\sqrt{6}``, ``\\frac{5\\pi}{4}``), right
  exactly when its value is that integer. tests/test_verify.py checks each rule against
  math-verify itself.
- **Cache and dedup** keyed by (gold, normalised prediction); normalising is ``str.strip``
  only, since math-verify's string fallback compares inner whitespace and ``\\,`` literally.
- **Parallel**: ``verify_many`` spreads the remaining checks over ``processes`` workers.

Never evaluates text as code: math-verify parses LaTeX with a grammar (latex2sympy2), and hands
sympy's ``parse_expr`` only what its plain-expression pattern admits (digits, ``.``, spaces,
``+-*/^()``, times and division signs), which names nothing that could run.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

from confagg.answers import brace_group

STATUSES = ("correct", "incorrect", "no_answer", "timeout", "unparseable")
DEFAULT_TIMEOUT = 5.0  # seconds per check (math-verify's own default per parse/compare)
WORKER_MEMORY_MB = 4096  # address-space limit of a worker process
STARTUP_TIMEOUT = 120.0  # seconds a new worker may take to import math-verify
CACHE_SIZE = 1 << 18  # (gold, prediction) verdicts kept in memory


class Verdict(NamedTuple):
    """Whether a prediction matches the gold answer, and why (one of ``STATUSES``)."""

    correct: bool
    status: str


CORRECT = Verdict(True, "correct")
INCORRECT = Verdict(False, "incorrect")
NO_ANSWER = Verdict(False, "no_answer")
TIMEOUT = Verdict(False, "timeout")
UNPARSEABLE = Verdict(False, "unparseable")


# ---------------------------------------------------------------------------- fast path


_INT = re.compile(r"-?\d{1,50}")
# Ways of writing an integer that math-verify reads as that integer (each checked against it in
# tests/test_verify.py): 025, 25.0, \text{25}, x = 25, 25^\circ, 1,000.
_INT_LIKE = re.compile(
    r"(?P<plain>[+-]?\d{1,50})"
    r"|(?P<zero_fraction>[+-]?\d{1,12})\.0{1,6}"
    r"|\\(?:text|textbf|mathbf|mathrm)\{\s*(?P<wrapped>-?\d{1,50})\s*\}"
    r"|[A-Za-z]\s*=\s*(?P<assigned>-?\d{1,50})"
    r"|(?P<degrees>-?\d{1,50})\^(?:\\circ|\{\\circ\})"
    r"|(?P<thousands>[1-9]\d{0,2}(?:(?:,|\{,\})\d{3}){1,10})"
)
# A fraction of integers (\frac{7}{3}, -\dfrac{50}{2}, 7/3), which math-verify compares exactly.
_FRACTION = re.compile(
    r"(?P<sign>-?)(?:\\[dt]?frac\{(?P<a>-?\d{1,20})\}\{(?P<b>\d{1,20})\}"
    r"|(?P<c>\d{1,20})/(?P<d>\d{1,20}))"
)
# A closed form with an exact value, q * sqrt(r) * pi^e: 3\sqrt{6}, \pi, \frac{5\pi}{4},
# -\dfrac{\sqrt{3}}{2}. Against an integer gold answer it is right exactly when its value is
# that integer: math-verify compares such expressions symbolically (no float tolerance).
_CLOSED_FRAC = re.compile(r"\\[dt]?frac\{(?P<num>.{1,60})\}\{(?P<den>[1-9]\d{0,11})\}")
_CLOSED_TERM = re.compile(r"(?P<n>[1-9]\d{0,11}|0)?(?:\\sqrt\{(?P<r>\d{1,12})\})?(?P<pi>\\pi)?")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_SELF_EVIDENT_MAX = 200  # longer identical strings go to math-verify (which may time out)


def normalise(answer: str) -> str:
    """The form answers are deduplicated and cached under (verdict-preserving: strip only)."""
    return answer.strip()


def _balanced(text: str) -> bool:
    """Braces pair up (escaped ``\\{``/``\\}`` aside) and never close before opening."""
    return brace_group("{" + text + "}", 1) == text


def _self_evident(answer: str) -> bool:
    """Whether math-verify is sure to accept ``answer`` against itself.

    It rejects identical answers it cannot read at all: unbalanced braces, ``$`` (which ends
    its LaTeX match), nested boxes, or nothing but commands and punctuation (``\\text{}``).
    """
    if len(answer) > _SELF_EVIDENT_MAX or "$" in answer or "box" in answer:
        return False
    if not any(ch.isalnum() for ch in _COMMAND.sub("", answer)):
        return False
    return _balanced(answer)


def _value(answer: str) -> Fraction | None:
    """The number an integer-like answer or a fraction of integers stands for, else None."""
    match = _INT_LIKE.fullmatch(answer)
    if match is not None:
        digits = next(v for v in match.groupdict().values() if v is not None)
        return Fraction(int(digits.replace("{,}", "").replace(",", "")))
    match = _FRACTION.fullmatch(answer)
    if match is not None:
        num, den = int(match["a"] or match["c"]), int(match["b"] or match["d"])
        if den:
            return Fraction(-num if match["sign"] else num, den)
    return None


def _closed_form(answer: str) -> tuple[Fraction, bool] | None:
    """(q, irrational) of an answer worth q * sqrt(r) * pi^e (e in 0, 1): q the rational
    coefficient once a square radicand is taken out; irrational when sqrt(r) or pi remains
    (pi is transcendental, sqrt of a non-square irrational). None for any other text."""
    negative = answer.startswith("-")
    body = answer[1:] if negative else answer
    fraction = _CLOSED_FRAC.fullmatch(body)
    num, den = (fraction["num"], int(fraction["den"])) if fraction else (body, 1)
    term = _CLOSED_TERM.fullmatch(num)
    if term is None or not (term["n"] or term["r"] or term["pi"]):
        return None
    q = Fraction(int(term["n"] or 1), den) * (-1 if negative else 1)
    irrational = bool(term["pi"])
    if term["r"] is not None:
        r = int(term["r"])
        root = math.isqrt(r)
        if root * root == r:
            q *= root
        else:
            irrational = True
    return q, irrational and q != 0


def fast_verdict(gold: str, pred: str | None) -> Verdict | None:
    """math-verify's verdict when it is evident without algebra, else None."""
    if pred is None:
        return NO_ANSWER
    g, p = normalise(gold), normalise(pred)
    if not p:
        return NO_ANSWER
    if _INT.fullmatch(g):
        if (value := _value(p)) is not None:
            return CORRECT if int(g) == value else INCORRECT
        if (form := _closed_form(p)) is not None:
            q, irrational = form
            return CORRECT if not irrational and q == int(g) else INCORRECT
    if g == p and _self_evident(p):
        return CORRECT
    return None


# ----------------------------------------------------------------- the worker process


def _boxed(answer: str) -> str:
    return "\\boxed{" + answer + "}"


def _limit_memory(megabytes: int) -> None:
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        limit = megabytes * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _die_with_parent(parent: int, kernel_signal: bool) -> None:
    """Exit when the parent goes, even while a check is stuck in a long computation."""
    if kernel_signal:  # Linux: the kernel kills us when the thread that started us ends
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def watch() -> None:  # elsewhere, and as a backstop: poll for a new parent
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def check(gold: str, pred: str, parsed_golds: dict | None = None) -> Verdict:
    """One math-verify check, without a time bound (runs inside a worker process)."""
    from math_verify import parse, verify
    from sympy import Basic, MatrixBase

    try:
        if parsed_golds is not None and gold in parsed_golds:
            g = parsed_golds[gold]
        else:
            g = parse(_boxed(gold), parsing_timeout=None)
            if parsed_golds is not None:
                if len(parsed_golds) >= 4096:
                    parsed_golds.clear()
                parsed_golds[gold] = g
        p = parse(_boxed(pred), parsing_timeout=None)
        ok = verify(g, p, timeout_seconds=None)
    except (Exception, RecursionError, MemoryError):
        return UNPARSEABLE
    if ok:
        return CORRECT
    if not any(isinstance(x, Basic | MatrixBase) for x in p):
        return UNPARSEABLE  # only math-verify's string fallback, or nothing
    return INCORRECT


_WARM_UP = [("1", "\\frac{1}{2}"), ("x=1", "[1,2)"), ("\\{1,2\\}", "\\sqrt{2}\\pi"), ("2", "2\\%")]


def _cpu_budget(seconds: float) -> None:
    """Let the kernel end this process once it spends ``seconds`` more CPU time (SIGXCPU):
    a check the parent gave up on cannot outlive it, even orphaned in a long C call."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = usage.ru_utime + usage.ru_stime
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = math.ceil(used + seconds)
        if hard == resource.RLIM_INFINITY or soft <= hard:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _serve(parent: int, memory_mb: int, main_thread: bool) -> None:
    """Worker loop: read ``[id, gold, pred, timeout]`` JSON lines, answer
    ``[id, correct, status]``."""
    import logging
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    _die_with_parent(parent, kernel_signal=main_thread)
    _limit_memory(memory_mb)
    logging.disable(logging.WARNING)  # "timeout disabled" notices: we bound time ourselves
    for gold, pred in _WARM_UP:  # first use builds parsers and caches: not a check's time
        check(gold, pred)

    out = os.fdopen(os.dup(1), "wb")  # the protocol's channel; stray prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out.write(b'["ready"]\n')
    out.flush()
    parsed_golds: dict = {}
    for line in sys.stdin.buffer:
        task, gold, pred, timeout = json.loads(line)
        _cpu_budget(2 * timeout + 10)  # the parent kills us at `timeout`; this is a backstop
        verdict = check(gold, pred, parsed_golds)
        out.write(json.dumps([task, verdict.correct, verdict.status]).encode() + b"\n")
        out.flush()


def _readable(fds: list[int], timeout: float) -> set[int]:
    """The descriptors with input (or EOF) within ``timeout`` seconds (poll: fds may be
    above select's 1024)."""
    poll = select.poll()
    for fd in fds:
        poll.register(fd, select.POLLIN)
    return {fd for fd, _ in poll.poll(max(0.0, timeout) * 1000)}


class _Worker:
    """One worker process and its line-buffered pipes."""

    def __init__(self, memory_mb: int) -> None:
        root = str(Path(__file__).resolve().parents[1])
        # the kernel's parent-death signal follows the starting *thread*: only the main
        # thread lives as long as the process
        main_thread = threading.current_thread() is threading.main_thread()
        code = (
            f"import sys; sys.path.insert(0, {root!r}); from confagg.verify import _serve; "
            f"_serve({os.getpid()}, {memory_mb}, {main_thread})"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.started = time.monotonic()
        self.task: tuple[int, float] | None = None  # (task index, deadline)

    def send(self, index: int, gold: str, pred: str, timeout: float) -> None:
        self.proc.stdin.write(json.dumps([index, gold, pred, timeout]).encode() + b"\n")
        self.proc.stdin.flush()
        self.task = (index, time.monotonic() + timeout)

    def read(self) -> list | None:
        """The complete messages now readable; None when the worker has exited."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(line) for line in lines]

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()

    def close(self) -> None:
        """Ask an idle worker to stop (EOF on its input); kill it if it does not."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()


class VerifierPool:
    """Worker processes that run math-verify checks, each under a per-check deadline."""

    def __init__(self, memory_mb: int = WORKER_MEMORY_MB) -> None:
        self.memory_mb = memory_mb
        self.workers: list[_Worker] = []
        self.pid = os.getpid()
        self.lock = threading.Lock()

    def start(self, processes: int = 1) -> None:
        """Start ``processes`` workers now and wait until they are ready (else on first use)."""
        with self.lock:
            while len(self.workers) < processes:
                self.workers.append(_Worker(self.memory_mb))
            for w in self.workers:
                while not w.ready:
                    left = w.started + STARTUP_TIMEOUT - time.monotonic()
                    messages = w.read() if _readable([w.fd], left) else None
                    if messages is None:
                        raise RuntimeError("a math-verify worker did not start")
                    w.ready = ["ready"] in messages

    def _replace(self, i: int) -> None:
        self.workers[i].kill()
        self.workers[i] = _Worker(self.memory_mb)

    def run(
        self, tasks: Sequence[tuple[str, str]], processes: int = 1, timeout: float = 5.0
    ) -> list[Verdict]:
        """Verdicts for (gold, pred) pairs, ``processes`` at a time, ``timeout`` s each."""
        with self.lock:
            return self._run(tasks, max(1, processes), timeout)

    def _run(self, tasks, processes, timeout) -> list[Verdict]:
        results: list[Verdict | None] = [None] * len(tasks)
        if not tasks:
            return []
        while len(self.workers) < min(processes, len(tasks)):
            self.workers.append(_Worker(self.memory_mb))
        workers = range(min(processes, len(tasks)))
        todo = list(range(len(tasks)))[::-1]  # popped from the end: in order
        done = 0
        while done < len(tasks):
            now = time.monotonic()
            for i in workers:
                w = self.workers[i]
                if w.ready and w.task is None and todo:
                    if w.proc.poll() is not None:  # it died while idle: start another
                        self._replace(i)
                        continue
                    index = todo.pop()
                    gold, pred = tasks[index]
                    try:
                        w.send(index, normalise(gold), normalise(pred), timeout)
                    except OSError:  # it died while idle: start over, the task goes back
                        todo.append(index)
                        self._replace(i)
            waiting = [self.workers[i] for i in workers if self.workers[i].proc.poll() is None]
            deadlines = [w.task[1] for w in waiting if w.task]
            deadlines += [w.started + STARTUP_TIMEOUT for w in waiting if not w.ready]
            wait = max(0.0, min(deadlines, default=now + 1.0) - now)
            readable = _readable([self.workers[i].fd for i in workers], wait)
            now = time.monotonic()
            for i in workers:
                w = self.workers[i]
                if w.fd in readable:
                    messages = w.read()
                    if messages is None:  # the worker died (memory limit, a crash)
                        if w.task is not None:
                            results[w.task[0]] = UNPARSEABLE
                            done += 1
                        elif not w.ready:
                            raise RuntimeError(
                                "a math-verify worker exited while starting (is math-verify "
                                "installed for this Python?)"
                            )
                        self._replace(i)
                        continue
                    for msg in messages:
                        if msg == ["ready"]:
                            w.ready = True
                        elif w.task is not None and msg[0] == w.task[0]:
                            results[msg[0]] = Verdict(bool(msg[1]), msg[2])
                            w.task = None
                            done += 1
                if w.task is not None and now >= w.task[1]:
                    results[w.task[0]] = TIMEOUT
                    done += 1
                    self._replace(i)
                elif not w.ready and now >= w.started + STARTUP_TIMEOUT:
                    raise RuntimeError(
                        f"a math-verify worker did not start within {STARTUP_TIMEOUT:.0f} s"
                    )
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if os.getpid() != self.pid:  # a forked child does not own its parent's workers
            return
        for w in self.workers:
            w.close()
        self.workers.clear()


# ------------------------------------------------------------------------ public API

_pool: VerifierPool | None = None
_pool_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str], tuple[Verdict, float]] = OrderedDict()
_cache_lock = threading.Lock()


def _get_pool() -> VerifierPool:
    global _pool  # noqa: PLW0603  (one pool per process, made on first use)
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():  # new, or inherited through fork
            _pool = VerifierPool()
            atexit.register(_pool.close)
        return _pool


def _cached(key: tuple[str, str], timeout: float) -> Verdict | None:
    with _cache_lock:
        hit = _cache.get(key)
        if hit is None:
            return None
        verdict, bound = hit
        if verdict.status == "timeout" and timeout > bound:
            return None  # timed out under a tighter bound than asked for now: try again
        _cache.move_to_end(key)
        return verdict


def _remember(key: tuple[str, str], verdict: Verdict, timeout: float) -> None:
    with _cache_lock:
        _cache[key] = (verdict, timeout)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


def warm_up(processes: int = 1) -> None:
    """Start the math-verify workers now (about a second each), not at the first slow check."""
    _get_pool().start(processes)


def clear_cache() -> None:
    """Forget every cached verdict (tests and benchmarks measure from cold)."""
    with _cache_lock:
        _cache.clear()


def verify_many(
    golds: Sequence[str],
    preds: Sequence[str | None],
    processes: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Verdict]:
    """Verdicts for many (gold, prediction) pairs: each distinct pair is checked once (fast
    path, cache, then ``processes`` math-verify workers, ``timeout`` seconds per check)."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold answers but {len(preds)} predictions")
    keys = [
        (normalise(g), None if p is None else normalise(p))
        for g, p in zip(golds, preds, strict=True)
    ]
    verdicts: dict[tuple, Verdict] = {}
    slow: list[tuple[str, str]] = []
    for key in dict.fromkeys(keys):
        verdict = fast_verdict(*key)
        if verdict is None:
            verdict = _cached(key, timeout)
        if verdict is None:
            slow.append(key)
        else:
            verdicts[key] = verdict
    if slow:
        for key, verdict in zip(slow, _get_pool().run(slow, processes, timeout), strict=True):
            verdicts[key] = verdict
            _remember(key, verdict, timeout)
    return [verdicts[key] for key in keys]


def verify(gold: str, pred: str | None, timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """The verdict for one prediction (an extracted answer, or None when there is none)."""
    return verify_many([gold], [pred], 1, timeout)[0]


def is_correct(gold: str, pred: str | None) -> bool:
    """Whether ``pred`` matches ``gold`` (the GRPO reward: 1.0 if this is True)."""
    return verify(gold, pred).correct
