"""The verifier as a service: ``confagg.verify``'s rules under a hard time bound per check,
in worker processes, with a cache (grading, curation, the GRPO reward and evaluation call it).

- **Bounded CPU time, in any thread.** math-verify's own timeouts use ``signal.alarm`` (wall
  time, main thread only). Here they are off, and every math-verify call runs in the main
  thread of a worker process of a ``pebble.ProcessPool`` (started with spawn: the caller may
  hold threads or a GPU). A check gets ``timeout`` seconds of *CPU* time (``ITIMER_PROF``
  raises out of it; ``RLIMIT_CPU`` ends a worker stuck inside one C call), so a busy machine
  slows a check down without changing its verdict; wall time is only an outer bound
  (``WALL_FACTOR`` x the budget + ``WALL_SLACK``), past which pebble kills and replaces the
  worker. Checks that time out are run once more at the end, one at a time. A worker has an
  address-space limit and ends when its parent does (its task pipe closes, or the CPU limit
  ends a check in progress).
- **Cache and dedup** keyed by (gold, normalised prediction); normalising is ``str.strip``
  only, since math-verify's string fallback compares inner whitespace and ``\\,`` literally.
- **Parallel**: ``verify_many`` spreads the remaining checks over ``processes`` workers.
- **Whole texts** (``read_and_verify``): the one place a model's text becomes an answer and a
  verdict, by the configured reading (``confagg.answers.Reading``): ``boxed`` answers are read
  here (string scanning) and verified by ``verify_many``; ``math_verify`` answers are read by
  math-verify's own extraction in the workers, under the same CPU-time bound as a check (the
  answer and its verdict in one bounded call: ``confagg.verify.check_text``).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

from pebble import ProcessExpired, ProcessPool

from confagg.answers import Reading, final_answer
from confagg.verify import (
    NO_ANSWER,
    TIMEOUT,
    UNPARSEABLE,
    Verdict,
    check,
    check_text,
    fast_verdict,
    normalise,
)

DEFAULT_TIMEOUT = 5.0  # CPU seconds per check (math-verify's own default, in wall seconds)
CPU_GRACE = 1.0  # CPU seconds past the budget before the kernel ends a worker stuck in C code
# Wall-time bound per check, for what CPU time cannot see (a stopped or swapping worker): 10 x
# its CPU budget + 30 s, far past what a busy machine adds.
WALL_FACTOR, WALL_SLACK = 10.0, 30.0
WORKER_MEMORY_MB = 4096  # address-space limit of a worker process
STARTUP_TIMEOUT = 120.0  # seconds a new worker may take to import math-verify
CACHE_SIZE = 1 << 18  # (gold, prediction) verdicts kept in memory


# ----------------------------------------------------------------- the worker process
# Everything down to the public API runs inside a pool worker (the main thread of a process of
# its own), where signals work: the CPU budget below needs them, as math-verify's alarm would.


class _OutOfTime(BaseException):
    """A check spent its CPU budget. A BaseException, so that neither math-verify's handlers
    (``except Exception``, its own ``TimeoutException``) nor :func:`check` swallow it."""


_armed = False  # whether SIGPROF ends the running check
_parsed_golds: dict = {}  # gold answer -> math-verify's parse of it, per worker


_WARM_UP = [("1", "\\frac{1}{2}"), ("x=1", "[1,2)"), ("\\{1,2\\}", "\\sqrt{2}\\pi"), ("2", "2\\%")]


def _on_sigprof(signum: int, frame: object) -> None:
    if _armed:
        raise _OutOfTime


def _cpu_limit(seconds: float | None) -> None:
    """RLIMIT_CPU: the kernel ends this process (SIGXCPU) once it has spent ``seconds`` more CPU
    time (None: no limit). The backstop for a check stuck inside one long C call, where no
    Python signal handler runs; it also ends a busy worker whose parent has gone."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = hard
        if seconds is not None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
            if hard != resource.RLIM_INFINITY:
                soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _start_worker(memory_mb: int) -> None:
    """Pool initializer: memory limit, no core files, the CPU-budget signal, a warm-up."""
    import logging

    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    logging.disable(logging.WARNING)  # "timeout disabled" notices: we bound time ourselves
    signal.signal(signal.SIGPROF, _on_sigprof)
    for gold, pred in _WARM_UP:  # first use builds parsers and caches: not a check's time
        check(gold, pred)


