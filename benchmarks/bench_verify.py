"""Verification throughput: ``confagg.verifier.verify_many`` against a plain math-verify loop.

Two candidate tables, each graded both ways:

- **AIME-like** (30 problems x 128 samples, integer gold answers, duplication as sampled
  solutions have it: most samples of a problem share a few answers, some write them as LaTeX
  variants, a few have no answer, a few stray closed forms and sums): mostly the fast path and
  the cache; the speed-up target is for this table.
- **MATH-like** (30 problems x 32 samples, gold answers that are fractions, radicals, multiples
  of pi, intervals; predictions that write them another way or get them wrong): most distinct
  pairs need math-verify, so this one measures the worker pool itself.

Per table: verify_many from a cold start (worker processes started and the cache empty inside
the timing), then, best of ``--repeat``, verify_many with the workers running and the cache
emptied, and the baseline: ``math_verify.verify(parse(g), parse(p))`` per sample, g and p
wrapped in ``\\boxed{}`` as the verifier does, a missing answer counted incorrect. The verdicts
must be identical. Besides wall time, the CPU time of this process and its workers (with psutil):
on a shared machine it says more about a method's cost than wall time does.

    .venv/bin/python benchmarks/bench_verify.py [--problems 30 --samples 128 --processes 2]

Target: >= 20x on the AIME-like table, for the warm figure: a process starts its workers once
(about 1.5 s on a 2-core machine: importing sympy and a warm-up check), then a grading job
checks its whole shard and a GRPO run every reward batch with them. The cold figure shows what
that start costs a single table of this size.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import random
import time


def aime_like_table(problems: int, samples: int, seed: int = 0) -> tuple[list[str], list]:
    """(gold, prediction) per sample: a problem's samples mostly share a few answers."""
    rng = random.Random(seed)
    golds, preds = [], []
    for _ in range(problems):
        gold = rng.randint(0, 999)
        wrong = rng.sample([a for a in range(1000) if a != gold], 4)  # popular wrong answers
        accuracy = rng.uniform(0.05, 0.95)
        for _ in range(samples):
            r = rng.random()
            if r < 0.05:
                pred = None  # no \boxed{} (e.g. truncated)
            elif r < 0.05 + 0.9 * accuracy:
                pred = rng.choices(
                    [str(gold), f"{gold:03d}", f"{gold}.0", f"\\text{{{gold}}}", f"x = {gold}"],
                    weights=[80, 12, 3, 3, 2],
                )[0]
            elif r < 0.97:
                w = rng.choices(wrong, weights=[50, 25, 15, 10])[0]
                pred = rng.choices([str(w), f"{w:03d}", f"\\frac{{{w}}}{{7}}"], [86, 12, 2])[0]
            else:  # a stray answer, rarely repeated: mostly an integer, sometimes LaTeX
                k, r = rng.randint(2, 9), rng.randint(2, 7)
                pred = rng.choices(
                    [
                        str(rng.randint(0, 9999)),
                        f"{k}\\sqrt{{{r}}}",  # closed forms: the fast path
                        f"\\frac{{{k}\\pi}}{{{r}}}",
                        f"{k}+\\sqrt{{{r}}}",  # sums: math-verify in the workers
                        f"\\frac{{\\sqrt{{{r}}}-1}}{{{k}}}",
                    ],
                    weights=[80, 5, 5, 5, 5],
                )[0]
            golds.append(str(gold))
            preds.append(pred)
    return golds, preds


def _math_answer(rng: random.Random) -> tuple[list[str], list[str]]:
    """One non-integer gold answer: (ways of writing it, near misses); the first is the gold."""
    a, b = rng.randint(1, 40), rng.choice([2, 3, 4, 5, 7, 8, 9, 11])
    k, r = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7])
    kind = rng.randrange(4)
    if kind == 0:  # a fraction
        while math.gcd(a, b) != 1:
            a += 1
        same = [f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}"]
        same.append(f"\\frac{{{2 * a}}}{{{2 * b}}}")
        if b in (2, 4, 5, 8):
            same.append(f"{a / b:g}")
        return same, [f"\\frac{{{a + 1}}}{{{b}}}", f"\\frac{{{b}}}{{{a}}}", f"{a / b:.2f}"]
    if kind == 1:  # a multiple of a radical
        same = [f"{k}\\sqrt{{{r}}}", f"\\sqrt{{{k * k * r}}}", f"{k} \\sqrt {r}"]
        return same, [f"{k + 1}\\sqrt{{{r}}}", f"\\sqrt{{{k * r}}}", f"{k}+\\sqrt{{{r}}}"]
    if kind == 2:  # a multiple of pi
        same = [f"\\frac{{{k}\\pi}}{{{b}}}", f"{k}\\pi/{b}", f"\\frac{{{k}}}{{{b}}}\\pi"]
        return same, [f"\\frac{{{k + 1}\\pi}}{{{b}}}", f"\\frac{{{k}}}{{{b}}}", f"{k}\\pi"]
    lo, hi = -a, b  # an interval
    same = [f"[{lo}, {hi})", f"[{lo},{hi})", f"\\left[{lo}, {hi}\\right)"]
    return same, [f"[{lo}, {hi}]", f"({lo}, {hi})", f"[{lo + 1}, {hi})"]


