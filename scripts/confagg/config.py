"""Workflow configuration: JSON-schema validation with defaults, and clear errors.

Called by the Snakefile before any rule is defined, so a wrong key or type stops the run at
once with a message naming the key (``sampling.temperature: 'hot' is not of type 'number'``).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from urllib.parse import quote, unquote

import yaml

SMOLLM2 = "smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _fill_defaults(instance, schema: dict, root: dict) -> None:
    """Set schema defaults for missing keys, recursively (validation checks types later)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if not isinstance(instance, dict):
        return
    for name, prop in schema.get("properties", {}).items():
        sub = root["$defs"][prop["$ref"].rsplit("/", 1)[-1]] if "$ref" in prop else prop
        if name not in instance and "default" in sub:
            instance[name] = yaml.safe_load(yaml.safe_dump(sub["default"]))  # a fresh copy
        if name in instance:
            _fill_defaults(instance[name], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for name, value in instance.items():
            if name not in schema.get("properties", {}):
                _fill_defaults(value, extra, root)


# Keys that moved or went: a config that still sets one stops at start, naming its new place.
MOVED_KEYS = {
    ("curation", "verify_timeout"): "grading.timeout",
    ("curation", "verify_processes"): "grading.processes",
    ("curation", "require_think_end"): "grading.require_think_end",
    ("aggregator", "prompt", "confidence", "enabled"): (
        "training.variants.<name>.confidence and evaluation.aggregators[].confidence (each "
        "variant says whether its prompt shows the confidences)"
    ),
}


def _moved(config: Mapping) -> list[str]:
    problems = []
    for path, new in MOVED_KEYS.items():
        section = config
        for key in path[:-1]:
            section = section.get(key) if isinstance(section, Mapping) else None
        if isinstance(section, Mapping) and path[-1] in section:
            problems.append(f"{_key(path)}: this key moved; set {new} instead")
    return problems


def validate(config: MutableMapping, schema_path: str | Path) -> None:
    """Fill defaults into ``config`` and validate it; raise ConfigError naming every bad key."""
    import jsonschema

    moved = _moved(config)
    if moved:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(moved))
    schema = yaml.safe_load(Path(schema_path).read_text())
    _fill_defaults(config, schema, schema)
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path))):
        if err.validator == "additionalProperties" and err.validator_value is False:
            allowed = sorted(err.schema.get("properties", {}))
            for extra in sorted(set(err.instance) - set(allowed)):
                problems.append(
                    f"{_key([*err.path, extra])}: unknown key (expected one of: "
                    f"{', '.join(allowed)})"
                )
            continue
        if err.validator == "required":
            problems.append(f"{_key(err.path)}: {err.message}")
        elif err.validator == "oneOf" and isinstance(err.instance, dict):
            problems.append(
                f"{_key(err.path)}: give exactly one of path, url, hub or demo "
                f"(got {sorted(err.instance)})"
            )
        else:
            problems.append(f"{_key(err.path)}: {err.message}")
    problems = problems or _source_revisions(config)  # (the sections' shapes are valid)
    problems += check_trl_keys(config, schema)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    check_model(config["generator"]["model"], "generator.model", config["generator"]["revision"])
    resolve_aggregator(config)  # every reader of a validated config sees the aggregator's model


def _source_revisions(config: Mapping) -> list[str]:
    """A ``revision`` belongs to a hub source only: one given for a file, a URL or the demo
    problems would be silently ignored, so it stops the run naming its key."""
    sections = {"training_pool": config["training_pool"]}
    sections.update({f"benchmarks.{n}": b for n, b in config["benchmarks"].items()})
    problems = []
    for key, section in sections.items():
        source = section["source"]
        if source.get("revision") is not None and "hub" not in source:
            kind = next((k for k in ("path", "url", "demo") if k in source), "?")
            problems.append(
                f"{key}.source.revision: {source['revision']!r} applies only to a hub source "
                f"(source: {{hub: ...}}); this source is a {kind}"
            )
    return problems


