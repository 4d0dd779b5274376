"""Prepare stage (rule ``prepare_problems``): one data set's problems from its configured source,
normalised to the ``{id, problem, answer}`` JSONL every later stage reads (``confagg.problems``).

    python -m confagg.prepare --source JSON --fields JSON --limit N OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from confagg.problems import ProblemFileError, load_source, write_problems


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="the config's source mapping, as JSON")
    ap.add_argument("--fields", default="{}", help="field-name mapping, as JSON")
    ap.add_argument("--limit", type=int, default=None, help="keep the first N problems")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    problems = load_source(json.loads(args.source), json.loads(args.fields), out)
    if args.limit:
        problems = problems[: args.limit]
    write_problems(problems, out)
    print(f"wrote {len(problems)} problems to {out}")


if __name__ == "__main__":
    try:
        main()
    except ProblemFileError as e:  # the message names file and line: no traceback needed
        raise SystemExit(f"error: {e}") from None
