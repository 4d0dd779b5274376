"""AggLM training sets from the graded, scored training pool.

Steps (AggLM, Zhao et al. 2025, "The Majority is not always right: RL training for solution
aggregation"):

1. Join every training-pool shard's samples, scores and grades on (problem_id, sample_idx).
   A sample has an answer only where the grader gave it one (``answer_group`` >= 0: not when
   its thinking never ended, with ``grading.require_think_end``).
2. **Contamination guard**: a pool problem is removed, and listed in the summary, when its
   normalised text (``problem_key``) equals a benchmark problem's ("exact"), or when it shares
   a run of ``decontamination_ngram`` words (default 8, after NFKC and case folding; the check
   public training-data pipelines use) with any benchmark problem ("ngram"): reworded copies.
3. Optionally drop samples with no answer and/or cut by the length limit
   (``finish_reason == "length"``); the counts are reported whether dropped or not.
4. Split problems 80/20 into train/validation (seeded), so no problem is in both.
5. Per problem, ``s`` sets of ``m`` candidates. ``set_sampling: disjoint`` (AggLM's sets, the
   default): a seeded permutation of the problem's samples cut into disjoint sets of ``m``,
   the first ``s`` of them (128 samples -> 16 sets of 8, a partition; fewer when ``s * m`` is
   more than the problem has). ``overlapping``: ``s`` independent draws of ``m`` without
   replacement (sets may share samples). A problem with fewer than ``m`` samples gets none.
   **Majority rule**: answers vote in the answer groups of the grader (confagg.grouping:
   never the gold answer); an answerless candidate abstains. A set is **easy** when the
   majority group (confagg.methods.majority_top; a group is correct when its first candidate
   is) is correct and no other group ties it, and **hard** otherwise: a tie, or a set without
   any answer, is hard (majority voting does not reliably reach the right answer there). The
   summary counts the sets of each kind (``sets.built``: ``wrong``, ``tie``, ``no_answer``).
6. In each split, keep every hard set plus ``round(p * hard)`` easy sets, taken round-robin
   over the problems with easy sets in a seeded order (one per problem first, then a second,
   ...), so they spread over as many problems as possible.

Outputs: ``train.parquet`` and ``val.parquet`` (``tables.SETS``, sets in problem then set
order; candidate texts cut to the part after ``grading.think_end``) and ``summary.json``, published
together (``files.OutputSet``: all or none, the summary last).

Memory. Sets are chosen from the samples' metadata alone (no text). The kept sets are then
written in chunks of about ``CHUNK_CANDIDATES`` candidates, in problem order: a chunk's texts
are read from the row groups that hold them (``candidates.CandidateTexts``), cut, written, and
dropped, so at most one chunk's texts are in memory whatever the pool's size.

Prompt budget. With ``--max-prompt-tokens`` (``aggregator.prompt.max_prompt_tokens``), a
candidate text longer than the whole budget is cut in its middle as the prompt builder cuts it
(``confagg.aggregator_prompt``): its first and last ``budget / 2`` tokens stay, around the
marker ``[... N tokens omitted ...]``. No prompt can show more of it, so the sets hold what
prompts can use; a truncated thinking trace (no end-of-thinking marker: the whole text is the
candidate)
is the usual case. Tokens are *estimated*, not counted: a sample's text has ``num_tokens``
tokens of the generator, so its characters per token are known; a text is cut when it is
estimated at more than ``CUT_MARGIN`` x the budget, and keeps ``CUT_MARGIN`` x the characters
that ``budget / 2`` tokens take at that density, at each end (N: the estimate of the rest).
Tokenizing instead would cost as much as sampling's detokenisation of every long trace, and the
margin (25%) absorbs a tokenizer that differs from the generator's or a denser head or tail:
the prompt builder, which counts exactly with the aggregator's tokenizer, still makes the final
cut, so a prompt built from the sets equals one built from the whole texts (the builder's marker
then counts the tokens omitted from the stored text). The summary counts the texts cut.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from confagg.aggregator_prompt import MARKER
from confagg.answers import latex_skeleton
from confagg.candidates import CandidateTexts, load_candidates
from confagg.confidence import METRICS
from confagg.files import OutputSet, write_json
from confagg.methods import disjoint_sets, majority_top
from confagg.problems import read_problems
from confagg.seeds import derive_seed
from confagg.settings import load
from confagg.tables import SETS, TableWriter

# A text is cut only when estimated at more than this many times the prompt budget, and keeps
# this many times the characters the builder could show (module docstring: Prompt budget).
CUT_MARGIN = 1.25
# Kept sets are written in chunks of about this many candidates (texts read, cut, written and
# dropped together): a chunk's texts are at most this many times the budget's worth of text.
CHUNK_CANDIDATES = 1024
# The train and val writers each gather a row group before writing it: groups smaller than
# tables.ROW_GROUP_BYTES keep the two off the stage's peak (bench_scale: 1.58x growth from
# 1/16 to a full shard with 32 MiB groups, 1.37x with these); 8 MiB still holds about 200 sets.
SETS_ROW_GROUP_BYTES = 8 << 20


@dataclass(frozen=True)
class Settings:
    """The config's ``curation`` section, its seed resolved (``confagg.settings.for_rule``)."""

    sets_per_problem: int
    set_size: int
    easy_ratio: float
    val_fraction: float
    drop_no_answer: bool
    drop_truncated: bool
    set_sampling: str  # "disjoint" | "overlapping"
    decontamination_ngram: int | None  # null: exact matches only
    seed: int  # the config's, or derived from the run seed when that is null


