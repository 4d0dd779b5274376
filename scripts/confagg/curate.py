"""AggLM training sets from the graded, scored training pool.

Steps (AggLM, Zhao et al. 2025, "The Majority is not always right: RL training for solution
aggregation"):

1. Join every training-pool shard's samples, scores and grades on (problem_id, sample_idx).
2. **Contamination guard**: a pool problem whose normalised text (``problem_key``) equals a
   benchmark problem's is removed and listed in the summary.
3. Optionally drop samples with no extracted answer and/or cut by the length limit
   (``finish_reason == "length"``); the counts are reported whether dropped or not.
4. Split problems 80/20 into train/validation (seeded), so no problem is in both.
5. Per problem, ``s`` sets of ``m`` candidates, each drawn without replacement from the
   problem's samples (a problem with fewer than ``m`` samples gets none; sets may overlap).
   **Majority rule**: answers vote in the groups of confagg.grouping (an answerless candidate
   abstains); a set is **easy** when the majority answer (confagg.methods.majority_top) is
   correct and no other answer ties it, and **hard** otherwise: a tie, or a set without any
   answer, is hard (majority voting does not reliably reach the right answer there).
6. In each split, keep every hard set plus ``round(p * hard)`` easy sets, taken round-robin
   over the problems with easy sets in a seeded order (one per problem first, then a second,
   ...), so they spread over as many problems as possible.

Outputs: ``train.parquet`` and ``val.parquet`` (``tables.SETS``; candidate texts cut to the
part after ``</think>``) and ``summary.json``. Each sample's text is read in a second pass, and
only for the candidates kept, so the pool's full reasoning traces never sit in memory at once.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from confagg.answers import after_think
from confagg.confidence import METRICS
from confagg.grouping import answer_keys
from confagg.methods import majority_top
from confagg.problems import read_problems
from confagg.seeds import derive_seed
from confagg.settings import load
from confagg.tables import SETS, load_candidates, write_json, write_table


@dataclass(frozen=True)
class Settings:
    """The config's ``curation`` section without the verifier's keys (the rule curate_sets)."""

    sets_per_problem: int
    set_size: int
    easy_ratio: float
    val_fraction: float
    drop_no_answer: bool
    drop_truncated: bool
    seed: int | None  # null: derived from the run seed (:func:`with_seed`)

    def with_seed(self, run_seed: int) -> Settings:
        """These settings with a null seed derived from the run seed."""
        if self.seed is not None:
            return self
        return replace(self, seed=derive_seed(run_seed, "curate"))


# -------------------------------------------------------------------------- reading


def attach_texts(sets: list[dict], samples: Sequence[str]) -> None:
    """Fill each candidate's ``text`` (the part after ``</think>``) from the samples shards,
    reading only the rows the sets use, batch by batch."""
    wanted: dict[int, dict[int, list[dict]]] = {}
    for s in sets:
        for cand in s["candidates"]:
            wanted.setdefault(cand.pop("shard"), {}).setdefault(cand.pop("row"), []).append(cand)
    for shard, rows in wanted.items():
        needed = np.array(sorted(rows), np.int64)
        offset = 0
        for batch in pq.ParquetFile(samples[shard]).iter_batches(1024, columns=["text"]):
            lo, hi = np.searchsorted(needed, [offset, offset + batch.num_rows])
            texts = batch.column(0).take(pa.array(needed[lo:hi] - offset)).to_pylist()
            for r, text in zip(needed[lo:hi].tolist(), texts, strict=True):
                for cand in rows[r]:
                    cand["text"] = after_think(text)
            offset += batch.num_rows


# ------------------------------------------------------------------- contamination

_SPACING = re.compile(r"\\(?:left|right|displaystyle|[,;:! ])|\$|\s+")


def problem_key(text: str) -> str:
    """A problem's text normalised for matching: NFKC, case-folded, without whitespace, ``$``,
    LaTeX spacing and sizing commands; ``\\dfrac``/``\\tfrac`` read as ``\\frac``."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return _SPACING.sub("", text)


def contaminated(pool: Sequence[Mapping], benchmarks: Mapping[str, Sequence[Mapping]]) -> dict:
    """``{pool problem id: ["<benchmark>:<id>", ...]}`` for pool problems that match any
    benchmark problem's normalised text."""
    index: dict[str, list[str]] = {}
    for name, problems in benchmarks.items():
        for p in problems:
            index.setdefault(problem_key(p["problem"]), []).append(f"{name}:{p['id']}")
    return {p["id"]: index[k] for p in pool if (k := problem_key(p["problem"])) in index}


# --------------------------------------------------------------------- set building


def majority(answers: Sequence[str | None], correct: Sequence[bool]) -> tuple[bool, str | None]:
    """(hard, majority answer) of one set under the module's majority rule; the answer shown
    for a tie is the first seen of the tied wrong answers."""
    top = majority_top(answer_keys(answers, correct))
    if len(top) == 1 and correct[top[0]]:
        return False, answers[top[0]]
    if not top:
        return True, None
    return True, answers[next((i for i in top if not correct[i]), top[0])]


