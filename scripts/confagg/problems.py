"""Problem sets: load ``{id, problem, answer}`` records from any configured source, check them,
and write the normalised JSONL every later stage reads.

Sources (config ``source:``): ``{path: file.jsonl|file.parquet}``, ``{hub: dataset-id, split:,
subset:}`` (Hugging Face datasets, run on the login node by a local rule), ``{url: ...}`` or
``{demo: {n:, seed:}}`` (generated arithmetic problems with exact answers for the CPU demo).
``fields:`` maps the source's column names onto ``id``/``problem``/``answer``.
"""

from __future__ import annotations

import json
import math
import numbers
import random
from collections.abc import Iterable, Mapping
from pathlib import Path

from confagg.tables import atomic_path

FIELDS = ("id", "problem", "answer")


class ProblemFileError(ValueError):
    """A problem file that cannot be used; the message names the file and line."""


def _scalar_text(value, where: str, theirs: str) -> str:
    """A field's value as text: strings as they are, numbers written out; anything else (a
    boolean, a list, an object, NaN) is refused, since ``str()`` would silently turn ``true``
    or ``[1, 2]`` into an answer nobody wrote."""
    if isinstance(value, str):
        return value
    if (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and (isinstance(value, numbers.Integral) or math.isfinite(value))
    ):
        return str(value)
    shown = json.dumps(value, default=str, ensure_ascii=False)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise ProblemFileError(
        f"{where}: field {theirs!r} must be a string or a number, got {shown} "
        f"({type(value).__name__})"
    )


def _check_records(
    records: Iterable[tuple[str, Mapping]],
    fields: Mapping[str, str],
    origin: str,
    locations: list[str] | None = None,
) -> list[dict]:
    """Map field names, check every record, return ``[{id, problem, answer}]``.

    ``records`` yields (location, record) pairs, location being e.g. ``file.jsonl:12``.
    ``fields`` maps our names to the source's; an ``id`` field mapped to null means "use the
    row number". ``locations``, when given, receives each kept record's location.
    """
    out: list[dict] = []
    seen: dict[str, str] = {}
    for where, rec in records:
        if not isinstance(rec, Mapping):
            raise ProblemFileError(
                f"{where}: expected a JSON object with fields "
                f"{list(fields.values())}, got {type(rec).__name__}"
            )
        row = {}
        for ours in FIELDS:
            theirs = fields.get(ours, ours)
            if ours == "id" and theirs is None:
                value = f"{len(out):05d}"
            elif theirs not in rec or rec[theirs] is None:
                raise ProblemFileError(
                    f"{where}: missing field {theirs!r} (mapped to {ours!r}); "
                    f"the record has {sorted(rec)}"
                )
            else:
                value = _scalar_text(rec[theirs], where, theirs)
            value = value.strip()
            if not value:
                raise ProblemFileError(f"{where}: field {theirs!r} is empty")
            row[ours] = value
        if row["id"] in seen:
            raise ProblemFileError(
                f"{where}: duplicate problem id {row['id']!r} (first at {seen[row['id']]})"
            )
        seen[row["id"]] = where
        out.append(row)
        if locations is not None:
            locations.append(where)
    if not out:
        raise ProblemFileError(f"{origin}: no problems (the file is empty)")
    return out


def _jsonl_records(path: Path):
    data = path.read_bytes()
    for lineno, raw in enumerate(data.splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProblemFileError(
                f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})"
            ) from None
        if not line.strip():
            continue
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            raise ProblemFileError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None


def _table_records(rows: Iterable[Mapping], origin: str):
    for i, rec in enumerate(rows):
        yield f"{origin} row {i}", rec


def load_file(
    path: str | Path,
    fields: Mapping[str, str] | None = None,
    locations: list[str] | None = None,
) -> list[dict]:
    """Problems from a local JSONL or parquet file (``locations``: see ``_check_records``)."""
    path = Path(path)
    fields = fields or {}
    if not path.is_file():
        raise ProblemFileError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return _check_records(_table_records(rows, str(path)), fields, str(path), locations)
    return _check_records(_jsonl_records(path), fields, str(path), locations)


