"""Prepare stage (rule ``prepare_problems``): one data set's problems from its configured source,
normalised to the ``{id, problem, answer}`` JSONL every later stage reads (``confagg.problems``).

    python -m confagg.prepare --settings JSON OUT
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from confagg.problems import ProblemFileError, load_source, write_problems
from confagg.settings import load


@dataclass(frozen=True)
class Settings:
    """What the rule prepare_problems passes (``confagg.settings.for_rule``)."""

    source: dict  # {path:}, {url:}, {hub:, split:, subset:} or {demo: {n:, seed:}}
    fields: dict  # the source's column names for id, problem, answer
    limit: int | None  # keep the first N problems (None: all)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", required=True, help="JSON: source, fields, limit")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    settings = load(Settings, args.settings)
    out = Path(args.out)
    problems = load_source(settings.source, settings.fields, out)
    if settings.limit:
        problems = problems[: settings.limit]
    write_problems(problems, out)
    print(f"wrote {len(problems)} problems to {out}")


if __name__ == "__main__":
    try:
        main()
    except ProblemFileError as e:  # the message names file and line: no traceback needed
        raise SystemExit(f"error: {e}") from None