class TextVerdict(NamedTuple):
    """A whole text's answer (None: none found) and its verdict."""

    answer: str | None
    verdict: Verdict


def _bounded(call: Callable[[], Verdict], seconds: float) -> Verdict:
    """``call()``, ended after ``seconds`` of this process's CPU time. ITIMER_PROF counts CPU
    time, not wall time: a busy machine makes a check slower but does not change its verdict."""
    global _armed  # noqa: PLW0603  (read by the signal handler)
    try:
        _cpu_limit(seconds + CPU_GRACE)
        _armed = True
        signal.setitimer(signal.ITIMER_PROF, seconds, 0.05)  # re-fires if something swallows it
        try:
            return call()
        finally:
            _armed = False
            signal.setitimer(signal.ITIMER_PROF, 0)
            _cpu_limit(None)
    except _OutOfTime:
        return TIMEOUT


def _bounded_check(gold: str, pred: str, seconds: float) -> Verdict:
    """One check of an extracted answer, within ``seconds`` of CPU time."""
    return _bounded(lambda: check(gold, pred, _parsed_golds), seconds)


def _bounded_text_check(gold: str, text: str, seconds: float) -> TextVerdict:
    """math-verify's reading of a whole text and its verdict, within ``seconds`` of CPU time
    for both; an answer found before the time ran out is kept."""
    found: list[str] = []
    verdict = _bounded(lambda: check_text(gold, text, _parsed_golds, found.append), seconds)
    return TextVerdict(found[0] if found else None, verdict)


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


# ----------------------------------------------------------------------- the worker pool

_pool: ProcessPool | None = None
_pool_size = 0
_pool_pid = 0
_pool_lock = threading.Lock()


def _retire(pool: ProcessPool) -> None:
    """Let ``pool`` finish what it was given, then stop its workers (in the background)."""
    pool.close()
    threading.Thread(target=pool.join, daemon=True).start()


def _get_pool(processes: int = 1) -> ProcessPool:
    """This process's pool, with at least ``processes`` workers (it keeps the largest number
    asked for; each call still runs at most its own ``processes`` checks at once)."""
    global _pool, _pool_size, _pool_pid  # noqa: PLW0603  (one pool per process)
    with _pool_lock:
        if _pool is not None and _pool_pid != os.getpid():
            _pool = None  # inherited through fork: its workers belong to the parent
        if _pool is not None and (not _pool.active or _pool_size < processes):
            _retire(_pool)  # broken (a worker died while the pool was idle), or too small
            _pool = None
        if _pool is None:
            _refuse_unguarded_main()
            _pool_size, _pool_pid = max(processes, _pool_size, 1), os.getpid()
            _pool = ProcessPool(
                _pool_size,
                initializer=_start_worker,
                initargs=(WORKER_MEMORY_MB,),
                # spawn, not fork: the caller may hold threads, a CUDA context, a vLLM engine
                context=multiprocessing.get_context("spawn"),
            )
        return _pool


