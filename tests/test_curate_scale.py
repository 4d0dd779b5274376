"""Curation at any size: kept sets written in chunks from texts read row group by row group,
and candidate texts cut to the aggregator's prompt budget (as the prompt builder cuts them)."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
from test_curate import curate_settings, make_pool, run

from confagg import curate as c
from confagg.aggregator_prompt import render_prompt
from confagg.tables import SAMPLES, SETS, TableWriter, read_table


def _small_row_groups(paths, row_group_bytes=400):
    """Rewrite the samples shards with row groups of a few rows each."""
    for path in paths:
        table = read_table(path, SAMPLES)
        with TableWriter(path, SAMPLES, row_group_bytes=row_group_bytes) as writer:
            writer.write(table)
        assert pq.ParquetFile(path).metadata.num_row_groups > 8


def test_chunks_and_row_groups_do_not_change_the_sets(tmp_path, monkeypatch):
    pool_paths = make_pool(tmp_path, shards=3)
    settings = {"sets_per_problem": 2, "set_size": 4}
    whole = run(tmp_path, pool_paths, settings)
    _small_row_groups(pool_paths[1])
    monkeypatch.setattr(c, "CHUNK_CANDIDATES", 5)  # one set per chunk
    chunked = run(tmp_path, pool_paths, settings)
    assert chunked == whole
    train, val, _ = whole
    assert len(train) > 10 and len(val) > 2
    # sets in problem then set order, as the problems file lists them
    ids = [s["set_id"] for s in train]
    assert ids == sorted(ids, key=lambda x: (int(x[1:3]), int(x.split("/")[1])))


def _long_pool(tmp_path, tok):
    """A pool whose answerless (truncated) samples have long thinking texts; every sample's
    ``num_tokens`` is its text's length in ``tok``'s tokens (the generator's count)."""
    pool_paths = make_pool(tmp_path, problems=6, samples=8)
    for path in pool_paths[1]:
        table = read_table(path, SAMPLES)
        texts = [
            t if "</think>" in t else f"<think>start {i} " + "so we try again. " * (40 * i) + "end"
            for i, t in enumerate(table.column("text").to_pylist())
        ]
        table = table.set_column(2, "text", [texts])
        tokens = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        table = table.set_column(4, "num_tokens", pa.array(tokens, pa.int32()))
        with TableWriter(path, SAMPLES) as writer:
            writer.write(table)
    return pool_paths


def test_texts_longer_than_the_prompt_budget_are_cut_as_prompts_cut_them(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    _, samples, scores, grades = pool_paths = _long_pool(tmp_path, tok)
    budget = 300
    out = tmp_path / "cut"
    c.main(
        ["--problems", str(tmp_path / "pool.jsonl"), "--samples", *samples, "--scores", *scores,
         "--grades", *grades,
         "--settings", json.dumps(curate_settings(0, budget, set_size=4, easy_ratio=1.0)),
         "--train", str(out / "train.parquet"), "--val", str(out / "val.parquet"),
         "--summary", str(out / "summary.json")]
    )  # fmt: skip
    cut_sets = read_table(out / "train.parquet", SETS).to_pylist()
    cut_sets += read_table(out / "val.parquet", SETS).to_pylist()
    whole_sets = [*run(tmp_path, pool_paths, {"set_size": 4, "easy_ratio": 1.0})[:2]]
    whole_sets = whole_sets[0] + whole_sets[1]
    assert [s["set_id"] for s in cut_sets] == [s["set_id"] for s in whole_sets]

    def tokens(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])

    cut = 0
    for cut_set, whole_set in zip(cut_sets, whole_sets, strict=True):
        for a, b in zip(cut_set["candidates"], whole_set["candidates"], strict=True):
            if tokens(b["text"]) <= c.CUT_MARGIN * budget:
                assert a["text"] == b["text"]  # what a prompt can show whole is kept whole
                continue
            cut += 1
            head, rest = a["text"].split("\n[... ")
            omitted, tail = re.fullmatch(
                r"(\d+) tokens omitted \.\.\.\]\n(.*)", rest, re.S
            ).groups()
            assert b["text"].startswith(head) and b["text"].endswith(tail)
            # each end keeps more than the builder can show of it, and the count is close
            assert budget / 2 < tokens(head) <= 1.05 * c.CUT_MARGIN * budget / 2
            assert budget / 2 < tokens(tail) <= 1.05 * c.CUT_MARGIN * budget / 2
            true_omitted = tokens(b["text"]) - tokens(head) - tokens(tail)
            assert abs(int(omitted) - true_omitted) <= 0.02 * true_omitted + 2
    summary = json.loads((out / "summary.json").read_text())
    assert cut > 3 and summary["samples"]["cut_to_prompt_budget"]["texts"] == cut
    assert summary["samples"]["cut_to_prompt_budget"]["max_prompt_tokens"] == budget

    # a prompt built from the cut texts shows what one built from the whole texts shows (the
    # same text around each cut, which may move by a token: the joined text tokenizes anew)
    cfg = {"max_prompt_tokens": budget, "confidence": {"enabled": False}, "think_end": "</think>"}
    marker = re.compile(r"\n\[\.\.\. \d+ tokens omitted \.\.\.\]\n")
    for cut_set, whole_set in zip(cut_sets, whole_sets, strict=True):
        a = render_prompt(tok, cut_set["problem"], cut_set["candidates"], cfg).text
        b = render_prompt(tok, whole_set["problem"], whole_set["candidates"], cfg).text
        pieces_a, pieces_b = marker.split(a), marker.split(b)
        assert len(pieces_a) == len(pieces_b)
        for x, y in zip(pieces_a, pieces_b, strict=True):
            assert abs(len(x) - len(y)) <= 8 and y[8 : len(y) - 8] in x