def load_hub(
    dataset: str, split: str, subset: str | None, fields: Mapping[str, str] | None = None
) -> list[dict]:
    """Problems from a Hugging Face dataset (needs network: a local rule on the login node)."""
    import datasets

    ds = datasets.load_dataset(dataset, subset, split=split)
    origin = f"{dataset}[{split}]"
    return _check_records(_table_records(ds, origin), fields or {}, origin)


def download_path(url: str, dest: Path) -> Path:
    """Where ``load_url`` keeps the downloaded file: ``dest`` plus the URL's file type (appended,
    so that it never lands on the normalised output itself)."""
    suffix = ".parquet" if url.split("?")[0].endswith(".parquet") else ".jsonl"
    return dest.with_name(dest.name + suffix)


def load_url(url: str, dest: Path, fields: Mapping[str, str] | None = None) -> list[dict]:
    """Problems from a JSONL/parquet file at a URL (downloaded to ``dest`` first)."""
    import urllib.request

    target = download_path(url, dest)
    with atomic_path(target) as tmp, urllib.request.urlopen(url, timeout=120) as r:
        tmp.write_bytes(r.read())
    return load_file(target, fields)


def demo_problems(n: int, seed: int) -> list[dict]:
    """Seeded arithmetic word problems with exact integer answers, for the CPU demo.

    A mix of easy and harder forms so that a 135M model gets some right and some wrong,
    which is what confidence scores and aggregation need to have anything to say.
    """
    rng = random.Random(seed)
    names = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana"]
    things = ["apples", "books", "coins", "marbles", "pens", "stamps"]
    out = []
    for i in range(n):
        kind = i % 4
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        if kind == 0:
            problem, answer = f"What is {a} + {b}?", a + b
        elif kind == 1:
            a, b = rng.randint(11, 49), rng.randint(11, 49)
            problem, answer = f"What is {a} + {b}?", a + b
        elif kind == 2:
            problem, answer = f"What is {a} times {b}?", a * b
        else:
            who, what = rng.choice(names), rng.choice(things)
            c = rng.randint(1, a)
            problem = (
                f"{who} has {a + b} {what} and gives away {c}. How many {what} does {who} have now?"
            )
            answer = a + b - c
        out.append({"id": f"demo-{seed}-{i:04d}", "problem": problem, "answer": str(answer)})
    return out


def load_source(source: Mapping, fields: Mapping[str, str] | None, dest: Path) -> list[dict]:
    """Problems from one configured ``source`` mapping (see the module docstring)."""
    if "path" in source:
        return load_file(source["path"], fields)
    if "hub" in source:
        return load_hub(source["hub"], source.get("split", "test"), source.get("subset"), fields)
    if "url" in source:
        return load_url(source["url"], dest.with_name(dest.stem + ".download"), fields)
    if "demo" in source:
        return demo_problems(source["demo"]["n"], source["demo"]["seed"])
    raise ProblemFileError(f"unknown source {dict(source)}: expected path, hub, url or demo")


def write_problems(problems: list[dict], path: str | Path) -> None:
    """Write the normalised problem set as JSONL, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({k: p[k] for k in FIELDS}, ensure_ascii=False) + "\n")


def read_problems(path: str | Path) -> list[dict]:
    """Read a normalised problem set (as written by ``write_problems``)."""
    return load_file(path)


def shard_of(problems: list[dict], shard: int, shards: int) -> list[dict]:
    """The ``shard``-th of ``shards`` contiguous, near-equal slices of ``problems``."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
    n = len(problems)
    return problems[shard * n // shards : (shard + 1) * n // shards]


# --- prompt lengths against the token budgets (rule check_problems) ---

# config.json keys vLLM 0.32 reads a model's context length from: the smallest present, except
# that model_max_length (Command-R) wins when set
_MAX_LEN_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)


