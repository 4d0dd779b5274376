import copy

import pytest
import yaml

from confagg.config import ConfigError, validate
from conftest import REPO, snakemake

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def full_config():
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_shipped_configs_are_valid():
    for name in ("config.yaml", "demo.yaml"):
        cfg = yaml.safe_load((REPO / "config" / name).read_text())
        validate(cfg, SCHEMA)
        assert cfg["confidence"]["window"] >= 1  # defaults filled where unset


def test_defaults_are_filled():
    cfg = full_config()
    del cfg["sampling"]["temperature"]
    del cfg["evaluation"]
    validate(cfg, SCHEMA)
    assert cfg["sampling"]["temperature"] == 0.6
    assert cfg["evaluation"]["seeds"] == [0]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["sampling"].update(temprature=0.7), "sampling.temprature: unknown key"),
        (lambda c: c.update(sampels=3), "sampels: unknown key"),
        (
            lambda c: c["sampling"].update(temperature="hot"),
            "sampling.temperature: 'hot' is not of type 'number'",
        ),
        (lambda c: c["training_pool"].update(shards=0), "training_pool.shards: 0 is less than"),
        (lambda c: c["evaluation"].update(seeds="0"), "evaluation.seeds: '0' is not of type"),
        (lambda c: c["benchmarks"]["aime24"].update(source={}), "benchmarks.aime24.source"),
        (lambda c: c["generator"].pop("model"), "generator: 'model' is a required property"),
        (
            lambda c: c["generator"].update(model="/no/such/model"),
            "generator.model: '/no/such/model' is not an existing model folder",
        ),
        (lambda c: c["benchmarks"].update(train_pool={"source": {"path": "x"}}), "benchmarks"),
    ],
)
def test_bad_config_names_the_key(change, message):
    cfg = copy.deepcopy(full_config())
    change(cfg)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(cfg, SCHEMA)


def test_snakemake_stops_on_bad_config(workdir):
    bad = workdir / "bad.yaml"
    bad.write_text("sampling:\n  temperature: hot\n")
    proc = snakemake("-n", "--configfile", str(bad), cwd=workdir, check=False, timeout=120)
    assert proc.returncode != 0
    assert "sampling.temperature: 'hot' is not of type 'number'" in proc.stdout + proc.stderr