def _refuse_unguarded_main() -> None:
    """Stop, with the fix, when the pool is started from a main script's top-level code that
    no ``if __name__ == "__main__":`` guards: spawn runs the script again in every worker, which
    starts a pool of its own there and dies (pebble: "All workers expired")."""
    import ast
    import linecache

    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    frame = sys._getframe(1)
    while frame is not None and not (
        frame.f_code.co_name == "<module>" and frame.f_globals is getattr(main, "__dict__", None)
    ):
        frame = frame.f_back
    if frame is None or not script:
        return  # not called from the main script's top level (a function, an import, -c, REPL)
    try:  # the script's source, as a traceback reads it
        tree = ast.parse("".join(linecache.getlines(script)))
    except (SyntaxError, ValueError):
        return
    line = frame.f_lineno
    for node in ast.walk(tree):
        guard = isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        if guard and node.body[0].lineno <= line <= node.body[-1].end_lineno:
            return
    raise RuntimeError(
        f"{script}, line {line}: checks answers at the top level of the script, outside "
        '`if __name__ == "__main__":`. The verifier\'s workers start with spawn, which runs the '
        'script again in each of them, so they would fail at once ("All workers expired"). '
        'Move the script\'s top-level code under `if __name__ == "__main__":` (or into a '
        "function called from there)."
    )


def _outcome(future: Future) -> Verdict | None:
    """A finished check's verdict; None when the pool broke before it ran (run it again)."""
    try:
        return future.result()
    except TimeoutError:  # past the wall-time bound: pebble killed and replaced the worker
        return TIMEOUT
    except ProcessExpired as died:  # SIGXCPU: out of CPU time inside a C call; else a crash
        return TIMEOUT if died.exitcode == -signal.SIGXCPU else UNPARSEABLE
    except BrokenProcessPool:
        return None


def _run(
    pairs: Sequence[tuple[str, str]], processes: int, timeout: float, task=_bounded_check
) -> list:
    """Verdicts for (gold, pred) pairs, at most ``processes`` checks at once, each with a CPU
    budget of ``timeout`` s and a wall-time bound of ``WALL_FACTOR`` times that (plus slack).
    ``task``: :func:`_bounded_check` (a pred is an extracted answer) or
    :func:`_bounded_text_check` (a whole text; results are then :class:`TextVerdict`)."""
    verdicts: list[Verdict | None] = [None] * len(pairs)
    todo = list(range(len(pairs)))[::-1]  # popped from the end: in order
    running: dict[Future, int] = {}
    broken = 0
    wall = WALL_FACTOR * timeout + WALL_SLACK
    while todo or running:
        pool = _get_pool(min(processes, len(pairs)))
        while todo and len(running) < processes:
            try:
                future = pool.schedule(task, (*pairs[todo[-1]], timeout), timeout=wall)
            except RuntimeError:  # the pool broke just now: the next round takes a new one
                break
            running[future] = todo.pop()
        done, _ = wait(running, timeout=wall + STARTUP_TIMEOUT, return_when=FIRST_COMPLETED)
        if running and not done and not any(f.running() for f in running):
            raise RuntimeError(
                f"no math-verify worker took a check in {wall + STARTUP_TIMEOUT:.0f} s"
            )
        for future in done:
            index = running.pop(future)
            verdicts[index] = _outcome(future)
            if task is _bounded_text_check and isinstance(verdicts[index], Verdict):
                verdicts[index] = TextVerdict(None, verdicts[index])  # the worker was lost
            if verdicts[index] is None:
                todo.append(index)
                broken += 1
            else:
                broken = 0
        if broken > 3 * processes:
            raise RuntimeError(
                "math-verify worker processes keep exiting before they check anything (see "
                f"their error above: is math-verify installed for {sys.executable}? does the "
                "calling script guard its top level with `if __name__ == '__main__':`, which "
                "spawned processes need?)"
            )
    return verdicts  # type: ignore[return-value]


# ------------------------------------------------------------------------ public API

_cache: OrderedDict[tuple[str, str], tuple[Verdict, float]] = OrderedDict()
_cache_lock = threading.Lock()


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
    """Start ``processes`` math-verify workers now (about a second each) and wait for them."""
    pool, seen = _get_pool(processes), set()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while len(seen) < processes and time.monotonic() < deadline:
        # each worker sleeps a little, so that a ready one cannot take every task
        futures = [pool.schedule(_pid_after, (0.05,)) for _ in range(processes)]
        seen.update(f.result() for f in futures)