@dataclass(frozen=True)
class CurateSettings:
    """What the rule curate_sets passes (``confagg.settings.for_rule``)."""

    curation: Settings
    max_prompt_tokens: int | None  # aggregator.prompt.max_prompt_tokens: longer texts are cut
    think_end: str  # grading.think_end: candidate texts are the part after it


@dataclass
class Cuts:
    """Candidate texts cut to the prompt budget: how many, and the tokens (estimated) cut."""

    texts: int = 0
    tokens: int = 0


def cut_to_budget(text: str, chars_per_token: float, budget: int | None, cuts: Cuts) -> str:
    """``text`` cut in its middle when it is estimated at more than ``CUT_MARGIN`` x ``budget``
    tokens (``chars_per_token``: its sample's density), keeping ``CUT_MARGIN`` x the
    characters of ``budget / 2`` tokens at each end (the module docstring); ``cuts`` counts."""
    if (
        budget is None
        or not chars_per_token > 0
        or len(text) <= CUT_MARGIN * budget * chars_per_token
    ):
        return text
    keep = math.ceil(CUT_MARGIN * budget / 2 * chars_per_token)
    omitted = round((len(text) - 2 * keep) / chars_per_token)
    cuts.texts += 1
    cuts.tokens += omitted
    return text[:keep] + MARKER.format(n=omitted) + text[len(text) - keep :]


# ------------------------------------------------------------------- contamination


def problem_key(text: str) -> str:
    """A problem's text normalised for matching: NFKC, case-folded, without whitespace, ``$``,
    LaTeX spacing and sizing commands; ``\\dfrac``/``\\tfrac`` read as ``\\frac``."""
    return latex_skeleton(unicodedata.normalize("NFKC", text).casefold()).replace("$", "")