def build_sets(
    df: pd.DataFrame, problem_ids: Sequence[str], settings: Settings
) -> dict[str, list[dict]]:
    """``s`` sets of ``m`` candidates for each problem with at least ``m`` samples in ``df``:
    ``{problem id: [{set_id, hard, majority_answer, rows}]}``, ``rows`` indexing ``df``'s
    positions. A problem's draws depend only on the seed and its id."""
    m, out = settings.set_size, {}
    answers = [None if pd.isna(a) else a for a in df["answer"]]
    correct = df["correct"].to_numpy(bool)
    sample_idx = df["sample_idx"].to_numpy()
    for pid, group in df.groupby("problem_id", sort=False).indices.items():
        if len(group) < m:
            continue
        rows = group[np.argsort(sample_idx[group], kind="stable")]
        rng = np.random.default_rng(derive_seed(settings.seed, "sets", pid))
        sets = []
        for j in range(settings.sets_per_problem):
            chosen = rows[rng.choice(len(rows), size=m, replace=False)]
            hard, maj = majority([answers[i] for i in chosen], correct[chosen].tolist())
            sets.append({"set_id": f"{pid}/{j}", "hard": hard, "majority_answer": maj,
                         "rows": chosen})  # fmt: skip
        out[pid] = sets
    return {pid: out[pid] for pid in problem_ids if pid in out}


def with_candidates(sets: list[dict], df: pd.DataFrame) -> None:
    """Replace each set's ``rows`` by its candidates (``text`` still to come: they carry the
    ``shard``/``row`` to read it from)."""
    cols = {c: df[c].to_numpy() for c in ["sample_idx", "correct", "num_tokens", *METRICS]}
    cols["answer"] = df["answer"].to_numpy(object)
    where = df[["shard", "row"]].to_numpy()
    for s in sets:
        s["candidates"] = [
            {
                "sample_idx": int(cols["sample_idx"][i]),
                "answer": None if pd.isna(cols["answer"][i]) else cols["answer"][i],
                "correct": bool(cols["correct"][i]),
                "num_tokens": int(cols["num_tokens"][i]),
                **{k: float(cols[k][i]) for k in METRICS},
                "shard": int(where[i, 0]),
                "row": int(where[i, 1]),
            }
            for i in s.pop("rows")
        ]


