"""Revisions of hub models and data sets: checked at start, passed to the downloads, and the
commit read recorded (``confagg.provenance``; the prepare and models stages, the training
manifest). No network: the folders are built as the hub clients leave them."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from confagg import manifest, models, prepare, train
from confagg.config import ConfigError, hub_model, hub_slug, resolve_aggregator, validate
from confagg.provenance import download_commit
from confagg.settings import for_rule, load, to_json
from confagg.trainset import Prompts
from conftest import REPO, snakemake

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
# a git-valid ref that a shell would split or expand unquoted
HOSTILE = "v1;echo-$HOME's"


def _config(**generator) -> dict:
    return {
        "run_name": "prov",
        "generator": {"model": "owner/model", **generator},
        "training_pool": {"source": {"demo": {"n": 4, "seed": 1}}},
        "benchmarks": {"bench": {"source": {"hub": "owner/bench", "split": "test"}}},
    }


def _hub_folder(folder: Path, commits: dict[str, str]) -> Path:
    """A model folder as `hf download --local-dir` leaves it: the files and, per file, the
    download metadata written by huggingface_hub itself."""
    from huggingface_hub._local_folder import write_download_metadata

    for name, commit in commits.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("{}")
        write_download_metadata(folder, name, commit, etag="e" * 40)
    return folder


# --- config: a revision is a non-empty string, and only for what comes from the hub ---


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c, d: c["generator"].update(model=str(d), revision="v1"), "generator.revision"),
        (
            lambda c, d: c["generator"].update(model="smollm2-135m-instruct", revision="v1"),
            "generator.revision: 'v1' applies only to a hub model",
        ),
        (lambda c, d: c["generator"].update(revision=""), "generator.revision: '' should be non"),
        (
            lambda c, d: c["training_pool"]["source"].update(revision="v1"),
            "training_pool.source.revision: 'v1' applies only to a hub source (source: {hub: ...})"
            "; this source is a demo",
        ),
        (
            lambda c, d: c["benchmarks"].update(
                b2={"source": {"path": "x.jsonl", "revision": "a"}}
            ),
            "benchmarks.b2.source.revision: 'a' applies only to a hub source",
        ),
        (
            lambda c, d: c.update(aggregator={"model": str(d), "revision": "main"}),
            "aggregator.revision: 'main' applies only to a hub model; aggregator.model '{d}' is "
            "a local model folder",
        ),
    ],
)
def test_a_revision_where_none_applies_stops_at_start_naming_the_key(tmp_path, change, message):
    cfg = _config()
    change(cfg, tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg, SCHEMA)
        resolve_aggregator(cfg)
    assert message.replace("{d}", str(tmp_path)) in str(err.value)


def test_the_aggregator_takes_the_generators_model_at_its_revision_unless_it_names_one():
    cfg = _config(revision="v2")
    validate(cfg, SCHEMA)
    resolve_aggregator(cfg)
    assert (cfg["aggregator"]["model"], cfg["aggregator"]["revision"]) == ("owner/model", "v2")
    cfg = _config(revision="v2")
    cfg["aggregator"] = {"model": "owner/model"}  # named alike: the same download
    validate(cfg, SCHEMA)
    resolve_aggregator(cfg)
    assert (cfg["aggregator"]["model"], cfg["aggregator"]["revision"]) == ("owner/model", "v2")
    for aggregator, expected in [
        ({"revision": "v3"}, ("owner/model", "v3")),
        ({"model": "owner/other"}, ("owner/other", None)),
    ]:
        cfg = _config(revision="v2")
        cfg["aggregator"] = aggregator
        validate(cfg, SCHEMA)
        resolve_aggregator(cfg)
        assert (cfg["aggregator"]["model"], cfg["aggregator"]["revision"]) == expected


def test_every_revision_has_its_own_model_folder():
    assert hub_slug("Qwen/Qwen3-1.7B") == "Qwen--Qwen3-1.7B"  # the default branch, as before
    slugs = {hub_slug("Qwen/Qwen3-1.7B", r) for r in ("main", "refs/pr/1", "refs-pr-1", HOSTILE)}
    assert len(slugs) == 4 and not any("/" in s for s in slugs)
    for revision in (None, "main", "refs/pr/1", HOSTILE, COMMIT):
        assert hub_model(hub_slug("agentica-org/My.Model-2", revision)) == (
            "agentica-org/My.Model-2",
            revision,
        )


# --- the download command and the records' rules, in a dry-run ---


def test_dry_run_passes_the_revision_to_hf_download_quoted(workdir):
    cfg = _config(revision=HOSTILE)
    cfg["benchmarks"]["bench"]["source"]["revision"] = COMMIT
    (workdir / "prov.yaml").write_text(yaml.safe_dump(cfg))
    folder = f"resources/models/{hub_slug('owner/model', HOSTILE)}"
    proc = snakemake(
        "-n",
        "-p",
        "results/prov/models/generator.source.json",
        "results/prov/models/aggregator.source.json",
        "results/prov/data/bench.source.json",
        "--configfile",
        "prov.yaml",
        "--replace-workflow-config",
        cwd=workdir,
    )
    out = proc.stdout
    log = f"logs/models/{hub_slug('owner/model', HOSTILE)}.log"
    download = (
        f"hf download owner/model --revision {shlex.quote(HOSTILE)} "
        f"--local-dir {shlex.quote(folder)} > {shlex.quote(log)}"
    )
    assert download in out
    assert out.count("hf download") == 1  # the aggregator reads the same folder
    assert f"{shlex.quote(folder)} results/prov/models/generator.source.json" in out
    # the data set's settings carry its revision to the prepare stage
    assert f'"revision": "{COMMIT}"' in out
    assert "--source-record results/prov/data/bench.source.json" in out


def test_dry_run_of_the_default_branch_downloads_without_a_revision(workdir):
    (workdir / "prov.yaml").write_text(yaml.safe_dump(_config()))
    proc = snakemake(
        "-n",
        "-p",
        "results/prov/models/generator.source.json",
        "--configfile",
        "prov.yaml",
        "--replace-workflow-config",
        cwd=workdir,
    )
    shown = " ".join(proc.stdout.split())  # (an empty option list leaves two spaces)
    assert "hf download owner/model --local-dir resources/models/owner--model > " in shown


# --- the records: models ---


def test_model_record_names_the_revision_and_the_commit_downloaded(tmp_path):
    folder = _hub_folder(
        tmp_path / "owner--model@v1", {"config.json": COMMIT, "sub/model.safetensors": COMMIT}
    )
    out = tmp_path / "results/models/generator.source.json"
    settings = {"role": "generator", "model": "owner/model", "revision": "v1"}
    assert models.main(["record", "--settings", json.dumps(settings), str(folder), str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["role"] == "generator" and record["kind"] == "hub"
    assert (record["model"], record["revision"], record["commit"]) == ("owner/model", "v1", COMMIT)
    assert "2 files" in record["note"]


def test_a_folder_of_another_commit_than_the_pinned_one_stops_the_record(tmp_path):
    folder = _hub_folder(tmp_path / "m", {"config.json": OTHER})
    out = tmp_path / "generator.source.json"
    settings = {"role": "generator", "model": "owner/model", "revision": COMMIT}
    with pytest.raises(SystemExit) as err:
        models.main(["record", "--settings", json.dumps(settings), str(folder), str(out)])
    assert err.value.code == 1
    assert not out.exists()


def test_a_folder_without_metadata_or_of_mixed_commits_has_no_commit(tmp_path):
    (tmp_path / "plain").mkdir()
    assert download_commit(tmp_path / "plain") == (
        None,
        f"no hub download metadata in {tmp_path / 'plain/.cache/huggingface/download'}",
    )
    mixed = _hub_folder(tmp_path / "mixed", {"a.json": COMMIT, "b.json": OTHER})
    commit, note = download_commit(mixed)
    assert commit is None and COMMIT in note and OTHER in note


def test_the_training_manifest_records_the_models_revision_and_commit(tmp_path):
    """config -> the train rule's settings -> the train stage's manifest inputs."""
    cfg = _config(revision="refs/pr/3")
    validate(cfg, SCHEMA)
    resolve_aggregator(cfg)
    folder = _hub_folder(tmp_path / hub_slug("owner/model", "refs/pr/3"), {"config.json": COMMIT})
    s = load(train.Settings, to_json(for_rule(cfg, "train_aggregator", variant="plain")))
    data = Prompts(path=tmp_path / "p", sets=6, truncated=1, min_tokens=3, max_tokens=9)
    inputs = manifest.inputs("train.parquet", data, None, str(folder), s.aggregator)
    assert inputs["train"] == {"path": "train.parquet", "sets": 6, "truncated": 1}
    model = inputs["model"]
    assert (model["model"], model["revision"], model["commit"]) == (
        "owner/model",
        "refs/pr/3",
        COMMIT,
    )
    assert model["folder"] == str(folder)


# --- the records: data sets ---


def _hub_dataset_cache(cache: Path, repo: str, commit: str, rows: list[dict]) -> None:
    """The datasets cache as loading ``repo`` at ``commit`` leaves it: built by datasets' own
    parquet builder, then placed where its hub loader puts a repository's copy (the folder
    named by the commit hash, the Arrow file by the data set's name)."""
    import datasets

    cache.mkdir(parents=True)
    parquet = cache / "src.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    builder = datasets.load_dataset_builder(
        "parquet", data_files={"test": str(parquet)}, cache_dir=str(cache / "build")
    )
    builder.download_and_prepare()
    built = Path(builder.cache_dir)
    owner, name = repo.split("/")
    target = cache / "datasets" / f"{owner}___{name}" / "default" / "0.0.0" / commit
    target.mkdir(parents=True)
    shutil.copy(built / "parquet-test.arrow", target / f"{name}-test.arrow")
    info = json.loads((built / "dataset_info.json").read_text())
    (target / "dataset_info.json").write_text(json.dumps(dict(info, dataset_name=name)))


