"""Memory of the CPU stages on one fabricated full-size pool shard, at 1/16, 1/4 and full size.

One full-size shard of the default config: 630 problems x 128 samples; token counts drawn from a
heavy-tailed distribution (log-normal) with mean about 10,000 and about 5% of the samples at
32,768 tokens (finish reason ``length``, no ``</think>``, no answer); about 4 bytes of text per
token; float16 confidences (one per token). At full size the text column holds about 3 GB,
past the 2 GiB that 32-bit Arrow offsets can address.

Each stage runs as its own process (``python benchmarks/bench_scale.py --stage ...``) and its
peak resident memory is the kernel's (``wait4``: the stage process itself; the grader's
math-verify workers are not counted, and fast-path answers need none):

    merge       the sample stage's merge of its part files (``confagg.parts.Parts``)
    score       python -m confagg.score
    grade       python -m confagg.grade (integer answers: the verifier's fast path)
    curate      python -m confagg.curate (one shard as the whole pool)
    train-read  curated/train.parquet read batch by batch as ``confagg.trainset`` reads it
                (``tables.iter_batches``), every candidate's text touched; not the prompt
                rendering that follows (the aggregator's tokenizer: the trainer's own cost)
    eval-read   the evaluation inputs as ``confagg.evaluate`` reads them (samples + scores +
                grades, no text)
    aggregate-read  the aggregator runs' candidate sets (``evaluation.set_size``) as
                ``confagg.aggregate`` builds them, batch by batch with their texts (the shard
                as one benchmark); not the prompts nor the generation that follow

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--dir /tmp] [--keep]

``--checksum`` measures instead what the Parquet page checksums cost (``tables.WRITE_OPTIONS``
``write_page_checksum``, ``tables.READ_OPTIONS`` ``page_checksum_verification``): one shard's
samples table, fabricated in memory, written (``tables.write_table``) and read back whole
(``tables.iter_batches``) with and without them, in turns, ``--repeats`` times each (the
fastest counts); prints seconds and the ratio to the run without, measured in the same run:

    .venv/bin/python benchmarks/bench_scale.py --checksum [--sizes 1/16 full] [--repeats 3]

Prints one line per stage and size with peak RSS and time, then the ratio of peak RSS at full
size to 1/16. Targets: every stage at most 3 GB at full size, at most 1.5x growth. Writes about
2.2 GB on disk at full size (twice that during the merge) under ``--dir``; deletes it after
unless ``--keep``. Takes 15-25 minutes on 2 cores (``--quick``: 1/16 only, about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

FULL_PROBLEMS, SAMPLES_PER_PROBLEM = 630, 128
MAX_TOKENS, TRUNCATED_SHARE, MEAN_TOKENS = 32768, 0.05, 10_000
BYTES_PER_TOKEN = 4
SIZES = {"1/16": 16, "1/4": 4, "full": 1}
STAGES = ("merge", "score", "grade", "curate", "train-read", "eval-read", "aggregate-read")
TARGET_GB, TARGET_GROWTH = 3.0, 1.5
FINGERPRINT = {"bench": "bench_scale"}  # what the parts are stamped with (sample.fingerprint)
PROBLEMS_PER_PART = 4

# The word soup texts are made of (space-separated).
_WORDS = (
    "the we so let then thus hence since if and of to is are be a an it this that which number "
    "sum product equation solve find where x y n k m p q r 0 1 2 3 4 5 6 7 8 9 10 12 + - = ( ) "
    "[ ] mod prime integer divisible check wait but actually consider case first second compute "
    "gives therefore answer \\frac{1}{2} \\sqrt{3} \\cdot \\le \\ge"
)


# ------------------------------------------------------------------------- fabrication


def _corpus(rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` bytes of word soup (texts are slices of it)."""
    words = np.array([w.encode() + b" " for w in _WORDS.split()], dtype=object)
    picks = rng.integers(0, len(words), size // 4)
    buf = np.frombuffer(b"".join(words[picks]), np.uint8)
    return np.resize(buf, size)


def _token_counts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Heavy-tailed: 5% at the limit, the rest log-normal, the mean about MEAN_TOKENS."""
    rest_mean = (MEAN_TOKENS - TRUNCATED_SHARE * MAX_TOKENS) / (1 - TRUNCATED_SHARE)
    sigma = 0.9
    counts = rng.lognormal(np.log(rest_mean) - sigma**2 / 2, sigma, n)
    counts = np.clip(counts, 64, MAX_TOKENS - 1).astype(np.int64)
    counts[rng.random(n) < TRUNCATED_SHARE] = MAX_TOKENS
    return counts


def _problem_table(rng, corpus: np.ndarray, pid: str, gold: int, n: int):
    """One problem's ``n`` samples as a SAMPLES table."""
    import pyarrow as pa

    from confagg.tables import SAMPLES

    tokens = _token_counts(rng, n)
    truncated = tokens == MAX_TOKENS
    accuracy = rng.beta(1.2, 1.2)
    right = rng.random(n) < accuracy
    wrong = rng.integers(0, 5, n) + gold + 1
    no_box = rng.random(n) < 0.02
    answers = [
        None if t or nb else str(gold if r else w)
        for t, nb, r, w in zip(truncated, no_box, right, wrong, strict=True)
    ]
    pieces, offsets = [], [0]
    for k in range(n):
        size = int(tokens[k]) * BYTES_PER_TOKEN
        if truncated[k]:
            body, tail = size, b""
        else:  # the final solution after </think>: about 8% of the text, at most 6 KB
            after = min(size // 12, 6000)
            body = size - after
            box = b"" if answers[k] is None else b" \\boxed{" + answers[k].encode() + b"}"
            tail = b"\n</think>\n" + corpus[:after].tobytes() + box
        start = int(rng.integers(0, len(corpus) - body))
        pieces += [b"<think>\n", corpus[start : start + body].tobytes(), tail]
        offsets.append(offsets[-1] + 8 + body + len(tail))
    text = pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(np.asarray(offsets, np.int64)), pa.py_buffer(b"".join(pieces))
    )
    conf_offsets = np.concatenate(([0], np.cumsum(tokens)))
    values = np.abs(rng.normal(12.0, 3.0, int(conf_offsets[-1])).astype(np.float16))
    confidence = pa.LargeListArray.from_arrays(pa.array(conf_offsets), pa.array(values))
    return pa.table(
        {
            "problem_id": [pid] * n,
            "sample_idx": np.arange(n, dtype=np.int32),
            "text": text,
            "answer": pa.array(answers, pa.string()),
            "num_tokens": tokens.astype(np.int32),
            "finish_reason": ["length" if t else "stop" for t in truncated],
            "token_confidence": confidence,
        },
        schema=SAMPLES,
    )


def fabricate(work: Path, problems: int, seed: int = 0) -> dict:
    """The problem set and the sample stage's part files of one shard (written in a shuffled
    order, a few problems per part, as the streaming sampler leaves them)."""
    import pyarrow as pa

    from confagg.parts import Parts

    rng = np.random.default_rng(seed)
    corpus = _corpus(rng, 16 << 20)
    ids = [f"pool-{i:05d}" for i in range(problems)]
    gold = {pid: int(rng.integers(1, 999)) for pid in ids}
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "pool.jsonl", "w") as f:
        for i, pid in enumerate(ids):
            problem = {"id": pid, "problem": f"Problem {i}: find n.", "answer": str(gold[pid])}
            f.write(json.dumps(problem) + "\n")
    (work / "bench.jsonl").write_text(
        json.dumps({"id": "b0", "problem": "Unrelated benchmark problem.", "answer": "1"}) + "\n"
    )
    parts = Parts(work / "samples.parquet")
    order = list(rng.permutation(problems))
    for i in range(0, problems, PROBLEMS_PER_PART):
        chunk = [ids[j] for j in order[i : i + PROBLEMS_PER_PART]]
        tables = [_problem_table(rng, corpus, pid, gold[pid], SAMPLES_PER_PROBLEM) for pid in chunk]
        parts.write(pa.concat_tables(tables), SAMPLES_PER_PROBLEM, FINGERPRINT)
    return {"problems": problems, "samples": problems * SAMPLES_PER_PROBLEM}


