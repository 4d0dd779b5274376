"""The verifier: math-verify's verdicts, a fast path that agrees with them, bounded time on
hostile answers, and the grading CLI."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from confagg import verifier as vs
from confagg import verify as v
from confagg.problems import write_problems
from confagg.tables import GRADES, SAMPLES, read_table, write_table
from conftest import SHARED_DATA

# the grade stage's --settings
GRADING = json.dumps(
    {
        "timeout": 5.0,
        "reading": {"extraction": "boxed", "think_end": "</think>", "require_think_end": False},
    }
)

# (gold, prediction, verdict). The verdict is what a grader should say, and what plain
# math-verify says: the last block lists math-verify's known misses, kept as it decides them.
PAIRS = [
    # plain integers, leading zeros, signs (AIME)
    ("25", "25", True),
    ("25", "025", True),
    ("7", "007", True),
    ("0", "000", True),
    ("0", "-0", True),
    ("25", "26", False),
    ("25", "250", False),
    ("-5", "-5", True),
    ("-5", "5", False),
    ("5", "-5", False),
    ("123456789012345678901234567890", "123456789012345678901234567890", True),
    ("123456789012345678901234567890", "123456789012345678901234567891", False),
    ("25", "25.0", True),
    ("25", "24.99", False),
    ("25", " 25 ", True),
    ("1000", "1,000", True),
    ("1000000", "1{,}000{,}000", True),
    ("25", "\\mathbf{25}", True),
    ("25", "\\boxed{25}", True),
    ("25", "x = 25", True),
    ("25", "\\frac{50}{2}", True),
    ("25", "\\frac{51}{2}", False),
    # fractions and decimals, \frac / \dfrac / \tfrac
    ("\\frac{1}{2}", "0.5", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
    ("\\frac{1}{2}", "\\tfrac12", True),
    ("\\frac{1}{2}", "1/2", True),
    ("\\frac{1}{2}", "\\frac{2}{4}", True),
    ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ("\\frac{1}{3}", "0.3333333", True),
    ("\\frac{1}{3}", "0.333", False),
    ("\\frac{3}{4}", "0.75", True),
    ("\\frac{3}{4}", "0.74", False),
    ("\\frac{7}{2}", "3\\frac{1}{2}", True),
    ("-\\frac{1}{2}", "\\frac{-1}{2}", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("-\\frac{1}{2}", "\\frac{1}{2}", False),
    # LaTeX spacing and delimiters
    ("\\frac{1}{2}", "\\frac {1} {2}", True),
    ("\\sqrt{2}", "\\sqrt 2", True),
    ("2\\pi", "2 \\pi", True),
    ("\\left( 1, 2 \\right)", "(1,2)", True),
    ("\\frac{\\pi}{2}", "\\pi/2", True),
    # radicals and constants
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
    ("\\sqrt{2}", "1.41421356", True),
    ("\\sqrt{2}", "1.414", False),
    ("\\sqrt{3}", "\\sqrt{2}", False),
    ("\\pi", "3.14159265", True),
    ("\\pi", "3.14", False),
    # intervals
    ("[1,2)", "[1,2)", True),
    ("[1,2)", "[1,2]", False),
    ("(1,2)", "(1, 2)", True),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(-\\infty, 3]", "(-\\infty,3)", False),
    # sets and lists
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("1,2,3", "3,2,1", True),
    ("1,2,3", "1,2", False),
    ("(1,2)", "(2,1)", False),
    ("\\{-1, 1\\}", "\\pm 1", True),
    # units, degrees, \text{}
    ("5 \\text{ cm}", "5", True),
    ("5", "5\\text{ cm}", True),
    ("30", "30^\\circ", True),
    ("10^\\circ", "10", True),
    ("\\text{(A)}", "A", True),
    ("\\text{B}", "\\text{B}", True),
    ("\\text{B}", "\\text{C}", False),
    ("\\$18.90", "18.90", True),
    ("18.9", "\\$18.90", True),
    # percentages
    ("25\\%", "25", True),
    ("25", "25\\%", True),
    ("25\\%", "0.25", True),
    ("25\\%", "0.35", False),
    # algebra
    ("x^2+1", "1+x^2", True),
    ("x^2+1", "x^2-1", False),
    ("x=3", "3", True),
    ("y=2x+1", "2x+1", True),
    ("2+3i", "3i+2", True),
    ("2+3i", "2-3i", False),
    ("\\infty", "\\infty", True),
    ("\\emptyset", "\\emptyset", True),
    # math-verify's misses, which the verifier keeps (it gives math-verify's verdict)
    ("1000", "1\\,000", False),  # the thin space reads as a product
    ("\\emptyset", "\\varnothing", False),
    ("i", "\\sqrt{-1}", False),
]

# Answers math-verify cannot compare even with themselves, and other odd strings.
ODD = ["{", "}", "}{", "\\", "$", "$$", "%", "\\{", "\\}", "a}b{", "\\boxed{", "\\frac{", "{}"]
ODD += ["()", "[", "^", "&", "#", "\\text{}", "\\text{", "\\,", "0/0", "\\frac{1}{0}", "nan"]
ODD += ["\\infty-\\infty", "--5", "1e10", "x/0", "\\text{ }", "\\mathrm{}", "$5$", "a" * 300]

HOSTILE = {
    "nested exponents": "9^{9^{9^{9^{9^{9}}}}}",
    "huge power": "10^{10^{10}}",
    "factorial": "1000000!",
    "deep braces": "{" * 5000 + "1" + "}" * 5000,
    "100 kB sum": "+".join(["1"] * 50000),
}


# Right, and takes about 2 s of CPU time in a fresh worker here (4.45 s on the machine of issue 13).
SLOW = [
    ("\\sqrt{\\pi}/2", "\\int_0^\\infty e^{-x^2} dx"),
    ("\\frac{\\sqrt{\\pi}}{2}", "\\int_{0}^{\\infty} e^{-x^{2}} \\, dx"),
]


def plain(gold: str, pred: str) -> bool:
    """Plain math-verify (its own signal-based timeouts; pytest runs tests in the main thread)."""
    from math_verify import parse
    from math_verify import verify as mv_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return mv_verify(parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{pred}}}"))


def test_at_least_sixty_pairs_of_each_kind():
    assert len(PAIRS) >= 60
    assert sum(e for *_, e in PAIRS) >= 20 and sum(not e for *_, e in PAIRS) >= 20


@pytest.mark.parametrize("gold, pred, expected", PAIRS)
def test_verdicts_on_equivalence_pairs(gold, pred, expected):
    assert plain(gold, pred) is expected  # the pair list itself is math-verify's verdict
    fast = v.fast_verdict(gold, pred)
    assert fast is None or fast.correct is expected
    verdict = vs.verify(gold, pred)
    assert verdict.correct is expected
    assert verdict.status == ("correct" if expected else "incorrect")


def test_fast_path_takes_the_common_cases():
    assert v.fast_verdict("25", "025") == v.CORRECT
    assert v.fast_verdict("25", "26") == v.INCORRECT
    assert v.fast_verdict("25", "\\text{25}") == v.CORRECT
    assert v.fast_verdict("25", "\\frac{7}{3}") == v.INCORRECT
    assert v.fast_verdict("\\frac{1}{2}", "\\frac{1}{2}") == v.CORRECT
    assert v.fast_verdict("25", None) == v.NO_ANSWER
    assert v.fast_verdict("25", "  ") == v.NO_ANSWER
    assert v.fast_verdict("\\frac{1}{2}", "0.5") is None  # algebra: math-verify decides


def _integer_forms(n: int, rng: random.Random) -> list[str]:
    s, letter = str(n), rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    forms = [s, f"{abs(n):05d}" if n >= 0 else s, s + ".0", s + ".000", f"\\text{{{s}}}"]
    forms += [f"\\textbf{{{s}}}", f"\\mathrm{{ {s} }}", f"{letter} = {s}", f"{letter}={s}"]
    forms += [f"{s}^\\circ", f"{s}^{{\\circ}}"]
    if n >= 0:
        forms += ["+" + s, f"{n:,}", f"{n:,}".replace(",", "{,}")]
    return forms


def test_integer_fast_path_agrees_with_math_verify():
    rng = random.Random(0)
    checked = 0
    for _ in range(12):
        digits = rng.choice([1, 2, 3, 3, 4, 7, 13, 30])
        g = rng.randint(0, 10**digits) * rng.choice([1, 1, 1, -1])
        gold = rng.choice([str(g), f"{g:04d}" if g >= 0 else str(g)])
        for n in (g, g + 1, g * 10, -g):
            for form in _integer_forms(n, rng):
                fast = v.fast_verdict(gold, form)
                if fast is None:  # e.g. 25.0 with more than 12 digits: math-verify decides
                    assert len(str(abs(n))) > 12, form
                    continue
                assert fast.correct == (n == g) == plain(gold, form), (gold, form)
                checked += 1
    assert checked > 400


def test_fraction_fast_path_agrees_with_math_verify():
    rng = random.Random(1)
    for _ in range(40):
        g = rng.randint(-50, 1000)
        b = rng.choice([1, 2, 7, 10, 10**9, rng.randint(1, 10**6)])
        a = rng.choice([g * b, g * b + 1, -g * b, rng.randint(0, 10**6)])
        for form in (
            f"\\frac{{{a}}}{{{b}}}",
            f"\\dfrac{{{a}}}{{{b}}}",
            f"-\\frac{{{abs(a)}}}{{{b}}}",
        ):
            fast = v.fast_verdict(str(g), form)
            assert fast is not None and fast.correct == plain(str(g), form), (g, form)
    assert v.fast_verdict("5", "\\frac{5}{0}") is None  # zoo: math-verify decides


def _closed_forms(rng: random.Random, count: int) -> list[tuple[str, float]]:
    """Random q * sqrt(r) * pi forms (integer-valued ones included) and their float values."""
    forms = []
    while len(forms) < count:
        n = rng.choice([None, 0, 1, rng.randint(2, 12), rng.randint(10, 10**6)])
        r = rng.choice([None, 0, 1, 4, 9, 144, 2, 3, 8, 12, rng.randint(2, 10**4)])
        pi = rng.random() < 0.35
        if n is None and r is None and not pi:
            continue
        num = ("" if n is None else str(n)) + ("" if r is None else f"\\sqrt{{{r}}}")
        num += "\\pi" if pi else ""
        value = (1 if n is None else n) * math.sqrt(1 if r is None else r)
        value *= math.pi if pi else 1
        den = rng.choice([None, 1, 2, 3, 7, 12])
        if den is not None:
            num, value = rng.choice(["\\frac", "\\dfrac"]) + f"{{{num}}}{{{den}}}", value / den
        negative = rng.random() < 0.2
        forms.append(("-" + num if negative else num, -value if negative else value))
    return forms


def test_closed_form_fast_path_agrees_with_math_verify():
    checked = correct = 0
    for form, value in _closed_forms(random.Random(3), 70):
        for gold in {math.floor(value), math.ceil(value), 16}:
            fast = v.fast_verdict(str(gold), form)
            assert fast is not None, form
            assert fast.correct == plain(str(gold), form), (gold, form)
            checked += 1
            correct += fast.correct
    assert checked > 150 and correct > 10  # both verdicts exercised
    for other in ("\\pi\\sqrt{2}", "2 \\sqrt{3}", "\\sqrt[3]{8}", "\\frac{\\pi}{0}", "02\\pi"):
        assert v.fast_verdict("2", other) is None  # not in the form: math-verify decides


def test_identical_answers_take_the_fast_path_only_where_math_verify_agrees():
    answers = [g for g, _, _ in PAIRS] + [p for _, p, _ in PAIRS] + ODD
    if SHARED_DATA.is_dir():  # real gold answers: MATH, AIME, GSM8K
        pool = []
        for path in sorted((SHARED_DATA / "train").glob("*.jsonl")):
            with open(path, encoding="utf-8") as lines:  # not splitlines(): \u2028 in text
                pool += [json.loads(line)["answer"] for line in lines if line.strip()]
        answers += random.Random(2).sample(sorted(set(pool)), 150)
    fast = 0
    for answer in answers:
        verdict = v.fast_verdict(answer, answer)
        if verdict is not None:
            fast += 1
            assert verdict.correct == plain(answer, answer), answer
    assert fast > len(answers) // 2
    # math-verify rejects these against themselves; the fast path must leave them to it
    for odd in ("}", "}{", "$", "$$", "\\boxed{", "\\text{}"):
        assert not plain(odd, odd)
        assert v.fast_verdict(odd, odd) is None
        assert not vs.verify(odd, odd).correct


def test_surrounding_whitespace_never_changes_math_verify_verdicts():
    for gold, pred, expected in PAIRS[::3]:
        for padded in (f" {pred}", f"{pred} \n", f"\t{pred} "):
            assert plain(gold, padded) is expected, (gold, padded)


def test_no_answer_and_unparseable_statuses():
    assert vs.verify("25", None) == (False, "no_answer")
    assert vs.verify("25", "") == (False, "no_answer")
    assert vs.verify("25", "\\text{}") == (False, "unparseable")
    assert vs.verify("25", "}{") == (False, "unparseable")
    assert vs.is_correct("\\frac12", "0.5") and not vs.is_correct("\\frac12", None)


def test_hostile_answers_are_cut_at_the_bound():
    golds = ["25"] * len(HOSTILE) + [g for g, _, _ in PAIRS[:20]]
    preds = list(HOSTILE.values()) + [p for _, p, _ in PAIRS[:20]]
    vs.clear_cache()
    started = time.monotonic()
    verdicts = vs.verify_many(golds, preds, processes=2, timeout=1.0)
    elapsed = time.monotonic() - started
    for name, verdict in zip(HOSTILE, verdicts, strict=False):
        assert verdict.status in ("timeout", "unparseable") and not verdict.correct, name
    assert verdicts[0].status == "timeout"  # nested exponents: math-verify runs for minutes
    for verdict, (_, _, expected) in zip(verdicts[len(HOSTILE) :], PAIRS[:20], strict=True):
        assert verdict.correct is expected
    # each hostile check stops at its 1 s deadline (plus restarting its worker), far short of
    # the minutes plain math-verify spends on them
    assert elapsed < len(HOSTILE) * (1.0 + vs.STARTUP_TIMEOUT)


def test_one_hostile_answer_from_a_thread_is_bounded():
    # math-verify's own timeout (signal.alarm) refuses to work outside the main thread
    with ThreadPoolExecutor(1) as pool:
        verdict = pool.submit(vs.verify, "1", HOSTILE["nested exponents"], 0.5).result()
    assert verdict == (False, "timeout")


def test_verify_many_matches_verify_in_threads_and_processes():
    rng = random.Random(3)
    pairs = PAIRS + PAIRS[::2]  # duplicates
    rng.shuffle(pairs)
    golds, preds = [g for g, _, _ in pairs], [p for _, p, _ in pairs]
    vs.clear_cache()
    many = vs.verify_many([*golds, "1"], [*preds, None], processes=2)
    assert [x.correct for x in many[:-1]] == [e for *_, e in pairs]
    assert many[-1] == v.NO_ANSWER
    vs.clear_cache()
    with ThreadPoolExecutor(4) as pool:
        one_by_one = list(pool.map(vs.verify, golds, preds))
    assert one_by_one == many[:-1]


def test_cache_is_keyed_by_the_normalised_prediction():
    vs.clear_cache()
    assert vs.verify_many(["\\frac{1}{2}"] * 3, ["0.5", " 0.5", "0.5\n"]) == [v.CORRECT] * 3
    assert list(vs._cache) == [("\\frac{1}{2}", "0.5")]


def _worker_pid() -> int:
    return vs._get_pool(1).schedule(os.getpid).result(timeout=vs.STARTUP_TIMEOUT)


def test_a_dead_worker_is_replaced():
    vs.warm_up(1)
    os.kill(_worker_pid(), signal.SIGKILL)  # dies while idle: pebble then declares its pool broken
    time.sleep(0.5)
    vs.clear_cache()
    assert vs.verify("\\frac{1}{2}", "0.5") == v.CORRECT


@pytest.mark.parametrize(
    "sig, expected",
    [(signal.SIGXCPU, v.TIMEOUT), (signal.SIGKILL, v.UNPARSEABLE)],
    ids=["out of CPU time", "crash"],
)
def test_a_worker_that_dies_in_a_check(sig, expected):
    # SIGXCPU is what RLIMIT_CPU sends a worker stuck in C code past its budget
    vs.shutdown()
    vs.warm_up(1)
    pid = _worker_pid()
    future = vs._get_pool(1).schedule(vs._bounded_check, (*SLOW[0], 60.0))
    while not future.running():
        time.sleep(0.02)
    os.kill(pid, sig)
    assert vs._outcome(future) == expected
    vs.clear_cache()
    assert vs.verify("\\frac{1}{2}", "0.5") == v.CORRECT  # a new worker took its place


def test_status_counts_name_every_status():
    vs.clear_cache()
    verdicts = vs.verify_many(["1", "1", "1"], ["1", None, HOSTILE["huge power"]], timeout=0.5)
    assert v.status_counts(verdicts) == {
        "correct": 1, "incorrect": 0, "no_answer": 1, "timeout": 1, "unparseable": 0
    }  # fmt: skip


def _timed_slow_checks(budget: float) -> tuple[list, float]:
    vs.shutdown()  # fresh workers: no sympy cache from an earlier run
    vs.clear_cache()
    vs.warm_up(2)
    started = time.monotonic()
    verdicts = vs.verify_many([g for g, _ in SLOW], [p for _, p in SLOW], 2, budget)
    return verdicts, time.monotonic() - started


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_verdicts_do_not_depend_on_machine_load():
    budget = 4.0  # CPU seconds: about twice what these checks need
    alone, _ = _timed_slow_checks(budget)
    assert alone == [v.CORRECT, v.CORRECT]
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # the new workers and the burner inherit one core
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy, elapsed = _timed_slow_checks(budget)
    finally:
        burner.kill()
        burner.wait()
        os.sched_setaffinity(0, cpus)
        vs.shutdown()  # no pinned workers for later tests
    assert busy == alone
    # the load was real: a wall-time bound of `budget` seconds would have cut these checks
    assert elapsed > budget


def test_workers_end_with_their_parent():
    # the parent starts two workers, keeps one busy on a hostile check, and is killed
    code = (
        "import multiprocessing as mp, threading, time; from confagg import verifier as vs; "
        "vs.warm_up(2); "
        f"threading.Thread(target=vs.verify, args=('1', {HOSTILE['huge power']!r}, 3.0)).start(); "
        "time.sleep(0.5); "
        "print(*[p.pid for p in mp.active_children() if p.name == 'pebble_pool_worker'], "
        "flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 60  # the busy one ends with its check: 3 s of CPU time
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
    assert not alive


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    return True


def test_answers_are_never_run_as_code(tmp_path):
    marker = tmp_path / "ran"
    for pred in (
        f"__import__('os').system('touch {marker}')",
        f"exec(\"open('{marker}', 'w')\")",
        f"\\text{{{{__import__('os').system('touch {marker}')}}}}",
    ):
        assert not vs.verify("1", pred).correct
    assert not marker.exists()


def test_grade_cli_writes_a_grades_table(tmp_path):
    write_problems(
        [
            {"id": "a", "problem": "?", "answer": "25"},
            {"id": "b", "problem": "?", "answer": "\\frac12"},
        ],
        tmp_path / "problems.jsonl",
    )
    answers = ["025", "24", None, "0.5", "\\text{}", "1/2"]
    samples = pa.table(
        {
            "problem_id": ["a", "a", "a", "b", "b", "b"],
            "sample_idx": [0, 1, 2, 0, 1, 2],
            "text": ["no box" if a is None else f"\\boxed{{{a}}}" for a in answers],
            "answer": answers,
            "num_tokens": [3] * 6,
            "finish_reason": ["stop", "stop", "length", "stop", "stop", "stop"],
            "token_confidence": pa.array([np.ones(3, np.float16)] * 6, pa.list_(pa.float16())),
        },
        schema=SAMPLES,
    )
    write_table(samples, tmp_path / "shard0.parquet", SAMPLES)
    out = tmp_path / "grades.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "confagg.grade", "--problems", str(tmp_path / "problems.jsonl"),
         "--processes", "1", "--settings", GRADING, str(tmp_path / "shard0.parquet"), str(out)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "; 0 timeouts (" in proc.stderr  # the log says how many verdicts were timeouts
    grades = read_table(out, GRADES).to_pydict()
    assert grades["problem_id"] == samples.column("problem_id").to_pylist()
    assert grades["sample_idx"] == [0, 1, 2, 0, 1, 2]
    assert grades["correct"] == [True, False, False, True, False, True]
    assert grades["status"] == [
        "correct",
        "incorrect",
        "no_answer",
        "correct",
        "unparseable",
        "correct",
    ]
    assert grades["answer"] == answers  # read again from the texts

    write_problems([{"id": "a", "problem": "?", "answer": "25"}], tmp_path / "only_a.jsonl")
    proc = subprocess.run(
        [sys.executable, "-m", "confagg.grade", "--problems", str(tmp_path / "only_a.jsonl"),
         "--settings", GRADING, str(tmp_path / "shard0.parquet"), str(tmp_path / "bad.parquet")],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "shard0.parquet" in proc.stderr and "'b'" in proc.stderr
    assert not (tmp_path / "bad.parquet").exists()


def test_a_script_without_a_main_guard_is_told_how_to_fix_it(tmp_path):
    """Spawned workers run the calling script again: called from its unguarded top level, the
    verifier stops at once with the script, the line and the fix (not pebble's "All workers
    expired"); the same call under ``if __name__ == "__main__":`` works."""
    call = 'print(verify_many(["x+1/2"], ["1/2+x"], processes=1)[0].status)'
    script = tmp_path / "check.py"
    script.write_text(f"from confagg.verifier import verify_many\n\n{call}\n")
    run = [sys.executable, str(script)]
    proc = subprocess.run(run, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"RuntimeError: {script}, line 3: checks answers at the top level")
    assert 'under `if __name__ == "__main__":`' in last
    assert "All workers expired" not in proc.stderr.replace('("All workers expired")', "")
    script.write_text(
        f"from confagg.verifier import verify_many\n\nif __name__ == '__main__':\n    {call}\n"
    )
    proc = subprocess.run(run, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "correct", proc.stderr