def model_max_len(model_dir: str | Path) -> int | None:
    """The context length vLLM gives a model folder when ``max_model_len`` is not set; None
    when its config.json does not say plainly (rope scaling: then vLLM decides)."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    cfg = cfg.get("text_config") or cfg
    for key in ("rope_scaling", "rope_parameters"):
        rope = cfg.get(key) or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            return None
    if isinstance(cfg.get("model_max_length"), int):
        return cfg["model_max_length"]
    values = [cfg[k] for k in _MAX_LEN_KEYS if isinstance(cfg.get(k), int) and cfg[k] > 0]
    return min(values) if values else None


def source_locations(source: Mapping, fields: Mapping | None, out: Path):
    """``locate(index, problem id)``: where a normalised problem sits in the configured source
    (``file.jsonl:12``, ``file.parquet row 3``, ``dataset[split] row 3``), so that a message
    sends the user to the right line; None when that cannot be told cheaply (generated
    problems, a source changed since)."""
    if "path" in source or "url" in source:
        path = (
            Path(source["path"])
            if "path" in source
            else download_path(source["url"], out.with_name(out.stem + ".download"))
        )
        locations: list[str] = []
        try:
            problems = load_file(path, fields, locations)
        except ProblemFileError:
            return lambda index, pid: None
        by_id = {p["id"]: where for p, where in zip(problems, locations, strict=True)}
        return lambda index, pid: by_id.get(pid)
    if "hub" in source:  # the normalised file keeps the hub's rows in order (a limit cuts the end)
        origin = f"{source['hub']}[{source.get('split', 'test')}]"
        return lambda index, pid: f"{origin} row {index}"
    return lambda index, pid: None


def _budget(context: int | None, reserved: int | None, context_key: str, reserved_key: str):
    """(tokens a prompt may have, why) given a context length and the tokens kept free."""
    if context is None:
        return None, "no context length known"
    return context - (reserved or 0), f"{context_key} {context} - {reserved_key} {reserved}"


def check_prompts(
    problems_path: str | Path,
    settings: Mapping,
    generator: str | Path,
    aggregator: str | Path,
    log=print,
) -> dict:
    """Every problem's prompt against the token budgets, before any GPU job.

    Solver: the rendered prompt must leave ``sampling.max_tokens`` free in the engine's
    ``max_model_len`` (else vLLM fails the whole shard). Aggregator: its prompt without the
    candidate texts (problem, ``set_size`` headers with scores, note, instruction, chat template:
    what ``aggregator_prompt.render_prompt`` never cuts) must fit ``max_prompt_tokens`` (or,
    when that is null, the context left after the aggregator's ``max_tokens``). Raises
    ProblemFileError naming the file, line and id of every problem over a budget; returns the
    longest prompts and the budgets (the rule writes them as a record).
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from confagg.aggregator_prompt import count_tokens, render_prompt
    from confagg.confidence import METRICS
    from confagg.prompts import render, solver_messages

    problems_path = Path(problems_path)
    problems = read_problems(problems_path)
    locate = source_locations(settings["source"], settings.get("fields"), problems_path)
    solver, agg = settings["solver"], settings["aggregator"]

    hf_logging.set_verbosity_error()  # not "longer than the model's maximum": we say that
    tok = AutoTokenizer.from_pretrained(str(generator))
    same = Path(aggregator).resolve() == Path(generator).resolve()
    agg_tok = tok if same else AutoTokenizer.from_pretrained(str(aggregator))
    solver_budget, solver_why = _budget(
        solver["max_model_len"] or model_max_len(generator),
        solver["max_tokens"],
        "generator.engine.max_model_len" if solver["max_model_len"] else "the model's context",
        "sampling.max_tokens",
    )
    if agg["prompt"].get("max_prompt_tokens") is not None:
        agg_budget = agg["prompt"]["max_prompt_tokens"]
        agg_why = f"aggregator.prompt.max_prompt_tokens {agg_budget}"
    elif agg["max_tokens"] is not None:  # evaluation: the engine's context minus the answer
        agg_budget, agg_why = _budget(
            agg["max_model_len"] or model_max_len(aggregator),
            agg["max_tokens"],
            "max_model_len",
            "evaluation.aggregator_sampling.max_tokens",
        )
    else:
        agg_budget, agg_why = None, "no budget"
    # confidences shown (the longer prompt); candidate texts reduced to a cut marker
    agg_cfg = dict(agg["prompt"], max_prompt_tokens=None)
    agg_cfg["confidence"] = dict(agg_cfg.get("confidence") or {}, enabled=True)
    placeholders = [
        {"text": "[... 100000 tokens omitted ...]", **dict.fromkeys(METRICS, 0.5 + i)}
        for i in range(agg["set_size"])
    ]

    over: list[str] = []
    longest = {"solver": (0, None), "aggregator": (0, None)}
    for line, p in enumerate(problems, start=1):
        messages = solver_messages(p["problem"], solver["prompt"])
        counts = {
            "solver": count_tokens(tok, render(tok, messages, solver["chat_template_kwargs"])),
            "aggregator": render_prompt(
                agg_tok, p["problem"], placeholders, agg_cfg, agg["chat_template_kwargs"]
            ).num_tokens,
        }
        for role, n in counts.items():
            longest[role] = max(longest[role], (n, p["id"]), key=lambda x: x[0])
        why = []
        if solver_budget is not None and counts["solver"] > solver_budget:
            why.append(f"solver prompt {counts['solver']} tokens > {solver_budget} ({solver_why})")
        if agg_budget is not None and counts["aggregator"] > agg_budget:
            why.append(
                f"aggregator prompt without candidate texts ({agg['set_size']} candidates) "
                f"{counts['aggregator']} tokens > {agg_budget} ({agg_why})"
            )
        if why:
            where = f"{problems_path}:{line}"
            origin = locate(line - 1, p["id"])
            where = f"{origin} (normalised: {where})" if origin else where
            over.append(f"{where}, problem id {p['id']!r}: " + "; ".join(why))
    if over:
        shown = over[:10] + ([f"... and {len(over) - 10} more"] if len(over) > 10 else [])
        raise ProblemFileError(
            f"{len(over)} of {len(problems)} problems do not fit the token budgets:\n  "
            + "\n  ".join(shown)
            + "\nShorten or remove them in the source, or raise the budgets named above."
        )
    record = {
        "problems": len(problems),
        "solver": {"budget": solver_budget, "why": solver_why},
        "aggregator": {"budget": agg_budget, "why": agg_why},
    }
    for role, (n, pid) in longest.items():
        record[role].update(longest_tokens=n, longest_id=pid)
    log(
        f"{len(problems)} problems fit: longest solver prompt {longest['solver'][0]} tokens "
        f"(budget {solver_budget}), longest aggregator prompt without candidate texts "
        f"{longest['aggregator'][0]} tokens (budget {agg_budget})"
    )
    return record


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m confagg.problems prepare --source JSON --fields JSON --limit N OUT`` (the
    normalised problem set) and ``python -m confagg.problems check --problems FILE --generator DIR
    --aggregator DIR --settings JSON OUT`` (prompt lengths against the token budgets)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="normalise a problem set from its configured source")
    prep.add_argument("--source", required=True, help="the config's source mapping, as JSON")
    prep.add_argument("--fields", default="{}", help="field-name mapping, as JSON")
    prep.add_argument("--limit", type=int, default=None, help="keep the first N problems")
    prep.add_argument("out")
    chk = sub.add_parser("check", help="every prompt within the token budgets")
    chk.add_argument("--problems", required=True, help="normalised problem JSONL")
    chk.add_argument("--generator", required=True, help="the generator's model folder")
    chk.add_argument("--aggregator", required=True, help="the aggregator's model folder")
    chk.add_argument("--settings", required=True, help="source, solver, aggregator (JSON)")
    chk.add_argument("out", help="JSON record of the longest prompts")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.command == "check":
        from confagg.tables import write_json

        record = check_prompts(
            args.problems, json.loads(args.settings), args.generator, args.aggregator
        )
        print(json.dumps(record, indent=2))
        # the output holds nothing that an aggregator setting changes: the sampling jobs that
        # read it see the same checksum after such a recheck and are not rerun
        write_json({k: record[k] for k in ("problems", "solver")}, out)
        return
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
