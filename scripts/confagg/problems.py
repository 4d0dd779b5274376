"""Problem sets: load ``{id, problem, answer}`` records from any configured source, check them,
and write and read the normalised JSONL every later stage reads (``confagg.prepare`` writes it,
``confagg.check`` checks its prompts' lengths).

Sources (config ``source:``): ``{path: file.jsonl|file.parquet}``, ``{hub: dataset-id, split:,
subset:, revision:}`` (Hugging Face datasets, run on the login node by a local rule), ``{url: ...}``
or ``{demo: {n:, seed:}}`` (generated arithmetic problems with exact answers for the CPU demo).
``fields:`` maps the source's column names onto ``id``/``problem``/``answer``. ``load_source``
also tells what exactly was read (``record``: the hub commit, a file's sha256).
"""

from __future__ import annotations

import json
import math
import numbers
import random
from collections.abc import Iterable, Mapping
from pathlib import Path

from confagg.files import OutputSet, atomic_path
from confagg.fingerprints import sha256
from confagg.provenance import is_commit, pinned_mismatch

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
    dataset: str,
    split: str,
    subset: str | None,
    fields: Mapping[str, str] | None = None,
    revision: str | None = None,
    record: dict | None = None,
) -> list[dict]:
    """Problems from a Hugging Face dataset at ``revision`` (None: the default branch; needs
    network: a local rule on the login node). ``record``, when given, receives the ``commit``
    read and a ``note`` on how it is known: ``datasets`` builds a hub dataset under its commit
    hash, and offline reads the latest cached copy under the hash it was built with."""
    import datasets

    origin = f"{dataset}[{split}]" + (f"@{revision}" if revision else "")
    builder = datasets.load_dataset_builder(dataset, subset, revision=revision)
    commit = builder.hash if is_commit(builder.hash) else None
    cached = builder.__module__.endswith("packaged_modules.cache.cache")
    mismatch = pinned_mismatch(revision, commit)
    if mismatch:
        raise ProblemFileError(
            f"{origin}: {mismatch} (the latest copy in the datasets cache, the hub being out "
            "of reach): run where the hub is reachable, or pin the cached commit"
        )
    builder.download_and_prepare()
    ds = builder.as_dataset(split=split)
    if record is not None:
        note = "the latest cached copy (the hub out of reach)" if cached else "from the hub"
        if commit is None:
            note = "datasets did not name the commit it read"
        elif cached and revision is not None and not is_commit(revision):
            note += f", not checked against {revision!r}"
        record.update(commit=commit, note=note)
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


def load_source(
    source: Mapping, fields: Mapping[str, str] | None, dest: Path, record: dict | None = None
) -> list[dict]:
    """Problems from one configured ``source`` mapping (see the module docstring). ``record``,
    when given, receives what was read: ``kind`` (path, url, hub or demo), ``revision`` (asked
    for), ``commit`` (the hub commit read), ``sha256`` (of the file read) and a ``note``."""
    info: dict = {"kind": None, "revision": None, "commit": None, "sha256": None, "note": None}
    if "path" in source:
        problems = load_file(source["path"], fields)
        info.update(kind="path", sha256=sha256(source["path"]), note="a local file")
    elif "hub" in source:
        revision = source.get("revision")
        info.update(kind="hub", revision=revision)
        problems = load_hub(
            source["hub"], source.get("split", "test"), source.get("subset"), fields, revision, info
        )
    elif "url" in source:
        download = dest.with_name(dest.stem + ".download")
        problems = load_url(source["url"], download, fields)
        target = download_path(source["url"], download)
        info.update(kind="url", sha256=sha256(target), note=f"downloaded to {target}")
    elif "demo" in source:
        problems = demo_problems(source["demo"]["n"], source["demo"]["seed"])
        info.update(kind="demo", note="generated (confagg.problems.demo_problems)")
    else:
        raise ProblemFileError(f"unknown source {dict(source)}: expected path, hub, url or demo")
    if record is not None:
        record.update(info)
    return problems


def write_problems(
    problems: list[dict], path: str | Path, together: OutputSet | None = None
) -> None:
    """Write the normalised problem set as JSONL, atomically (``together``: see
    ``tables.OutputSet``)."""
    with atomic_path(path, together) as tmp, open(tmp, "w", encoding="utf-8") as f:
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