# GRPOConfig fields that confagg.train sets itself (from the job, the machine or other keys): a
# config that sets one would be overridden silently, so it stops at start instead.
GRPO_SET_BY_WORKFLOW = {
    "output_dir": "the run's checkpoints folder",
    "run_name": "run_name and the variant",
    "seed": "derived from the run seed",
    "data_seed": "derived from the run seed",
    "use_cpu": "whether CUDA works",
    "model_init_kwargs": "the dtype of bf16",
    "use_vllm": "training.vllm.enabled",
    "vllm_mode": "colocate, always",
    "vllm_max_model_length": "aggregator.prompt.max_prompt_tokens + max_completion_length",
    "logging_steps": "1: every step is logged (log.jsonl)",
    "save_strategy": "steps (save_steps)",
    "eval_strategy": "eval_steps",
    "per_device_eval_batch_size": "num_generations",
    "report_to": "training.wandb.enabled",
    "disable_tqdm": "the job logs",
    "log_completions": "off",
    "ddp_timeout": "training.process_group_timeout_min",
}


def _class_fields(path: Path, name: str) -> tuple[set[str], list[str]]:
    """The annotated field names of class ``name`` in the source file ``path`` and the names of
    its bases, read with ``ast`` (importing TRL would import torch: seconds at every start)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            fields = {
                n.target.id
                for n in node.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            }
            return fields, [ast.unparse(b) for b in node.bases]
    raise LookupError(f"no class {name} in {path}")


def grpo_config_fields() -> tuple[set[str], str] | None:
    """(every field name of the installed TRL's ``GRPOConfig``, TRL's version), read from the
    sources of ``GRPOConfig``, its base config and transformers' ``TrainingArguments``; None when
    TRL is not installed here (a laptop that only dry-runs)."""
    from importlib.metadata import PackageNotFoundError, version

    trl, tf = importlib.util.find_spec("trl"), importlib.util.find_spec("transformers")
    if trl is None or tf is None or not trl.origin or not tf.origin:
        return None
    trainer = Path(trl.origin).parent / "trainer"
    fields, bases = _class_fields(trainer / "grpo_config.py", "GRPOConfig")
    chain = {"_BaseConfig": trainer / "base_config.py"}
    while bases:
        base = bases.pop()
        if base in chain:
            more, bases = _class_fields(chain.pop(base), base)
        elif base.endswith("TrainingArguments"):
            more, _ = _class_fields(
                Path(tf.origin).parent / "training_args.py", "TrainingArguments"
            )
        else:
            continue
        fields |= more
    try:
        trl_version = version("trl")
    except PackageNotFoundError:
        trl_version = "?"
    return fields, trl_version


def check_trl_keys(config: Mapping, schema: Mapping) -> list[str]:
    """Keys of ``training`` (and ``training.vllm``) that the schema does not declare must be
    fields of the installed TRL's ``GRPOConfig`` (as ``vllm_<key>`` for the vllm section) that
    the workflow does not set itself; each one that is not is named, with close matches."""
    training = config.get("training")
    if not isinstance(training, Mapping):
        return []
    declared = schema["properties"]["training"]["properties"]
    vllm = training.get("vllm") if isinstance(training.get("vllm"), Mapping) else {}
    extra = [(k, k) for k in training if k not in declared]
    extra += [(f"vllm.{k}", f"vllm_{k}") for k in vllm if k not in declared["vllm"]["properties"]]
    if not extra:
        return []
    known = grpo_config_fields()
    problems = []
    for key, field in extra:
        if field in GRPO_SET_BY_WORKFLOW:
            problems.append(
                f"training.{key}: GRPOConfig's {field} is set by the workflow itself "
                f"({GRPO_SET_BY_WORKFLOW[field]})"
            )
        elif known is not None and field not in known[0]:
            close = difflib.get_close_matches(field, sorted(known[0] | set(declared)), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            problems.append(
                f"training.{key}: unknown key: neither a key of this workflow nor a field of "
                f"TRL {known[1]}'s GRPOConfig{hint}"
            )
    return problems


def model_kind(spec: str) -> str:
    """``"smollm2"``, ``"local"`` (an existing folder) or ``"hub"`` (a hub id)."""
    if spec == SMOLLM2:
        return "smollm2"
    if Path(spec).is_dir():
        return "local"
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return "hub"
    return "missing"


def check_model(spec: str, key: str, revision: str | None = None) -> None:
    """Fail fast on a model that is neither a folder, a hub id nor the packaged SmolLM2, and on
    a ``revision`` (the key beside ``key``) given for a model that is not a hub id."""
    kind = model_kind(spec)
    if kind == "missing":
        raise ConfigError(
            f"invalid configuration:\n  {key}: {spec!r} is not an existing model "
            f"folder, a hub id like 'Qwen/Qwen3-1.7B', or {SMOLLM2!r}"
        )
    if revision is not None and kind != "hub":
        what = "a local model folder" if kind == "local" else "the packaged SmolLM2"
        raise ConfigError(
            f"invalid configuration:\n  {key.rsplit('.', 1)[0]}.revision: {revision!r} applies "
            f"only to a hub model; {key} {spec!r} is {what}"
        )


def resolve_aggregator(config: MutableMapping) -> None:
    """Fill in the aggregator's model: null is the generator's (AggLM: the same Qwen3-1.7B);
    the generator's model (null or named) is at the generator's revision unless
    ``aggregator.revision`` names one (one download, not a second of the default branch).
    Then check it."""
    aggregator, generator = config["aggregator"], config["generator"]
    aggregator["model"] = aggregator["model"] or generator["model"]
    if aggregator["revision"] is None and aggregator["model"] == generator["model"]:
        aggregator["revision"] = generator["revision"]
    check_model(aggregator["model"], "aggregator.model", aggregator["revision"])


def hub_slug(spec: str, revision: str | None = None) -> str:
    """Folder name for a hub model under resources/models/: ``owner--name``, and
    ``owner--name@<revision>`` (percent-encoded: a branch may hold ``/``) for a pinned one, so
    that every revision has its own folder (``hub_model`` reads it back)."""
    slug = spec.replace("/", "--")
    return slug if revision is None else f"{slug}@{quote(revision, safe='')}"


def hub_model(slug: str) -> tuple[str, str | None]:
    """``(hub id, revision)`` of a folder name written by ``hub_slug``."""
    name, _, revision = slug.partition("@")
    return name.replace("--", "/", 1), (unquote(revision) if revision else None)


# vLLM's default cap on logprobs per token (engine argument max_logprobs)
VLLM_MAX_LOGPROBS = 20


def grpo_generation_batch(training: Mapping) -> tuple[int, str]:
    """(completions per generation round, how it is made up), as TRL 1.16's
    ``GRPOConfig.__post_init__`` derives it: ``generation_batch_size`` when given, else
    per-device batch x processes x ``steps_per_generation`` (default: the accumulation steps).
    The train job runs one process per GPU, one on CPU (``gpus: 0``)."""
    processes = max(int(training["gpus"]), 1)
    per_device = training["per_device_train_batch_size"]
    if training.get("generation_batch_size") is not None:
        return training["generation_batch_size"], "training.generation_batch_size"
    steps = training.get("steps_per_generation") or training["gradient_accumulation_steps"]
    steps_key = (
        "training.steps_per_generation"
        if training.get("steps_per_generation")
        else "training.gradient_accumulation_steps"
    )
    return (
        per_device * processes * steps,
        f"training.per_device_train_batch_size {per_device} x {processes} process(es) "
        f"(training.gpus {training['gpus']}) x {steps_key} {steps}",
    )


def _disjoint_sets(curation: Mapping) -> bool:
    """Whether curation partitions a problem's samples into disjoint sets (then s x m samples
    are needed) rather than drawing each set independently (then m are enough)."""
    return curation.get("set_sampling", "disjoint") == "disjoint"


def check_consistency(config: Mapping) -> None:
    """Cross-key checks of a validated config (each key alone is valid): raise ConfigError
    naming every pair of keys that cannot work together, with their values, so the run stops
    before any job instead of failing or silently doing less deep inside one."""
    problems: list[str] = []
    pool, cur, ev = config["training_pool"], config["curation"], config["evaluation"]
    n_pool, n_eval = pool["samples_per_problem"], ev["samples_per_problem"]

    if cur["set_size"] > n_pool:
        problems.append(
            f"curation.set_size {cur['set_size']} > training_pool.samples_per_problem {n_pool}: "
            f"no training set could be built"
        )
    elif _disjoint_sets(cur) and cur["set_size"] * cur["sets_per_problem"] > n_pool:
        problems.append(
            f"curation.sets_per_problem {cur['sets_per_problem']} x curation.set_size "
            f"{cur['set_size']} = {cur['sets_per_problem'] * cur['set_size']} > "
            f"training_pool.samples_per_problem {n_pool}: disjoint sets (curation.set_sampling "
            f"disjoint) need that many samples per problem"
        )
    if ev["set_size"] > n_eval:
        problems.append(
            f"evaluation.set_size {ev['set_size']} > evaluation.samples_per_problem {n_eval}: "
            f"the aggregators would get no candidate set"
        )
    too_big = [k for k in ev["ks"] if k > n_eval]
    if too_big:
        problems.append(
            f"evaluation.ks {too_big} > evaluation.samples_per_problem {n_eval}: a k needs at "
            f"least k samples per problem"
        )
    names = [a["name"] for a in ev["aggregators"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"evaluation.aggregators: names {dupes} appear more than once")

    training = config["training"]
    batch, made_of = grpo_generation_batch(training)
    groups = training["num_generations"]
    if batch % groups:
        problems.append(
            f"training.num_generations {groups} does not divide the generation batch {batch} "
            f"({made_of}): TRL needs whole groups of completions per prompt"
        )
    if training.get("eval_steps") is not None and cur["val_fraction"] == 0:
        problems.append(
            f"training.eval_steps {training['eval_steps']} needs validation sets, but "
            f"curation.val_fraction is 0"
        )
    if cur["val_fraction"] >= 1:
        problems.append(
            f"curation.val_fraction {cur['val_fraction']} leaves no problem for training"
        )

    engine = config["generator"]["engine"]
    logprobs, cap = config["sampling"]["logprobs"], engine.get("max_logprobs", VLLM_MAX_LOGPROBS)
    if logprobs > cap:
        problems.append(
            f"sampling.logprobs {logprobs} > generator.engine.max_logprobs {cap} (vLLM's cap)"
        )
    max_len = engine.get("max_model_len")
    if isinstance(max_len, int):
        max_tokens = config["sampling"]["max_tokens"]
        if max_tokens >= max_len:
            problems.append(
                f"sampling.max_tokens {max_tokens} >= generator.engine.max_model_len {max_len}: "
                f"no room left for the prompt"
            )
        budget = config["aggregator"]["prompt"]["max_prompt_tokens"]
        answer = ev["aggregator_sampling"]["max_tokens"]
        if ev["aggregators"] and budget is not None and budget + answer > max_len:
            problems.append(
                f"aggregator.prompt.max_prompt_tokens {budget} + "
                f"evaluation.aggregator_sampling.max_tokens {answer} = {budget + answer} > "
                f"generator.engine.max_model_len {max_len} (the aggregator's engine at "
                f"evaluation)"
            )
    if problems:
        raise ConfigError("inconsistent configuration:\n  " + "\n  ".join(problems))