# ------------------------------------------------------------------------------ stages


def _default_config() -> dict:
    """config/config.yaml with the schema's defaults filled in."""
    import yaml

    from confagg.config import validate

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, REPO / "workflow/schemas/config.schema.yaml")
    return config


def _candidates(work: Path):
    """The shard's samples, scores and grades joined as every evaluation reader joins them."""
    from confagg.candidates import load_candidates

    return load_candidates(
        [work / "samples.parquet"], [work / "scores.parquet"], [work / "grades.parquet"]
    )


def _settings(rule: str) -> str:
    """The default config's settings of a rule's stage, as the rule passes them."""
    from confagg import settings

    return settings.to_json(settings.for_rule(_default_config(), rule))


def stage_command(stage: str, work: Path) -> list[str]:
    py = sys.executable
    s, sc, gr = work / "samples.parquet", work / "scores.parquet", work / "grades.parquet"
    if stage == "score":
        return [py, "-m", "confagg.score", "--settings", _settings("score_shard"), s, sc]
    if stage == "grade":
        return [py, "-m", "confagg.grade", "--problems", work / "pool.jsonl", "--processes", "1",
                "--settings", _settings("grade_shard"), s, gr]  # fmt: skip
    if stage == "curate":
        return [py, "-m", "confagg.curate", "--problems", work / "pool.jsonl",
                "--samples", s, "--scores", sc, "--grades", gr,
                "--benchmarks", work / "bench.jsonl", "--settings", _settings("curate_sets"),
                "--train", work / "train.parquet", "--val", work / "val.parquet",
                "--summary", work / "summary.json"]  # fmt: skip
    return [py, __file__, "--stage", stage, "--dir", work]