_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """A problem's words for n-gram matching: NFKC, case-folded, runs of letters and digits
    (LaTeX commands become words: ``\\frac{1}{2}`` is ``frac 1 2``)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WORD.findall(text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac"))


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """Every distinct run of ``n`` consecutive words of ``text``, in text order (none when it
    has fewer words)."""
    w = words(text)
    return list(dict.fromkeys(tuple(w[i : i + n]) for i in range(len(w) - n + 1)))


def contaminated(
    pool: Sequence[Mapping], benchmarks: Mapping[str, Sequence[Mapping]], ngram: int | None = 8
) -> dict[str, dict]:
    """``{pool problem id: {"matches": ["<benchmark>:<id>", ...], "how": "exact" | "ngram",
    "ngram": the first shared n-gram in the pool problem's text, or None}}`` for pool problems
    that equal a benchmark problem's normalised text, or share an ``ngram``-word run with one
    (``ngram`` None: exact copies only)."""
    exact: dict[str, list[str]] = {}
    shared: dict[tuple[str, ...], list[str]] = {}
    for name, problems in benchmarks.items():
        for p in problems:
            ref = f"{name}:{p['id']}"
            exact.setdefault(problem_key(p["problem"]), []).append(ref)
            for g in ngrams(p["problem"], ngram) if ngram else ():
                shared.setdefault(g, []).append(ref)
    out = {}
    for p in pool:
        if (key := problem_key(p["problem"])) in exact:
            out[p["id"]] = {"matches": exact[key], "how": "exact", "ngram": None}
            continue
        hits = [g for g in (ngrams(p["problem"], ngram) if ngram else ()) if g in shared]
        if hits:
            refs = list(dict.fromkeys(r for g in hits for r in shared[g]))
            out[p["id"]] = {"matches": refs, "how": "ngram", "ngram": " ".join(hits[0])}
    return out


# --------------------------------------------------------------------- set building


def majority(
    groups: Sequence[int], answers: Sequence[str | None], correct: Sequence[bool]
) -> tuple[str, str | None]:
    """(kind, majority answer) of one set under the module's majority rule: kind "easy",
    "wrong" (the majority group is wrong), "tie" or "no_answer"; the answer shown for a tie is
    the first seen of the tied wrong groups."""
    top = majority_top(groups)
    if not top:
        return "no_answer", None
    if len(top) == 1:
        return ("easy" if correct[top[0]] else "wrong"), answers[top[0]]
    return "tie", answers[next((i for i in top if not correct[i]), top[0])]


def build_sets(
    df: pd.DataFrame, problem_ids: Sequence[str], settings: Settings
) -> dict[str, list[dict]]:
    """Up to ``s`` sets of ``m`` candidates (``settings.set_sampling``, see the module
    docstring) for each problem with at least ``m`` samples in ``df``: ``{problem id: [{set_id,
    hard, kind, majority_answer, rows}]}``, ``rows`` indexing ``df``'s positions, a disjoint
    set in sample order. A problem's sets depend only on the seed and its id."""
    m, s, out = settings.set_size, settings.sets_per_problem, {}
    answers = [None if pd.isna(a) else a for a in df["answer"]]
    groups = df["answer_group"].to_numpy(np.int64)
    correct = df["correct"].to_numpy(bool)
    sample_idx = df["sample_idx"].to_numpy()
    for pid, group in df.groupby("problem_id", sort=False).indices.items():
        if len(group) < m:
            continue
        rows = group[np.argsort(sample_idx[group], kind="stable")]
        rng = np.random.default_rng(derive_seed(settings.seed, "sets", pid))
        if settings.set_sampling == "disjoint":
            draws = list(disjoint_sets(len(rows), m, rng)[:s])
        else:
            draws = [rng.choice(len(rows), size=m, replace=False) for _ in range(s)]
        sets = []
        for j, positions in enumerate(draws):
            chosen = rows[positions]
            kind, maj = majority(groups[chosen], [answers[i] for i in chosen], correct[chosen])
            sets.append({"set_id": f"{pid}/{j}", "hard": kind != "easy", "kind": kind,
                         "majority_answer": maj, "rows": chosen})  # fmt: skip
        out[pid] = sets
    return {pid: out[pid] for pid in problem_ids if pid in out}


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
) -> tuple[list[dict], list[dict], dict, pd.DataFrame]:
    """(train sets, validation sets, summary, usable samples) from the pool's problems and
    joined samples (``candidates.load_candidates``). A set holds the ``rows`` (positions) of its
    candidates in the usable samples' frame, for :func:`write_sets`."""
    by_id = {p["id"]: p for p in problems}
    unknown = sorted(set(pool["problem_id"]) - by_id.keys())
    if unknown:
        raise ValueError(f"samples of problems missing from the training pool: {unknown[:5]}")
    spread = pool.groupby("problem_id")["shard"].nunique()
    if (spread > 1).any():  # answer groups are numbered per shard's grading
        raise ValueError(f"problem {spread[spread > 1].index[0]!r} has samples in several shards")
    dirty = contaminated(problems, benchmarks, settings.decontamination_ngram)
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
            "contaminated_exact": sum(d["how"] == "exact" for d in dirty.values()),
            "contaminated_ngram": sum(d["how"] == "ngram" for d in dirty.values()),
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
            "unfinished_thinking": int(pool["unfinished_thinking"].sum()),
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
                **{k: sum(s["kind"] == k for s in built) for k in ("wrong", "tie", "no_answer")},
            },
            "train": train_counts,
            "val": val_counts,
        },
        "contaminated": [{"id": k, **v} for k, v in dirty.items()],
    }
    return train, val, summary, usable


