"""The streaming sample stage on the tiny Qwen3 through vLLM: the same texts and confidences as
``LLM.generate``; kill -9 at every point of a shard's life, then rerun (nothing lost, duplicated
or changed); torn parts repaired by deleting exactly the named file; parts never overwritten; a
complete output never rewritten; the merge in bounded row groups."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from confagg import parts as parts_mod
from confagg import streaming
from confagg import tables as tables_mod
from confagg.confidence import token_confidence
from confagg.engine import make_engine, release_engine, sampling_params
from confagg.parts import PartError, Parts, parts_dir
from confagg.problems import demo_problems, write_problems
from confagg.prompts import render, solver_messages
from confagg.sample import SampleSettings, fingerprint, sample_shard
from confagg.seeds import derive_seed
from confagg.settings import from_mapping
from confagg.streaming import StreamingSampler
from confagg.tables import SAMPLES, read_table, row_nbytes
from conftest import BIN

ENGINE = {"max_model_len": 1024, "kv_cache_memory_bytes": 256 * 2**20, "enforce_eager": True}
PROMPT = {"instruction": "Answer in \\boxed{}.", "system": None, "example": None}


def make_settings(n=3, max_tokens=32, in_flight=2, **sampling) -> SampleSettings:
    return from_mapping(
        SampleSettings,
        {
            "sampling": {
                "n": n,
                "temperature": 1.0,
                "top_p": 1.0,
                "top_k": -1,
                "min_p": 0.0,
                "max_tokens": max_tokens,
                "logprobs": 20,
                **sampling,
            },
            "problems_in_flight": in_flight,
            "shards": 1,
            "engine": ENGINE,
            "prompt": PROMPT,
            "chat_template_kwargs": {},
        },
    )


@pytest.fixture(scope="module")
def llm(tiny_model):
    engine = make_engine(str(tiny_model), 0, ENGINE)
    yield engine
    release_engine(engine)


def quiet(_msg: str) -> None:
    pass


def rows_by_key(table: pa.Table) -> dict[tuple[str, int], tuple]:
    """(problem, sample) -> (text, answer, num_tokens, finish_reason, confidences)."""
    d = table.to_pydict()
    return {
        (pid, idx): (text, ans, nt, fr, np.asarray(conf, np.float16).tobytes())
        for pid, idx, text, ans, nt, fr, conf in zip(
            d["problem_id"],
            d["sample_idx"],
            d["text"],
            d["answer"],
            d["num_tokens"],
            d["finish_reason"],
            d["token_confidence"],
            strict=True,
        )
    }


def keys_of(table: pa.Table) -> list[tuple[str, int]]:
    pids, idx = table.column("problem_id").to_pylist(), table.column("sample_idx").to_pylist()
    return list(zip(pids, idx, strict=True))


def parts_rows(out: Path) -> dict[tuple[str, int], tuple]:
    rows = {}
    for part in Parts(out).files():
        part_rows = rows_by_key(pq.read_table(part))
        assert not set(part_rows) & set(rows), f"{part} repeats a sample"
        rows.update(part_rows)
    return rows


def stop_at(n_admitted: int):
    """request_params that fails when the problem after ``n_admitted`` is admitted: the stage
    stops there with the problems before it written (a crash of the job, for building parts)."""
    seen = []

    def params(problem):
        seen.append(problem["id"])
        if len(seen) > n_admitted:
            raise RuntimeError("stopped by the test")
        return {}

    return params


def test_same_texts_and_confidences_as_generate(llm, tiny_model, tmp_path):
    """Each problem's request carries its own seed (derived from the shard's seed and the
    problem), so LLM.generate given the same seeds samples the same: texts (decoded once from
    token ids) and confidences (taken inside the engine) must equal what it returns; so must
    the confidences read from vLLM's own logprob outputs (capture_in_engine=False)."""
    problems = demo_problems(4, seed=9)
    settings = make_settings(n=3, max_tokens=200, in_flight=4)
    tables = []
    for capture in (True, False):
        out = tmp_path / f"capture-{capture}.parquet"
        llm.reset_prefix_cache()  # every run computes its prompts afresh
        sample_shard(
            problems, out, str(tiny_model), 0, settings, quiet, llm, capture_in_engine=capture
        )
        tables.append(read_table(out, SAMPLES))
    assert rows_by_key(tables[0]) == rows_by_key(tables[1])

    tokenizer = llm.get_tokenizer()
    prompts = [render(tokenizer, solver_messages(p["problem"], PROMPT), {}) for p in problems]
    llm.reset_prefix_cache()
    base = dataclasses.asdict(settings.sampling)
    params = [sampling_params(base, seed=derive_seed(0, p["id"])) for p in problems]
    outs = llm.generate(prompts, params, use_tqdm=False)
    table = tables[0]
    comps = [c for o in outs for c in o.outputs]
    assert table.column("problem_id").to_pylist() == [p["id"] for p in problems for _ in range(3)]
    assert table.column("sample_idx").to_pylist() == [c.index for c in comps]
    assert table.column("text").to_pylist() == [c.text for c in comps]
    assert table.column("num_tokens").to_pylist() == [len(c.token_ids) for c in comps]
    assert table.column("finish_reason").to_pylist() == [c.finish_reason for c in comps]
    for got, c in zip(table.column("token_confidence").to_pylist(), comps, strict=True):
        want = token_confidence(c.logprobs.logprobs, 20).astype(np.float16)
        np.testing.assert_array_equal(np.asarray(got, np.float16), want)
    # both ends of a sample are exercised: the EOS (left out of the text) and the length limit
    assert {"stop", "length"} <= set(table.column("finish_reason").to_pylist())


