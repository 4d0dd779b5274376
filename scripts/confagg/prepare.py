"""Prepare stage (rule ``prepare_problems``): one data set's problems from its configured source,
normalised to the ``{id, problem, answer}`` JSONL every later stage reads (``confagg.problems``),
with a record of what was read beside it (``confagg.provenance``).

    python -m confagg.prepare --settings JSON --source-record JSON_OUT OUT

The record (``<dataset>.source.json``): ``source`` (the configured mapping), ``kind`` (path, url,
hub, demo), ``revision`` (asked for; null: the hub's default branch), ``commit`` (the hub commit
read; null where there is none or it is not known), ``sha256`` (of the file read: path, url),
``note`` (how the commit is known, or why not), ``fields``, ``limit``, ``problems`` (kept).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from confagg.files import OutputSet, write_json
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
    ap.add_argument("--source-record", required=True, help="JSON: what was read (with OUT)")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    settings = load(Settings, args.settings)
    out = Path(args.out)
    read: dict = {}
    problems = load_source(settings.source, settings.fields, out, read)
    if settings.limit:
        problems = problems[: settings.limit]
    record = {
        **read,
        "source": settings.source,
        "fields": settings.fields,
        "limit": settings.limit,
        "problems": len(problems),
    }
    with OutputSet([args.source_record, out]) as outputs:  # the problems last: they say done
        write_json(record, args.source_record, together=outputs)
        write_problems(problems, out, together=outputs)
    print(f"wrote {len(problems)} problems to {out}")


if __name__ == "__main__":
    try:
        main()
    except ProblemFileError as e:  # the message names file and line: no traceback needed
        raise SystemExit(f"error: {e}") from None