def run_inline(stage: str, work: Path) -> None:
    """The stages that are a library call, not a CLI."""
    if stage == "merge":
        from confagg.parts import Parts

        with open(work / "pool.jsonl") as f:
            ids = [json.loads(line)["id"] for line in f]
        parts = Parts(work / "samples.parquet")
        where = parts.scan({p: i for i, p in enumerate(ids)}, SAMPLES_PER_PROBLEM, FINGERPRINT)
        rows = parts.merge(where, ids, FINGERPRINT)
        parts.finish()
        print(f"merged {rows} rows", file=sys.stderr)
        (work / "merged.txt").write_text(_shard_info(work / "samples.parquet"))
    elif stage == "fabricate":
        info = fabricate(work, int(os.environ["BENCH_SCALE_PROBLEMS"]))
        (work / "fabricated.json").write_text(json.dumps(info))
    elif stage == "train-read":
        from confagg.tables import SETS, iter_batches

        sets = chars = 0
        for batch in iter_batches(work / "train.parquet", SETS):
            for row in batch.to_pylist():
                sets += 1
                chars += sum(len(c["text"]) for c in row["candidates"])
        print(f"read {sets} training sets, {chars} candidate characters", file=sys.stderr)
    elif stage == "eval-read":
        print(f"read {len(_candidates(work))} candidates", file=sys.stderr)
    elif stage == "aggregate-read":
        from confagg import aggregate
        from confagg.candidates import CandidateTexts

        evaluation = _default_config()["evaluation"]
        sizes = evaluation["set_sizes"]
        df = _candidates(work)
        texts = CandidateTexts([work / "samples.parquet"], "</think>")
        sets = chars = 0
        per_batch = aggregate.batch_candidates(sizes, evaluation["outputs_per_set"])
        for positions in aggregate.problem_batches(df, per_batch):
            for *_, cands in aggregate.candidate_sets(df, positions, texts, sizes):
                sets += 1
                chars += sum(len(c["text"]) for c in cands)
        print(f"built {sets} sets of {sizes}, {chars} candidate characters", file=sys.stderr)
    else:
        raise SystemExit(f"unknown stage {stage!r}")