def test_problems_in_flight_bound_the_engine(llm):
    """At most problems_in_flight problems are in the engine; every problem comes out whole."""
    n, in_flight = 2, 2
    sampler = StreamingSampler(llm, n, 20, 24, in_flight)
    params = sampling_params(
        {"n": n, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": 24, "logprobs": 20},
        output_kind=streaming.delta_output_kind(),
        detokenize=False,
    )
    jobs = [(f"p{i}", f"problem {i} is", params) for i in range(7)]
    done = []
    for finished in sampler.run(jobs):
        assert llm.llm_engine.get_num_unfinished_requests() <= in_flight * n
        assert len(sampler.blocks) <= in_flight
        done += finished
    assert sorted(d.problem_id for d in done) == sorted(j[0] for j in jobs)
    for d in done:
        assert len(d.tokens) == len(d.confidence) == n
        assert [len(t) for t in d.tokens] == [len(c) for c in d.confidence]
        assert all(0 < len(t) <= 24 for t in d.tokens)
    assert sampler.tokens == sum(len(t) for d in done for t in d.tokens)
    assert not sampler.row_of and not sampler.block_of  # nothing left behind


def test_torn_part_is_repaired_by_deleting_that_file(llm, tiny_model, tmp_path):
    problems = demo_problems(6, seed=3)
    settings = make_settings(n=2, max_tokens=16, in_flight=1)
    out = tmp_path / "shard.parquet"
    run = dict(problems=problems, out=out, model=str(tiny_model), seed=0, settings=settings)

    with pytest.raises(RuntimeError, match="stopped by the test"):
        sample_shard(**run, log=quiet, engine=llm, request_params=stop_at(3))
    parts = Parts(out).files()
    assert [p.name for p in parts] == [f"part-0000{i}.parquet" for i in range(3)]
    kept = {p.name: p.read_bytes() for p in parts}
    before = parts_rows(out)
    torn = parts[1]
    torn.write_bytes(kept[torn.name][: len(kept[torn.name]) // 2])

    with pytest.raises(PartError) as err:
        sample_shard(**run, log=quiet, engine=llm)
    msg = str(err.value)
    assert str(torn) in msg and "Delete that one file" in msg and "nothing else is lost" in msg
    assert not out.exists()

    torn.unlink()
    with pytest.raises(RuntimeError, match="stopped by the test"):
        sample_shard(**run, log=quiet, engine=llm, request_params=stop_at(2))
    names = [p.name for p in Parts(out).files()]
    # new parts are numbered past the largest, never into the gap the deleted one left
    assert names == [f"part-0000{i}.parquet" for i in (0, 2, 3, 4)]
    for name in ("part-00000.parquet", "part-00002.parquet"):
        assert (parts_dir(out) / name).read_bytes() == kept[name]

    sample_shard(**run, log=quiet, engine=llm)
    table = read_table(out, SAMPLES)
    after = rows_by_key(table)
    keys = keys_of(table)
    assert keys == [(p["id"], i) for p in problems for i in range(2)]  # all, once, in order
    lost = {k for k in before if k[0] == problems[1]["id"]}  # the torn part's problem
    assert len(lost) == 2
    assert all(after[k] == v for k, v in before.items() if k not in lost)
    assert not parts_dir(out).exists()


def test_new_part_never_replaces_an_existing_file(tmp_path):
    problems = [{"id": f"q{i}", "problem": f"{i}?", "answer": "1"} for i in range(3)]
    settings = make_settings(n=2)
    fp = fingerprint(problems, "m", 0, settings)
    parts = Parts(tmp_path / "s.parquet")

    def table(pid):
        return pa.table(
            {
                "problem_id": [pid, pid],
                "sample_idx": pa.array([0, 1], pa.int32()),
                "text": ["a", "b"],
                "answer": [None, "1"],
                "num_tokens": pa.array([1, 2], pa.int32()),
                "finish_reason": ["stop", "length"],
                "token_confidence": pa.array([[1.0], [2.0, 3.0]], pa.list_(pa.float16())),
            }
        ).cast(SAMPLES)

    first = parts.write(table("q0"), 2, fp)
    original = first.read_bytes()
    parts.next = 0  # as if another writer had taken the same number meanwhile
    second = parts.write(table("q1"), 2, fp)
    assert first.name == "part-00000.parquet" and second.name == "part-00001.parquet"
    assert first.read_bytes() == original
    where = Parts(parts.out).scan({p["id"]: i for i, p in enumerate(problems)}, 2, fp)
    assert where == {"q0": (first, 0), "q1": (second, 0)}
    assert not list(parts.dir.glob(".*.tmp"))


def test_complete_output_is_never_rewritten(llm, tiny_model, tmp_path):
    problems = demo_problems(2, seed=5)
    settings = make_settings(n=2, max_tokens=12)
    out = tmp_path / "shard.parquet"
    sample_shard(problems, out, str(tiny_model), 0, settings, quiet, llm)
    written = out.read_bytes()
    # what a kill while removing the parts folder leaves behind, and a stray temporary
    parts_dir(out).mkdir()
    (parts_dir(out) / "part-00003.parquet").write_bytes(b"left over")
    (parts_dir(out) / ".part.x.tmp").write_bytes(b"")
    log = []
    # no engine can start here (no such model): the stage must not need one
    sample_shard(problems, out, str(tiny_model), 0, settings, log.append, engine=None)
    assert out.read_bytes() == written
    assert not parts_dir(out).exists()
    assert any("nothing to do" in m for m in log)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_parts_of_other_settings_are_refused(llm, tiny_model, tmp_path):
    problems = demo_problems(3, seed=6)
    out = tmp_path / "shard.parquet"
    run = dict(problems=problems, out=out, model=str(tiny_model), seed=0)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        sample_shard(
            **run,
            settings=make_settings(n=2, max_tokens=12, in_flight=1),
            log=quiet,
            engine=llm,
            request_params=stop_at(1),
        )
    assert len(Parts(out).files()) == 1
    with pytest.raises(PartError, match=r"sampling\.temperature: 1\.0 -> 0\.5.*Delete that folder"):
        sample_shard(
            **run,
            settings=make_settings(n=2, max_tokens=12, temperature=0.5),
            log=quiet,
            engine=llm,
        )
    with pytest.raises(PartError, match="problems: "):
        sample_shard(
            **{**run, "problems": problems[:2]},
            settings=make_settings(n=2, max_tokens=12, in_flight=1),
            log=quiet,
            engine=llm,
        )


def test_text_is_what_the_streaming_detokeniser_writes(tiny_model):
    """Texts are decoded once from token ids; a sample cut inside a multi-byte character ends
    before it (vLLM's streaming detokeniser never emits the incomplete bytes), a "stop" sample
    without its stop token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok.encode("ab \u00e9", add_special_tokens=False)
    assert tok.decode(ids[-2:]) == "\u00e9" and len(ids) >= 3  # two byte tokens
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    prompt = tok.encode("Q: what?", add_special_tokens=False)
    samples = [np.array(ids), np.array(ids[:-1]), np.array([*ids, eos])]
    done = streaming.Finished(
        "p",
        samples,
        [np.zeros(len(t), np.float16) for t in samples],
        ["length", "length", "stop"],
        prompt,
    )
    table = streaming.finished_to_table([done], tok)
    assert table.column("text").to_pylist() == ["ab \u00e9", "ab ", "ab \u00e9"]
    assert table.column("num_tokens").to_pylist() == [len(t) for t in samples]
    assert table.schema.equals(SAMPLES, check_metadata=True)


def test_empty_shard_needs_no_engine(tmp_path):
    out = tmp_path / "shard.parquet"
    sample_shard([], out, "no-such-model", 0, make_settings(), quiet, engine=None)
    assert read_table(out, SAMPLES).num_rows == 0 and not parts_dir(out).exists()


def _fake_problem_table(pid: str, n: int, rng, large: bool = False) -> pa.Table:
    lengths = rng.integers(1, 40, n)
    text_type = pa.large_string() if large else pa.string()
    list_type = pa.large_list(pa.float16()) if large else pa.list_(pa.float16())
    return pa.table(
        {
            "problem_id": pa.array([pid] * n, text_type),
            "sample_idx": pa.array(range(n), pa.int32()),
            "text": pa.array([f"{pid}/{i} " * int(k) for i, k in enumerate(lengths)], text_type),
            "answer": pa.array([str(i) for i in range(n)], text_type),
            "num_tokens": pa.array(lengths, pa.int32()),
            "finish_reason": pa.array(["stop"] * n, text_type),
            "token_confidence": pa.array(
                [rng.random(int(k)).astype(np.float16) for k in lengths], list_type
            ),
        }
    )


def test_merge_streams_parts_in_problem_order_in_bounded_row_groups(tmp_path, monkeypatch):
    """Parts written in completion order (one of them with 64-bit offsets, as a schema with
    large_string / large_list writes them) merge into problem order, each row group within
    tables.ROW_GROUP_BYTES of Arrow memory (two problems' worth here)."""
    rng = np.random.default_rng(0)
    n = 3
    problems = [{"id": f"q{i:02d}", "problem": str(i), "answer": "0"} for i in range(7)]
    fp = fingerprint(problems, "m", 0, make_settings(n=n))
    parts = Parts(tmp_path / "s.parquet")
    tables = {
        p["id"]: _fake_problem_table(p["id"], n, rng, large=i == 4) for i, p in enumerate(problems)
    }
    for group in (["q03", "q00"], ["q06"], ["q01", "q04", "q02"], ["q05"]):
        large = "q04" in group
        table = pa.concat_tables(
            [tables[g].cast(tables["q04"].schema) if large else tables[g] for g in group]
        )
        if large:  # a part of a 64-bit schema, as a future SAMPLES could write it
            schema = pa.schema(
                [f.with_type(table.schema.field(f.name).type) for f in SAMPLES],
                metadata=parts_mod._schema(fp).metadata,
            )
            parts.dir.mkdir(exist_ok=True)
            path = parts.dir / f"part-{parts.next:05d}.parquet"
            parts.next += 1
            parts_mod._write_parquet(table, path, schema, n)
        else:
            parts.write(table.cast(SAMPLES), n, fp)
    where = Parts(parts.out).scan({p["id"]: i for i, p in enumerate(problems)}, n, fp)
    one_problem = max(t.cast(SAMPLES).nbytes for t in tables.values())
    monkeypatch.setattr(tables_mod, "ROW_GROUP_BYTES", one_problem * 2)
    rows = parts.merge(where, [p["id"] for p in problems], fp)
    parts.finish()
    assert rows == 7 * n and not parts.dir.exists()
    meta = pq.ParquetFile(parts.out).metadata
    assert 2 <= meta.num_row_groups < 7
    merged = read_table(parts.out, SAMPLES)
    assert merged.column("problem_id").to_pylist() == [p["id"] for p in problems for _ in range(n)]
    want = pa.concat_tables([tables[p["id"]].cast(SAMPLES) for p in problems])
    assert merged.equals(want)
    for rg in range(meta.num_row_groups):
        group = pq.ParquetFile(parts.out).read_row_group(rg).cast(SAMPLES)
        assert row_nbytes(group).sum() <= 2 * one_problem


# --------------------------------------------------------------------------------------------
# kill -9 at every point of a shard's life (the real command line, a real SIGKILL)


def _command(problems: Path, model: Path, out: Path, settings: SampleSettings) -> list[str]:
    import json

    return [
        str(BIN / "python"),
        "-m",
        "confagg.sample",
        "--problems",
        str(problems),
        "--dataset",
        "kill",
        "--shard",
        "0",
        "--seed",
        "5",
        "--model",
        str(model),
        "--settings",
        json.dumps(dataclasses.asdict(settings)),
        str(out),
    ]


def _run_until(cmd: list[str], point: str | None, timeout: float = 600) -> str:
    """Run the stage; with ``point``, SIGKILL it (its whole process group) once it waits
    there. Returns its stderr."""
    env = {**os.environ, "CONFAGG_PAUSE_AT": f"sample.{point}" if point else ""}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    watchdog = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if point and line.strip() == f"paused at sample.{point}":
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait()
    finally:
        watchdog.cancel()
        proc.stderr.close()
    log = "".join(lines)
    if point:
        assert proc.returncode == -signal.SIGKILL, log[-3000:]
        assert f"paused at sample.{point}" in log, log[-3000:]
    else:
        assert proc.returncode == 0, log[-3000:]
    return log


def test_kill_at_every_point_then_rerun(tiny_model, tmp_path):
    """One shard killed (SIGKILL) before its first write, between writes, during the merge,
    while removing the parts, and after the output is in place; each rerun goes on from what
    the kill left: every (problem, sample) exactly once, and the texts and confidences of every
    problem written before a kill unchanged in the end."""
    problem_list = demo_problems(6, seed=9)
    problems = tmp_path / "problems.jsonl"
    write_problems(problem_list, problems)
    out = tmp_path / "shard0.parquet"
    parts = parts_dir(out)
    cmd = _command(problems, tiny_model, out, make_settings(n=3, max_tokens=32, in_flight=2))

    _run_until(cmd, "first-step")  # the engine ran, nothing written
    assert not out.exists() and not Parts(out).files()

    _run_until(cmd, "part-2")  # between writes
    written = parts_rows(out)
    assert 0 < len(written) < 6 * 3 and not out.exists()

    log = _run_until(cmd, "merge")  # every problem sampled, the merged file half written
    assert f"{len(written) // 3} already sampled" in log
    everything = parts_rows(out)
    assert len(everything) == 6 * 3
    assert all(everything[k] == v for k, v in written.items())
    assert list(parts.glob(".merged.*.tmp")) and not out.exists()
    n_parts = len(Parts(out).files())

    _run_until(cmd, "finish")  # merged, one part deleted, the output not yet in place
    assert (parts / "merged.parquet").exists() and not list(parts.glob(".*.tmp"))
    assert len(Parts(out).files()) == n_parts - 1  # the kill came while deleting them
    assert not out.exists()

    log = _run_until(cmd, "cleanup")  # the output in place, the parts folder not yet removed
    assert "to go" not in log  # finished from the merged file, nothing sampled
    assert out.exists() and parts.exists()
    final = out.read_bytes()

    log = _run_until(cmd, None)
    assert "nothing to do" in log and "to go" not in log
    assert out.read_bytes() == final and not parts.exists()
    table = read_table(out, SAMPLES)
    keys = keys_of(table)
    assert keys == [(p["id"], i) for p in problem_list for i in range(3)]  # none lost or twice
    assert rows_by_key(table) == everything  # nothing written before a kill changed
    assert not list(tmp_path.glob(".*.tmp"))


def test_damaged_parts_are_all_named_before_the_engine_starts(tiny_model, tmp_path):
    """The command line names every damaged part at once and exits with an error, without
    starting vLLM."""
    problems = tmp_path / "problems.jsonl"
    write_problems(demo_problems(2, seed=1), problems)
    out = tmp_path / "shard0.parquet"
    settings = make_settings(n=2, max_tokens=8)
    parts_dir(out).mkdir()
    garbage = parts_dir(out) / "part-00000.parquet"
    garbage.write_bytes(b"PAR1 not really")
    empty = parts_dir(out) / "part-00001.parquet"
    empty.write_bytes(b"")
    t0 = time.time()
    proc = subprocess.run(
        _command(problems, tiny_model, out, settings),
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    err = proc.stderr
    assert f"error: damaged part files: {garbage} (" in err and f"; {empty} (" in err
    assert "Delete those files and run again" in err and "the 0 other part(s)" in err
    assert "vllm" not in err.lower()
    assert time.time() - t0 < 60