def write_sets(
    outputs: Sequence[str],
    splits: Sequence[list[dict]],
    usable: pd.DataFrame,
    problem_order: Mapping[str, int],
    texts: CandidateTexts,
    budget: int | None = None,
    together: OutputSet | None = None,
) -> Cuts:
    """Write each split's sets (``curate``'s, each split in problem order) to its SETS file, a
    chunk of about ``CHUNK_CANDIDATES`` candidates at a time (the module docstring); returns
    the texts cut to the budget. The splits are walked together in ``problem_order`` (the
    order of the pool's problems, which is the shards' row order), so each row group of the
    samples is read about once for all of them."""
    cols = {c: usable[c].to_numpy() for c in ["sample_idx", "correct", "num_tokens", *METRICS]}
    cols["answer"] = usable["answer"].to_numpy(object)
    where = usable[["shard", "row"]].to_numpy(np.int64)
    tagged = sorted(
        (problem_order[s["problem_id"]], k, i)
        for k, split in enumerate(splits)
        for i, s in enumerate(split)
    )
    set_size = max((len(s["rows"]) for split in splits for s in split[:1]), default=1)
    step = max(1, CHUNK_CANDIDATES // set_size)  # sets per chunk
    cuts = Cuts()
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(TableWriter(out, SETS, SETS_ROW_GROUP_BYTES, together))
            for out in outputs
        ]
        for lo in range(0, len(tagged), step):
            chunk = [(k, splits[k][i]) for _, k, i in tagged[lo : lo + step]]
            needed = np.unique(np.concatenate([s["rows"] for _, s in chunk]))
            text = {
                p: cut_to_budget(t, full / max(int(cols["num_tokens"][p]), 1), budget, cuts)
                for p, (t, full) in texts.read(needed, where).items()
            }
            rows: list[list[dict]] = [[] for _ in outputs]
            for k, s in chunk:
                rows[k].append(_set_row(s, text, cols))
            for writer, part in zip(writers, rows, strict=True):
                if part:
                    writer.write(pa.Table.from_pylist(part, schema=SETS))
    return cuts


def _set_row(s: Mapping, text: Mapping[int, str], cols: Mapping[str, np.ndarray]) -> dict:
    """One SETS row: the set's fields and its candidates (pool frame ``rows``)."""
    row = {name: s[name] for name in SETS.names if name != "candidates"}
    row["candidates"] = [
        {
            "sample_idx": int(cols["sample_idx"][p]),
            "text": text[p],
            "answer": None if pd.isna(cols["answer"][p]) else cols["answer"][p],
            "correct": bool(cols["correct"][p]),
            "num_tokens": int(cols["num_tokens"][p]),
            **{m: float(cols[m][p]) for m in METRICS},
        }
        for p in s["rows"].tolist()
    ]
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", required=True, help="the training pool's problems JSONL")
    ap.add_argument("--samples", nargs="+", required=True, help="samples shards")
    ap.add_argument("--scores", nargs="+", required=True, help="scores shards, same order")
    ap.add_argument("--grades", nargs="+", required=True, help="grades shards, same order")
    ap.add_argument("--benchmarks", nargs="*", default=[], help="benchmark problem JSONLs")
    ap.add_argument("--settings", required=True, help="JSON: curation, max_prompt_tokens")
    ap.add_argument("--train", required=True, help="training sets (parquet) to write")
    ap.add_argument("--val", required=True, help="validation sets (parquet) to write")
    ap.add_argument("--summary", required=True, help="summary (JSON) to write")
    args = ap.parse_args(argv)

    stage = load(CurateSettings, args.settings)
    settings = stage.curation
    problems = read_problems(args.problems)
    benchmarks = {Path(b).stem: read_problems(b) for b in args.benchmarks}
    pool = load_candidates(args.samples, args.scores, args.grades)
    train, val, summary, usable = curate(problems, pool, benchmarks, settings)
    del pool
    # the three are published together, the summary last: its presence says the sets are whole
    with OutputSet([args.train, args.val, args.summary]) as outputs:
        cuts = write_sets(
            [args.train, args.val],
            [train, val],
            usable,
            {p["id"]: i for i, p in enumerate(problems)},
            CandidateTexts(args.samples, stage.think_end),
            stage.max_prompt_tokens,
            outputs,
        )
        summary["samples"]["cut_to_prompt_budget"] = {
            "max_prompt_tokens": stage.max_prompt_tokens,
            "texts": cuts.texts,
            "tokens_removed": cuts.tokens,
        }
        write_json(summary, args.summary, outputs)
    print(json.dumps({k: summary[k] for k in ("problems", "sets")}, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