def shutdown() -> None:
    """Stop this process's workers (benchmarks measure from a cold start; they stop at exit
    anyway)."""
    global _pool, _pool_size
    with _pool_lock:
        pool, _pool, _pool_size = _pool, None, 0
    if pool is not None and _pool_pid == os.getpid():
        pool.close()
        pool.join()


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
    path, cache, then ``processes`` math-verify workers, ``timeout`` CPU seconds per check).

    With ``processes`` > 1, the checks that time out are run once more at the end, one at a
    time, so that a verdict does not depend on how many checks ran beside it."""
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
        verdicts.update(zip(slow, _run(slow, max(1, processes), timeout), strict=True))
        again = [key for key in slow if verdicts[key] == TIMEOUT]
        if again and processes > 1:
            verdicts.update(zip(again, _run(again, 1, timeout), strict=True))
        for key in slow:
            _remember(key, verdicts[key], timeout)
    return [verdicts[key] for key in keys]


def verify(gold: str, pred: str | None, timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """The verdict for one prediction (an extracted answer, or None when there is none)."""
    return verify_many([gold], [pred], 1, timeout)[0]


def is_correct(gold: str, pred: str | None) -> bool:
    """Whether ``pred`` matches ``gold`` (the GRPO reward: 1.0 if this is True)."""
    return verify(gold, pred).correct


def verify_texts(
    golds: Sequence[str], texts: Sequence[str | None], processes: int, timeout: float
) -> list[TextVerdict]:
    """math-verify's reading and verdict of each text (``confagg.verify.check_text``; None: no
    text to read, no answer) in ``processes`` workers, ``timeout`` CPU seconds each. Identical
    (gold, text) pairs are checked once; with ``processes`` > 1 the checks that time out run
    once more at the end, one at a time, as in :func:`verify_many`."""
    if len(golds) != len(texts):
        raise ValueError(f"{len(golds)} gold answers but {len(texts)} texts")
    pairs = [(normalise(g), t) for g, t in zip(golds, texts, strict=True) if t is not None]
    todo = list(dict.fromkeys(pairs))
    results = dict(
        zip(todo, _run(todo, max(1, processes), timeout, _bounded_text_check), strict=True)
    )
    again = [key for key in todo if results[key].verdict == TIMEOUT]
    if again and processes > 1:
        results.update(zip(again, _run(again, 1, timeout, _bounded_text_check), strict=True))
    return [
        TextVerdict(None, NO_ANSWER) if t is None else results[(normalise(g), t)]
        for g, t in zip(golds, texts, strict=True)
    ]


def read_and_verify(
    golds: Sequence[str],
    texts: Sequence[str],
    reading: Reading,
    processes: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[list[str | None], list[Verdict]]:
    """(answers, verdicts) of whole model texts by ``reading`` (``grading.extraction``,
    ``think_end``, ``require_think_end``): the one place a text becomes an answer and a verdict
    (grading, the aggregators' outputs, the GRPO reward). ``boxed``: the last ``\\boxed{}``
    after the marker, verified by :func:`verify_many`. ``math_verify``: math-verify's own
    extraction of the part after the marker and its verdict, in the workers (bounded time)."""
    if reading.extraction == "boxed":
        answers = [final_answer(t, reading) for t in texts]
        return answers, verify_many(golds, answers, processes, timeout)
    results = verify_texts(golds, [reading.answer_part(t) for t in texts], processes, timeout)
    return [r.answer for r in results], [r.verdict for r in results]


def answer_equality(processes: int = 1, timeout: float = DEFAULT_TIMEOUT) -> Callable:
    """``equal(golds, preds) -> [bool]`` for ``confagg.grouping.group_answers``: whether the
    verifier finds each prediction equal to its gold (here: the group's representative)."""

    def equal(golds: Sequence[str], preds: Sequence[str]) -> list[bool]:
        return [v.correct for v in verify_many(golds, preds, processes, timeout)]

    return equal