def math_like_table(problems: int, samples: int, seed: int = 0) -> tuple[list[str], list]:
    """(gold, prediction) per sample with non-integer golds: most pairs need math-verify."""
    rng = random.Random(seed)
    golds, preds = [], []
    for _ in range(problems):
        same, wrong = _math_answer(rng)
        accuracy = rng.uniform(0.2, 0.8)
        for _ in range(samples):
            r = rng.random()
            if r < 0.05:
                pred = None
            elif r < 0.05 + 0.9 * accuracy:
                pred = rng.choice(same)
            else:
                pred = rng.choice(wrong)
            golds.append(same[0])
            preds.append(pred)
    return golds, preds


def plain_loop(golds: list[str], preds: list) -> list[bool]:
    from math_verify import parse, verify

    def box(s: str) -> str:
        return "\\boxed{" + s + "}"

    return [
        p is not None and verify(parse(box(g)), parse(box(p)))
        for g, p in zip(golds, preds, strict=True)
    ]


def cpu_seconds() -> float:
    """CPU time of this process and its live children (the workers); nan without psutil."""
    try:
        import psutil
    except ImportError:
        return math.nan
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def measure(name: str, golds: list[str], preds: list, processes: int, repeat: int) -> None:
    """Time one table both ways, check the verdicts agree, print the figures."""
    from confagg import verifier as vs
    from confagg import verify as v

    vs.shutdown()  # cold: no workers from an earlier table
    vs.clear_cache()
    t0 = time.perf_counter()
    cold = vs.verify_many(golds, preds, processes=processes)
    t_cold = time.perf_counter() - t0
    t_ours = t_plain = c_ours = c_plain = math.inf
    for _ in range(repeat):  # best of n: the machine may be shared
        vs.clear_cache()  # workers stay up (a grading job starts them once), the cache goes
        t0, c0 = time.perf_counter(), cpu_seconds()
        ours = vs.verify_many(golds, preds, processes=processes)
        t_ours = min(t_ours, time.perf_counter() - t0)
        c_ours = min(c_ours, cpu_seconds() - c0)
        assert ours == cold
        t0, c0 = time.perf_counter(), cpu_seconds()
        plain = plain_loop(golds, preds)
        t_plain = min(t_plain, time.perf_counter() - t0)
        c_plain = min(c_plain, cpu_seconds() - c0)
    pairs = set(zip(golds, preds, strict=True))
    fast = sum(v.fast_verdict(g, p) is not None for g, p in pairs)

    assert [x.correct for x in ours] == plain, f"{name}: verdicts differ from plain math-verify"
    n = len(golds)
    print(
        f"{name}: {n} samples, {len(pairs)} distinct (gold, answer) pairs: {fast} on the fast "
        f"path, {len(pairs) - fast} checked by math-verify in the workers; {sum(plain)} correct"
    )
    print(
        f"  plain math-verify loop : {t_plain:8.2f} s  {n / t_plain:9.0f} samples/s"
        f"  {c_plain:6.2f} CPU s"
    )
    print(
        f"  verify_many, cold     : {t_cold:8.2f} s  {n / t_cold:9.0f} samples/s"
        f"  ({processes} worker processes started inside the timing)"
    )
    print(
        f"  verify_many, warm     : {t_ours:8.2f} s  {n / t_ours:9.0f} samples/s"
        f"  {c_ours:6.2f} CPU s (workers running, cache emptied)"
    )
    speed_up = f"{t_plain / t_ours:.1f}x warm, {t_plain / t_cold:.1f}x cold"
    print(f"  speed-up: {speed_up}; verdicts identical")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=30)
    ap.add_argument("--samples", type=int, default=128, help="per problem, AIME-like table")
    ap.add_argument("--math-samples", type=int, default=32, help="per problem, MATH-like table")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="timings are the best of this many")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    print(f"timings: best of {args.repeat}, except cold (the first call); target >= 20x (AIME)")
    tables = {
        "AIME-like": aime_like_table(args.problems, args.samples),
        "MATH-like": math_like_table(args.problems, args.math_samples),
    }
    for name, (golds, preds) in tables.items():
        measure(name, golds, preds, args.processes, args.repeat)


if __name__ == "__main__":
    main()
