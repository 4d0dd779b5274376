"""kill -9 at several points of every long stage, then a rerun: nothing lost, duplicated or
changed.

Each test copies the uninterrupted run (conftest.py: ``pipeline``) without the outputs of one
job, kills that job (its whole process group, SIGKILL) at each point in turn, every run going
on from what the kill before left, and then lets it finish. The points: before the first write,
in the middle of a write (a temporary file half written), between the renames of a stage that
writes several files, and at the final rename. After the last run:

* sample: every (problem, sample) exactly once, and every row a killed run had written reaches
  the output unchanged (a resumed shard samples the rest with another seed, by design);
* the deterministic stages: every output byte-equal to the uninterrupted run's;
* train (resumed from a checkpoint: not bit-reproducible): each step logged exactly once, the
  adapter and manifest complete;
* and no temporary file or folder left behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from confagg.parts import Parts
from confagg.problems import read_problems

from .conftest import RUN, SAMPLES
from .harness import Job, clone, differing, keyed_rows, lost_and_duplicated, run_job, strays

pytestmark = pytest.mark.integration

# the key of each table a job writes (rows lost or repeated are counted by it)
KEYS = {
    "samples": ["problem_id", "sample_idx"],
    "scores": ["problem_id", "sample_idx"],
    "grades": ["problem_id", "sample_idx"],
    "candidates.parquet": ["problem_id", "sample_idx"],
    "train.parquet": ["set_id"],
    "val.parquet": ["set_id"],
    "aggregators.parquet": ["method", "train_seed", "problem_id", "k", "set_idx", "output_idx"],
    "aggregators": ["method", "train_seed", "problem_id", "k", "set_idx", "output_idx"],  # shards
}


def _key_of(output: str) -> list[str] | None:
    for name, key in KEYS.items():
        if f"/{name}/" in output or output.endswith(name):
            return key
    return None


def _state(work: Path, job: Job) -> str:
    """What a kill left: which outputs are in place, and the temporaries beside them."""
    there = [Path(o).name for o in job.outputs if (work / o).exists()]
    left = [p.name for p in strays(work)]
    return (
        f"outputs in place: {', '.join(there) or 'none'}; temporaries: {', '.join(left) or 'none'}"
    )


def _check_in_place(pipeline, work: Path, job: Job, deterministic: bool) -> None:
    """Every output a kill left under its name is complete: it reads, and for a deterministic
    stage it is the uninterrupted run's."""
    for out in job.outputs:
        path = work / out
        if not path.exists():
            continue
        if deterministic:
            assert not differing(pipeline.workdir, work, [out]), f"{out}: a torn or other file"
        elif path.suffix == ".parquet":
            pq.read_metadata(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def kill_then_rerun(
    pipeline,
    figures,
    tmp_path,
    job: Job,
    points,
    stage: str,
    drop=(),
    deterministic=True,
    prefix="",
) -> Path:
    """Kill ``job`` at each of ``points`` ((event, n, path match) of inject/sitecustomize.py)
    in turn, then run it to the end; returns its working folder (a copy of the uninterrupted
    run without the job's outputs and ``drop``). After each kill, the outputs in place must be
    complete (``deterministic``: the uninterrupted run's very bytes); ``prefix`` starts each
    point's label in the figures."""
    work = clone(pipeline.workdir, tmp_path / "work", [*job.outputs, *drop])
    for event, n, match in points:
        outcome = run_job(job, work, kill=event, at=n, match=match)
        assert outcome.killed_at["event"] == event
        _check_in_place(pipeline, work, job, deterministic)
        label = f"{prefix}{event}#{n}" + (f" {match}" if match else "")
        figures.kill(stage, label, _state(work, job))
    run_job(job, work)
    left = strays(work)
    figures.strays += [str(p.relative_to(work)) for p in left]
    for out in job.outputs:
        key = _key_of(out)
        if key:
            lost, dup = lost_and_duplicated(
                keyed_rows(pipeline.workdir / out, key), keyed_rows(work / out, key)
            )
            figures.rows_lost += lost
            figures.rows_duplicated += dup
    return work


def assert_equal_to_uninterrupted(pipeline, figures, work: Path, job: Job) -> None:
    diffs = differing(pipeline.workdir, work, job.outputs)
    assert not diffs, f"{job.name}: outputs differ from the uninterrupted run's: {diffs}"
    figures.outputs.append((job.rule, "equal"))


# --------------------------------------------------------------------------------------------
# sample (pause points of the stage itself, and one file-system event)


def _rows(path: Path) -> dict[tuple[str, int], tuple]:
    d = pq.read_table(path).to_pydict()
    return {
        (pid, idx): (text, ans, nt, np.asarray(conf, np.float16).tobytes())
        for pid, idx, text, ans, nt, conf in zip(
            d["problem_id"], d["sample_idx"], d["text"], d["answer"], d["num_tokens"],
            d["token_confidence"], strict=True,
        )
    }  # fmt: skip


def test_sample_killed_at_every_point_of_a_shard(pipeline, figures, tmp_path):
    job = pipeline.job("sample_shard", "train_pool")
    work = clone(pipeline.workdir, tmp_path / "work", job.outputs)
    out = work / job.outputs[0]
    problems = read_problems(work / f"results/{RUN}/data/train_pool.jsonl")
    expected = [(p["id"], i) for p in problems for i in range(SAMPLES)]
    written: dict[tuple[str, int], tuple] = {}  # every row a part held at some kill

    def parts_rows() -> dict:
        rows = {}
        for part in Parts(out).files():
            for key, value in _rows(part).items():
                assert key not in rows, f"{key} in two parts"
                rows[key] = value
        return rows

    points = [
        ("pause", "first-step"),  # the engine ran one step, nothing written
        ("link", 2),  # the second part written to its temporary, not yet linked to its name
        ("pause", "merge"),  # every problem sampled, the merged file half written
        ("pause", "finish"),  # merged, one part deleted, the output not in place
        ("pause", "cleanup"),  # the output in place, the parts folder not yet removed
    ]
    final = None
    for kind, point in points:
        if kind == "pause":
            run_job(job, work, pause=point)
            label = f"pause {point}"
        else:
            run_job(job, work, kill=kind, at=point)
            label = f"{kind}#{point}"
        rows = parts_rows()
        changed = [k for k in rows.keys() & written.keys() if rows[k] != written[k]]
        assert not changed, f"after {label}: parts changed rows {changed[:3]}"
        written.update(rows)
        if point == "cleanup":
            final = out.read_bytes()
        figures.kill("sample", label, _state(work, job) + f"; {len(rows)} samples in parts")
    assert written and final is not None

    log = run_job(job, work).log
    assert "nothing to do" in log and "to go" not in log
    assert out.read_bytes() == final  # a complete output is never rewritten
    found = _rows(out)
    keys = keyed_rows(out, ["problem_id", "sample_idx"])
    lost, dup = lost_and_duplicated(expected, keys)
    figures.samples_expected += len(expected)
    figures.samples_lost += lost
    figures.samples_duplicated += dup
    assert (lost, dup) == (0, 0)
    assert keys == expected  # in problem order
    assert all(found[k] == v for k, v in written.items())  # what was written stays as it was
    left = strays(work)
    figures.strays += [str(p.relative_to(work)) for p in left]
    assert not left
    figures.outputs.append((job.rule, "valid"))


# --------------------------------------------------------------------------------------------
# the deterministic stages: outputs byte-equal to the uninterrupted run's


def test_score_and_grade_killed_mid_write_and_at_the_rename(pipeline, figures, tmp_path):
    for rule, points in [
        ("score_shard", [("parquet", 1, ""), ("replace", 1, "")]),
        ("grade_shard", [("footer", 1, ""), ("replace", 1, "")]),
    ]:
        job = pipeline.job(rule, "train_pool")
        stage = rule.split("_")[0]
        work = kill_then_rerun(pipeline, figures, tmp_path / rule, job, points, stage)
        assert_equal_to_uninterrupted(pipeline, figures, work, job)
        assert not strays(work)


def test_curate_killed_before_during_and_between_its_writes(pipeline, figures, tmp_path):
    job = pipeline.job("curate_sets")
    points = [
        ("mkstemp", 1, ""),  # every set chosen, nothing written
        ("parquet", 1, ""),  # the first row group going into a temporary file
        ("replace", 2, ""),  # val.parquet in place, train.parquet not yet
        ("replace", 3, ""),  # both sets in place, summary.json not yet
    ]
    work = kill_then_rerun(pipeline, figures, tmp_path, job, points, "curate")
    assert_equal_to_uninterrupted(pipeline, figures, work, job)
    assert not strays(work)


def test_evaluate_killed_before_and_between_its_writes(pipeline, figures, tmp_path):
    job = pipeline.job("evaluate_seed")
    points = [
        ("mkstemp", 1, ""),  # every method computed, nothing written
        ("parquet", 1, ""),  # metrics.json in place, candidates.parquet half written
        ("replace", 2, ""),  # candidates.parquet complete, not yet renamed
    ]
    work = kill_then_rerun(pipeline, figures, tmp_path, job, points, "evaluate")
    assert_equal_to_uninterrupted(pipeline, figures, work, job)
    assert not strays(work)


def test_reports_killed_between_their_writes(pipeline, figures, tmp_path):
    for rule, points in [
        # metrics.json not yet in place; metrics.json and summary.md in place, report.html not
        ("report_benchmark", [("replace", 1, ""), ("replace", 3, "")]),
        ("report_summary", [("replace", 1, "")]),
    ]:
        job = pipeline.job(rule)
        prefix = rule.split("_")[1] + " "
        work = kill_then_rerun(
            pipeline, figures, tmp_path / rule, job, points, "report", prefix=prefix
        )
        assert_equal_to_uninterrupted(pipeline, figures, work, job)
        assert not strays(work)


def test_merge_killed_mid_write_and_at_the_rename(pipeline, figures, tmp_path):
    job = pipeline.job("merge_adapter")
    points = [("open", 1, ""), ("replace", 1, "")]
    work = kill_then_rerun(pipeline, figures, tmp_path, job, points, "merge")
    assert_equal_to_uninterrupted(pipeline, figures, work, job)
    assert not strays(work)


def test_aggregate_killed_between_engines_and_at_the_write(pipeline, figures, tmp_path):
    job = pipeline.job("aggregate_sets")
    points = [
        # the base model's variants generated, the merged model's engine about to start
        ("call:confagg.engine:make_engine", 2, ""),
        ("parquet", 1, ""),  # every output generated and graded, the table half written
    ]
    work = kill_then_rerun(pipeline, figures, tmp_path, job, points, "aggregate")
    assert_equal_to_uninterrupted(pipeline, figures, work, job)
    assert not strays(work)


# --------------------------------------------------------------------------------------------
# train: resumed from its checkpoints


def test_train_killed_before_in_a_checkpoint_and_at_the_final_rename(pipeline, figures, tmp_path):
    job = pipeline.job("train_aggregator")
    variant_dir = str(Path(job.outputs[0]).parent)
    max_steps = pipeline.config["training"]["max_steps"]
    points = [
        ("replace", 1, "run.json"),  # before the first write (the run's fingerprint)
        # the last checkpoint cut short: trainer_state.json is the file written last
        ("open", 1, f"checkpoint-{max_steps}/trainer_state.json"),
        # trained to the end, log.jsonl and manifest.json written, the adapter not renamed
        ("replace", 1, "/adapter"),
    ]
    work = kill_then_rerun(
        pipeline, figures, tmp_path, job, points, "train", drop=[f"{variant_dir}/checkpoints"],
        deterministic=False,
    )  # fmt: skip
    out = work / variant_dir
    steps = [
        json.loads(line)["step"]
        for line in (out / "log.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "train"
    ]
    assert steps == list(range(1, max_steps + 1)), f"steps logged: {steps}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == max_steps
    assert manifest["attempts"][-1]["to_step"] == max_steps
    from safetensors.numpy import load_file

    weights = load_file(out / "adapter/adapter_model.safetensors")
    base = load_file(pipeline.workdir / variant_dir / "adapter/adapter_model.safetensors")
    assert weights.keys() == base.keys() and all(
        weights[k].shape == base[k].shape and np.isfinite(weights[k]).all() for k in weights
    )
    assert not strays(work)
    equal = not differing(pipeline.workdir, work, [f"{variant_dir}/adapter"])
    figures.outputs.append((job.rule, "equal" if equal else "valid"))
