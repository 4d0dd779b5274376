"""Verification throughput: ``confagg.verify.verify_many`` against a plain math-verify loop.

Both grade the same AIME-like candidate table (30 problems x 128 samples, integer gold answers,
duplication as sampled solutions have it: most samples of a problem share a few answers, some
write them as LaTeX variants, a few have no answer, a few stray closed forms and sums), in one
run: verify_many from a cold start (worker processes started and the cache empty inside the
timing), then, best of ``--repeat``, verify_many with the workers running and the cache
emptied, and the baseline:
``math_verify.verify(parse(g), parse(p))`` per sample, g and p wrapped in ``\\boxed{}`` as the
verifier does, a missing answer counted incorrect. The verdicts must be identical.

    .venv/bin/python benchmarks/bench_verify.py [--problems 30 --samples 128 --processes 2]

Target: >= 20x, for the warm figure: a process starts its workers once (about 1.5 s on a
2-core machine: importing sympy and a warm-up check), then a grading job checks its whole shard
and a GRPO run every reward batch with them. The cold figure shows what that start costs a
single table of this size.
"""

from __future__ import annotations

import argparse
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


def plain_loop(golds: list[str], preds: list) -> list[bool]:
    from math_verify import parse, verify

    def box(s: str) -> str:
        return "\\boxed{" + s + "}"

    return [
        p is not None and verify(parse(box(g)), parse(box(p)))
        for g, p in zip(golds, preds, strict=True)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=30)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="timings are the best of this many")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    golds, preds = aime_like_table(args.problems, args.samples)
    distinct = len(set(zip(golds, preds, strict=True)))

    from confagg import verify as v

    t0 = time.perf_counter()
    cold = v.verify_many(golds, preds, processes=args.processes)
    t_cold = time.perf_counter() - t0
    t_ours = t_plain = math.inf
    for _ in range(args.repeat):  # best of n: the machine may be shared
        v.clear_cache()  # workers stay up (a grading job starts them once), the cache goes
        t0 = time.perf_counter()
        ours = v.verify_many(golds, preds, processes=args.processes)
        t_ours = min(t_ours, time.perf_counter() - t0)
        assert ours == cold
        t0 = time.perf_counter()
        plain = plain_loop(golds, preds)
        t_plain = min(t_plain, time.perf_counter() - t0)
    fast = sum(v.fast_verdict(g, p) is not None for g, p in set(zip(golds, preds, strict=True)))

    assert [x.correct for x in ours] == plain, "verdicts differ from plain math-verify"
    n = len(golds)
    print(
        f"{n} samples, {distinct} distinct (gold, answer) pairs: {fast} on the fast path, "
        f"{distinct - fast} checked by math-verify in the workers; {sum(plain)} correct"
    )
    print(f"timings: best of {args.repeat}, except cold (the first call)")
    print(f"plain math-verify loop : {t_plain:8.2f} s  {n / t_plain:9.0f} samples/s")
    print(
        f"verify_many, cold     : {t_cold:8.2f} s  {n / t_cold:9.0f} samples/s"
        f"  ({args.processes} worker processes started inside the timing)"
    )
    print(
        f"verify_many, warm     : {t_ours:8.2f} s  {n / t_ours:9.0f} samples/s"
        "  (workers running, cache emptied)"
    )
    print(
        f"speed-up: {t_plain / t_ours:.1f}x warm, {t_plain / t_cold:.1f}x cold "
        "(target >= 20x); verdicts identical"
    )


if __name__ == "__main__":
    main()