def split_problems(
    problem_ids: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) in the given order: a seeded shuffle sends
    ``round(val_fraction * n)`` problems to validation (at least one to each side when there
    are two or more problems and the fraction is strictly between 0 and 1)."""
    ids = sorted(problem_ids)
    random.Random(derive_seed(seed, "split")).shuffle(ids)
    n_val = round(val_fraction * len(ids))
    if len(ids) >= 2 and 0 < val_fraction < 1:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = set(ids[:n_val])
    return [p for p in problem_ids if p not in val], [p for p in problem_ids if p in val]


def select_sets(
    sets: Mapping[str, list[dict]],
    problem_ids: Sequence[str],
    easy_ratio: float,
    seed: int,
    label: str = "",
) -> tuple[list[dict], dict]:
    """Every hard set of ``problem_ids`` plus ``round(easy_ratio * hard)`` easy sets (half up,
    at most those there are), spread round-robin over the problems in a seeded order; the kept
    sets in problem then set order, and their counts."""
    hard = [s for p in problem_ids for s in sets.get(p, []) if s["hard"]]
    easy = {p: [s for s in sets.get(p, []) if not s["hard"]] for p in problem_ids}
    easy = {p: e for p, e in easy.items() if e}
    rng = random.Random(derive_seed(seed, "easy", label))
    order = sorted(easy)
    rng.shuffle(order)
    for p in order:
        rng.shuffle(easy[p])
    target = min(math.floor(easy_ratio * len(hard) + 0.5), sum(map(len, easy.values())))
    chosen: list[dict] = []
    depth = 0
    while len(chosen) < target:
        chosen += [easy[p][depth] for p in order if depth < len(easy[p])][: target - len(chosen)]
        depth += 1
    keep = {s["set_id"] for s in hard + chosen}
    kept = [s for p in problem_ids for s in sets.get(p, []) if s["set_id"] in keep]
    problem_of = {s["set_id"]: p for p in problem_ids for s in sets.get(p, [])}
    counts = {
        "hard": len(hard),
        "easy": len(chosen),
        "easy_available": sum(map(len, easy.values())),
        "problems": len({problem_of[s["set_id"]] for s in kept}),
        "problems_with_easy": len({problem_of[s["set_id"]] for s in chosen}),
    }
    return kept, counts


# -------------------------------------------------------------------------- summary


def accuracy_summary(df: pd.DataFrame) -> dict:
    """Per-problem accuracy over all graded samples: mean, extremes and a 10-bin histogram."""
    acc = df.groupby("problem_id")["correct"].mean().to_numpy()
    edges = np.linspace(0, 1, 11)
    hist, _ = np.histogram(acc, bins=edges)
    return {
        "problems": len(acc),
        "mean": float(acc.mean()) if len(acc) else None,
        "all_correct": int((acc == 1).sum()),
        "all_wrong": int((acc == 0).sum()),
        "histogram": {
            f"[{lo:.1f}, {hi:.1f}{']' if i == 9 else ')'}": int(n)
            for i, (lo, hi, n) in enumerate(zip(edges[:-1], edges[1:], hist, strict=True))
        },
    }


# ------------------------------------------------------------------------- pipeline


def curate(
    problems: Sequence[Mapping],
    pool: pd.DataFrame,
    benchmarks: Mapping[str, Sequence[Mapping]],
    settings: Settings,
) -> tuple[list[dict], list[dict], dict]:
    """(train sets, validation sets, summary) from the pool's problems and joined samples
    (``tables.load_candidates``). Candidates still carry ``shard``/``row`` in place of
    ``text``."""
    by_id = {p["id"]: p for p in problems}
    unknown = sorted(set(pool["problem_id"]) - by_id.keys())
    if unknown:
        raise ValueError(f"samples of problems missing from the training pool: {unknown[:5]}")
    dirty = contaminated(problems, benchmarks)
    pool = pool[~pool["problem_id"].isin(dirty)]
    no_answer = pool["answer"].isna()
    truncated = pool["finish_reason"] == "length"
    drop = (no_answer & settings.drop_no_answer) | (truncated & settings.drop_truncated)
    usable = pool[~drop]

    clean_ids = [p["id"] for p in problems if p["id"] not in dirty]
    sets = build_sets(usable, clean_ids, settings)
    with_sets = [p for p in clean_ids if p in sets]
    train_ids, val_ids = split_problems(with_sets, settings.val_fraction, settings.seed)
    train, train_counts = select_sets(sets, train_ids, settings.easy_ratio, settings.seed, "train")
    val, val_counts = select_sets(sets, val_ids, settings.easy_ratio, settings.seed, "val")
    with_candidates(train + val, usable)
    for pid, group in sets.items():
        p = by_id[pid]
        for s in group:
            s.update(problem_id=pid, problem=p["problem"], gold=p["answer"])

    sampled = set(pool["problem_id"])
    built = [s for v in sets.values() for s in v]
    summary = {
        "settings": asdict(settings),
        "problems": {
            "pool": len(problems),
            "contaminated": len(dirty),
            "without_samples": sum(p not in sampled for p in clean_ids),
            "too_few_samples": sum(p in sampled and p not in sets for p in clean_ids),
            "with_sets": len(with_sets),
            "train": len(train_ids),
            "val": len(val_ids),
        },
        "samples": {
            "total": len(pool),
            "status": {k: int(v) for k, v in sorted(Counter(pool["status"]).items())},
            "no_answer": int(no_answer.sum()),
            "truncated": int(truncated.sum()),
            "dropped": {
                "no_answer": int((no_answer & settings.drop_no_answer).sum()),
                "truncated": int((truncated & settings.drop_truncated).sum()),
                "total": int(drop.sum()),
            },
            "used": len(usable),
        },
        "accuracy": accuracy_summary(pool),
        "sets": {
            "built": {
                "hard": sum(s["hard"] for s in built),
                "easy": sum(not s["hard"] for s in built),
            },
            "train": train_counts,
            "val": val_counts,
        },
        "contaminated": [{"id": k, "matches": v} for k, v in dirty.items()],
    }
    return train, val, summary


def sets_table(sets: list[dict]) -> pa.Table:
    """The SETS table of built sets (their candidates' texts attached)."""
    return pa.Table.from_pylist([{name: s[name] for name in SETS.names} for s in sets], schema=SETS)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", required=True, help="the training pool's problems JSONL")
    ap.add_argument("--samples", nargs="+", required=True, help="samples shards")
    ap.add_argument("--scores", nargs="+", required=True, help="scores shards, same order")
    ap.add_argument("--grades", nargs="+", required=True, help="grades shards, same order")
    ap.add_argument("--benchmarks", nargs="*", default=[], help="benchmark problem JSONLs")
    ap.add_argument("--settings", required=True, help="JSON, see the rule curate_sets")
    ap.add_argument("--run-seed", type=int, default=0, help="derives the seed when it is null")
    ap.add_argument("--train", required=True, help="training sets (parquet) to write")
    ap.add_argument("--val", required=True, help="validation sets (parquet) to write")
    ap.add_argument("--summary", required=True, help="summary (JSON) to write")
    args = ap.parse_args(argv)

    settings = load(Settings, args.settings).with_seed(args.run_seed)
    problems = read_problems(args.problems)
    benchmarks = {Path(b).stem: read_problems(b) for b in args.benchmarks}
    pool = load_candidates(args.samples, args.scores, args.grades)
    train, val, summary = curate(problems, pool, benchmarks, settings)
    attach_texts(train + val, args.samples)
    write_table(sets_table(train), args.train, SETS)
    write_table(sets_table(val), args.val, SETS)
    write_json(summary, args.summary)
    print(json.dumps({k: summary[k] for k in ("problems", "sets")}, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
