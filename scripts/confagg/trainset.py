"""The trainer's data: every training set rendered into the aggregator's prompt, once.

The sets are read in batches (``tables.iter_batches``: memory stays about one batch whatever
the size of ``curated/train.parquet``) and each is rendered by ``confagg.aggregator_prompt``,
the builder evaluation uses. The rendered prompts go to a cache file beside the checkpoints
(``<out>/checkpoints/prompts-<key>.arrow``), named after what they depend on (the sets file's
content, the aggregator settings, the tokenizer, the row limit): a resumed run reads the cache
instead of rendering every prompt again. The trainer gets the prompts as a memory-mapped
``datasets.Dataset`` (columns ``prompt``, ``gold``, ``set_id``, ``prompt_tokens``), so they are
never all in memory either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from confagg.files import atomic_path
from confagg.tables import SETS, iter_batches

# The rendered prompts of a cache file (an Arrow stream, so that it can be memory-mapped).
PROMPTS = pa.schema(
    [
        pa.field("set_id", pa.string(), nullable=False),
        pa.field("prompt", pa.large_string(), nullable=False),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("prompt_tokens", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),  # candidate texts cut to the budget
    ]
)
CACHE_PREFIX = "prompts-"


@dataclass(frozen=True)
class Prompts:
    """A cache file of rendered prompts and what the trainer's log says about them."""

    path: Path
    sets: int
    truncated: int
    min_tokens: int
    max_tokens: int

    def describe(self, source: str) -> str:
        return (
            f"{self.sets} prompts from {source}: {self.min_tokens}-{self.max_tokens} tokens, "
            f"{self.truncated} truncated to max_prompt_tokens"
        )

    def dataset(self):
        """The prompts as a ``datasets.Dataset``, memory-mapped from the cache file."""
        from datasets import Dataset

        return Dataset.from_file(str(self.path))


def cache_key(sets_sha256: str, aggregator: Mapping, tokenizer, limit: int | None) -> str:
    """What a cache file's prompts depend on, as a short hash."""
    identity = {
        "sets": sets_sha256,
        "aggregator": aggregator,
        "tokenizer": [type(tokenizer).__name__, len(tokenizer), tokenizer.chat_template],
        "limit": limit,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _rendered(path: str, tokenizer, aggregator: Mapping, limit: int | None) -> Iterator[pa.Table]:
    """The rendered prompts of a SETS file, batch by batch."""
    from confagg.aggregator_prompt import PromptTooLong, render_prompt

    left = limit
    columns = ["set_id", "problem", "gold", "candidates"]
    for batch in iter_batches(path, SETS, columns=columns):
        rows = batch.to_pylist()[:left] if left is not None else batch.to_pylist()
        out: dict[str, list] = {name: [] for name in PROMPTS.names}
        for row in rows:
            try:
                rendered = render_prompt(
                    tokenizer,
                    row["problem"],
                    row["candidates"],
                    aggregator["prompt"],
                    aggregator["chat_template_kwargs"],
                )
            except PromptTooLong as e:
                raise PromptTooLong(f"{path}: set {row['set_id']}: {e}") from None
            out["set_id"].append(row["set_id"])
            out["prompt"].append(rendered.text)
            out["gold"].append(row["gold"])
            out["prompt_tokens"].append(rendered.num_tokens)
            out["truncated"].append(rendered.truncated)
        yield pa.table(out, schema=PROMPTS)
        if left is not None:
            left -= len(rows)
            if left <= 0:
                return


def render_cache(path: str, tokenizer, aggregator: Mapping, cache: Path, limit: int | None) -> None:
    """Render the prompts of the SETS file ``path`` (its first ``limit`` sets) into ``cache``,
    atomically: a run killed while rendering leaves no cache behind."""
    with (
        atomic_path(cache) as tmp,
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_stream(sink, PROMPTS) as writer,
    ):
        for table in _rendered(path, tokenizer, aggregator, limit):
            writer.write_table(table)


def open_cache(cache: Path, source: str) -> Prompts:
    """The :class:`Prompts` of a cache file (its small columns only are read here)."""
    import pyarrow.compute as pc

    with pa.memory_map(str(cache)) as source_file:
        table = pa.ipc.open_stream(source_file).read_all()
        if table.num_rows == 0:
            raise ValueError(f"{source}: no training sets")
        tokens = table.column("prompt_tokens")
        return Prompts(
            path=cache,
            sets=table.num_rows,
            truncated=int(pc.sum(table.column("truncated")).as_py() or 0),
            min_tokens=pc.min(tokens).as_py(),
            max_tokens=pc.max(tokens).as_py(),
        )


def load(
    path: str,
    tokenizer,
    aggregator: Mapping,
    folder: Path,
    sets_sha256: str,
    limit: int | None = None,
    render: bool = True,
) -> Prompts:
    """The prompts of the SETS file ``path``, from the cache in ``folder`` or rendered into it
    first (only where ``render``: the main process renders, the others wait for it and read)."""
    cache = folder / f"{CACHE_PREFIX}{cache_key(sets_sha256, aggregator, tokenizer, limit)}.arrow"
    if render and not cache.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        render_cache(path, tokenizer, aggregator, cache, limit)
    return open_cache(cache, path)


def remove_stale(folder: Path, keep: set[Path]) -> None:
    """Remove the cache files in ``folder`` other than ``keep`` (of other sets or settings)."""
    for old in folder.glob(f"{CACHE_PREFIX}*.arrow"):
        if old not in keep:
            old.unlink(missing_ok=True)