def measure(stage: str, work: Path) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of one stage run as its own process. This process stays small
    (numpy only): a child's peak counts its parent's memory at the fork."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "scripts"))
    cmd = [str(c) for c in stage_command(stage, work)]
    t0 = time.perf_counter()
    with open(work / f"{stage}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = (work / f"{stage}.log").read_text()[-3000:]
        raise SystemExit(f"stage {stage} failed ({proc.returncode}):\n{tail}")
    return usage.ru_maxrss / 1e6, seconds  # ru_maxrss: KiB on Linux


def checksum_cost(work: Path, problems: int, repeats: int) -> dict[str, dict[bool, float]]:
    """Fastest seconds to write and to read one shard's samples table, without (False) and
    with (True) page checksums; the two alternate (first one, then the other first), so a busy
    machine or a warm cache favours neither."""
    import pyarrow as pa

    from confagg import tables

    rng = np.random.default_rng(0)
    corpus = _corpus(rng, 16 << 20)
    data = pa.concat_tables(
        [_problem_table(rng, corpus, f"pool-{i:05d}", 7, SAMPLES_PER_PROBLEM)
         for i in range(problems)]
    )  # fmt: skip
    best = {"write": {}, "read": {}}
    saved = dict(tables.WRITE_OPTIONS), dict(tables.READ_OPTIONS)
    try:
        for r in range(repeats):
            for on in (False, True) if r % 2 == 0 else (True, False):
                tables.WRITE_OPTIONS["write_page_checksum"] = on
                tables.READ_OPTIONS["page_checksum_verification"] = on
                path = work / f"samples-{on}.parquet"
                t0 = time.perf_counter()
                tables.write_table(data, path, tables.SAMPLES)
                t1 = time.perf_counter()
                rows = sum(b.num_rows for b in tables.iter_batches(path, tables.SAMPLES))
                t2 = time.perf_counter()
                assert rows == data.num_rows
                for op, seconds in (("write", t1 - t0), ("read", t2 - t1)):
                    best[op][on] = min(best[op].get(on, seconds), seconds)
    finally:
        tables.WRITE_OPTIONS.update(saved[0])
        tables.READ_OPTIONS.update(saved[1])
    sizes = {on: (work / f"samples-{on}.parquet").stat().st_size for on in (False, True)}
    print(f"      {data.nbytes / 1e9:.2f} GB in Arrow, {sizes[False] / 1e9:.3f} GB on disk "
          f"(+{sizes[True] - sizes[False]} bytes of checksums)")  # fmt: skip
    return best


def _shard_info(path: Path) -> str:
    """Size on disk, text bytes and row groups of the merged shard (read from its footer)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    col = next(i for i in range(meta.num_columns) if meta.schema.column(i).path == "text")
    groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
    text = sum(g.column(col).total_uncompressed_size for g in groups)
    return (
        f"shard {path.stat().st_size / 1e9:.2f} GB on disk, text {text / 2**30:.2f} GiB, "
        f"{len(groups)} row groups"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 1/16 size only")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to write (deleted after)")
    ap.add_argument("--keep", action="store_true", help="keep the files")

    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None)
    ap.add_argument("--stage", help=argparse.SUPPRESS)  # one stage, in this process
    ap.add_argument("--checksum", action="store_true", help="the page checksums' cost only")
    ap.add_argument("--repeats", type=int, default=3, help="with --checksum: runs of each")
    args = ap.parse_args(argv)
    if args.stage:
        run_inline(args.stage, Path(args.dir))
        return
    if args.checksum:
        for size in args.sizes or ["1/16"]:
            problems = round(FULL_PROBLEMS / SIZES[size])
            with tempfile.TemporaryDirectory(prefix="bench_scale-", dir=args.dir) as work:
                print(f"{size}: {problems} problems x {SAMPLES_PER_PROBLEM} samples", flush=True)
                best = checksum_cost(Path(work), problems, args.repeats)
            for op, by in best.items():
                print(f"      {op:>5}: {by[False]:7.2f}s without checksums, {by[True]:7.2f}s "
                      f"with: {by[True] / by[False]:.3f}x", flush=True)  # fmt: skip
        return

    sizes = args.sizes or (["1/16"] if args.quick else list(SIZES))
    root = Path(tempfile.mkdtemp(prefix="bench_scale-", dir=args.dir))
    results: dict[str, dict[str, tuple[float, float]]] = {}
    print(f"{'size':>5} {'stage':>14} {'peak RSS':>9} {'time':>8}   (work: {root})", flush=True)
    try:
        for size in sizes:
            work = root / size.replace("/", "_")
            problems = round(FULL_PROBLEMS / SIZES[size])
            work.mkdir(parents=True)
            os.environ["BENCH_SCALE_PROBLEMS"] = str(problems)
            _, seconds = measure("fabricate", work)
            info = json.loads((work / "fabricated.json").read_text())
            print(f"{size:>5} {'fabricate':>14} {'':>9} {seconds:7.1f}s  {problems} problems, "
                  f"{info['samples']} samples", flush=True)  # fmt: skip
            for stage in STAGES:
                rss, seconds = measure(stage, work)
                results.setdefault(stage, {})[size] = (rss, seconds)
                extra = ""
                if stage == "merge":
                    extra = "  " + (work / "merged.txt").read_text()
                print(f"{size:>5} {stage:>14} {rss:7.2f}GB {seconds:7.1f}s{extra}", flush=True)
            if not args.keep:
                shutil.rmtree(work)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    if "1/16" in sizes and "full" in sizes:
        print("\n         stage  full/(1/16) peak RSS   full peak RSS   target")
        for stage, by_size in results.items():
            ratio = by_size["full"][0] / by_size["1/16"][0]
            ok = by_size["full"][0] <= TARGET_GB and ratio <= TARGET_GROWTH
            print(f"{stage:>14} {ratio:18.2f}x {by_size['full'][0]:13.2f}GB   "
                  f"{'ok' if ok else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