def _prepare_offline(tmp_path: Path, source: dict) -> subprocess.CompletedProcess:
    settings = {"source": source, "fields": {"id": None}, "limit": None}
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "cache/datasets"),
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(REPO / "scripts"),
    }
    return subprocess.run(
        [
            *(sys.executable, "-m", "confagg.prepare", "--settings", json.dumps(settings)),
            *("--source-record", str(tmp_path / "data/b.source.json")),
            str(tmp_path / "data/b.jsonl"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


ROWS = [{"problem": "What is 1 + 1?", "answer": "2"}, {"problem": "What is 2 + 2?", "answer": "4"}]


def test_a_hub_data_set_records_the_revision_asked_for_and_the_commit_read(tmp_path):
    _hub_dataset_cache(tmp_path / "cache", "owner/bench", COMMIT, ROWS)
    source = {"hub": "owner/bench", "split": "test", "revision": "v1"}
    proc = _prepare_offline(tmp_path, source)
    assert proc.returncode == 0, proc.stderr[-3000:]
    problems = [json.loads(line) for line in (tmp_path / "data/b.jsonl").read_text().splitlines()]
    assert [p["answer"] for p in problems] == ["2", "4"]
    record = json.loads((tmp_path / "data/b.source.json").read_text())
    assert record["source"] == source and record["kind"] == "hub"
    assert (record["revision"], record["commit"], record["problems"]) == ("v1", COMMIT, 2)
    # offline, datasets reads its latest cached copy whatever the revision: the record says so
    assert (
        record["note"] == "the latest cached copy (the hub out of reach), not checked against 'v1'"
    )

    # a pinned commit is checked: another one in the cache stops the job, nothing written
    shutil.rmtree(tmp_path / "data")
    proc = _prepare_offline(tmp_path, dict(source, revision=OTHER))
    assert proc.returncode == 1
    assert f"owner/bench[test]@{OTHER}: revision {OTHER} was asked for, but commit {COMMIT}" in (
        proc.stderr
    )
    assert not (tmp_path / "data/b.jsonl").exists()
    assert not (tmp_path / "data/b.source.json").exists()


def test_a_local_file_records_its_sha256(tmp_path):
    import hashlib

    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out, record_path = tmp_path / "data/set.jsonl", tmp_path / "data/set.source.json"
    settings = {"source": {"path": str(src)}, "fields": {"id": None}, "limit": 1}
    prepare.main(
        ["--settings", json.dumps(settings), "--source-record", str(record_path), str(out)]
    )
    record = json.loads(record_path.read_text())
    assert record["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert (record["kind"], record["revision"], record["commit"]) == ("path", None, None)
    assert (record["problems"], record["limit"]) == (1, 1)
    assert record["source"] == {"path": str(src)}
