"""Workflow configuration: JSON-schema validation with defaults, and clear errors.

Called by the Snakefile before any rule is defined, so a wrong key or type stops the run at
once with a message naming the key (``sampling.temperature: 'hot' is not of type 'number'``).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
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
    ("evaluation", "set_size"): (
        "evaluation.set_sizes, a list (e.g. [8]; every aggregator variant runs at each size)"
    ),
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
    found = _trl_sources()
    if found is None:
        return None
    trl_origin, tf_origin, trl_version = found
    trainer = Path(trl_origin).parent / "trainer"
    fields, bases = _class_fields(trainer / "grpo_config.py", "GRPOConfig")
    chain = {"_BaseConfig": trainer / "base_config.py"}
    while bases:
        base = bases.pop()
        if base in chain:
            more, bases = _class_fields(chain.pop(base), base)
        elif base.endswith("TrainingArguments"):
            more, _ = _class_fields(
                Path(tf_origin).parent / "training_args.py", "TrainingArguments"
            )
        else:
            continue
        fields |= more
    return fields, trl_version


_FIND_TRL = """
import importlib.metadata as m, importlib.util as u, json
specs = [u.find_spec(n) for n in ("trl", "transformers")]
ok = all(s is not None and s.origin for s in specs)
print(json.dumps([specs[0].origin, specs[1].origin, m.version("trl")] if ok else None))
"""


def _trl_sources() -> tuple[str, str, str] | None:
    """(TRL's ``__init__.py``, transformers', TRL's version) where the training jobs run: here,
    else in the ``python`` first on PATH, the jobs' environment's when Snakemake runs in its own
    (confagg.orchestrator; the rules put the jobs' bin folder first before they validate)."""
    from importlib.metadata import PackageNotFoundError, version

    trl, tf = importlib.util.find_spec("trl"), importlib.util.find_spec("transformers")
    if trl is not None and tf is not None and trl.origin and tf.origin:
        try:
            return trl.origin, tf.origin, version("trl")
        except PackageNotFoundError:
            return trl.origin, tf.origin, "?"
    python = shutil.which("python")
    # (venvs' pythons are links to one interpreter: compare their folders, not their targets)
    if python is None or Path(python).parent.absolute() == Path(sys.executable).parent.absolute():
        return None
    proc = subprocess.run(
        [python, "-c", _FIND_TRL], capture_output=True, text=True, timeout=120, check=False
    )
    found = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None
    return tuple(found) if found else None


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


def _sampling_value(config: Mapping, section: str, key: str) -> tuple[object, str]:
    """(value, the key that set it) of one sampling key of a data set's section ("training_pool"
    or "evaluation"): its own ``sampling`` override, else the shared ``sampling``."""
    if key in config[section]["sampling"]:
        return config[section]["sampling"][key], f"{section}.sampling.{key}"
    return config["sampling"][key], f"sampling.{key}"


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
    too_big = [m for m in ev["set_sizes"] if m > n_eval]
    if too_big:
        problems.append(
            f"evaluation.set_sizes {too_big} > evaluation.samples_per_problem {n_eval}: "
            f"the aggregators would get no candidate set of that size"
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
    for i, a in enumerate(ev["aggregators"]):
        # a control or an encoding of the confidences needs a prompt that shows them
        shown = [k for k in ("confidences", "metric", "scale") if k in a]
        if shown and not a["confidence"]:
            problems.append(
                f"evaluation.aggregators[{i}] ({a['name']!r}): {', '.join(shown)} set but "
                f"confidence is false (the prompt shows no confidences)"
            )

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
    cap = engine.get("max_logprobs", VLLM_MAX_LOGPROBS)
    max_len = engine.get("max_model_len")
    # each data set's sampling: sampling, with training_pool.sampling / evaluation.sampling over it
    for section in ("training_pool", "evaluation"):
        (logprobs, logprobs_key), (tokens, tokens_key) = (
            _sampling_value(config, section, k) for k in ("logprobs", "max_tokens")
        )
        if logprobs > cap:
            problems.append(
                f"{logprobs_key} {logprobs} > generator.engine.max_logprobs {cap} (vLLM's cap)"
            )
        if isinstance(max_len, int) and tokens >= max_len:
            problems.append(
                f"{tokens_key} {tokens} >= generator.engine.max_model_len {max_len}: no room "
                f"left for the prompt"
            )
    problems = list(dict.fromkeys(problems))  # a shared key's problem once
    if isinstance(max_len, int):
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


# --- the bill, checked at start (confagg.budget, confagg.memory; the table: confagg.plan) ---


def problem_counts(config: Mapping, root: str | Path = ".") -> dict[str, int | None]:
    """Problems per data set: the prepared problem file's lines where the run has one, else
    what the config says (``plan.problems``, a demo source's n, a known hub split's size),
    capped by ``limit``; None where unknown."""
    from confagg import budget

    sections = {"train_pool": config["training_pool"], **config["benchmarks"]}
    counts = {}
    for name, section in sections.items():
        path = Path(root) / "results" / config["run_name"] / "data" / f"{name}.jsonl"
        counted = None
        if path.is_file():
            with path.open("rb") as f:
                counted = sum(1 for line in f if line.strip())
        counts[name] = budget.problems_of(section, counted, config["plan"]["problems"].get(name))
    return counts


def model_shape(config: Mapping, role: str, root: str | Path = "."):
    """The ``confagg.memory.ModelShape`` of a role's model: a known model's, else its folder's
    config.json (a local folder, or a hub model already downloaded); None where unknown."""
    import json

    from confagg import memory

    spec = config[role]["model"]
    if spec in memory.KNOWN_MODELS:
        return memory.KNOWN_MODELS[spec]
    folder = Path(spec) if model_kind(spec) == "local" else None
    if model_kind(spec) == "hub":
        folder = Path(root) / "resources" / "models" / hub_slug(spec, config[role]["revision"])
    if folder is None or not (folder / "config.json").is_file():
        return None
    return memory.ModelShape.from_hf_config(json.loads((folder / "config.json").read_text()))


def training_memory(config: Mapping, root: str | Path = "."):
    """(bytes per term, peak bytes, shape) of one training process, or None when the
    aggregator's model shape is unknown (confagg.memory: which terms are estimates)."""
    from confagg import memory

    shape = model_shape(config, "aggregator", root)
    if shape is None:
        return None
    t = config["training"]
    cuda = int(t["gpus"]) > 0
    vllm = t["vllm"]
    engine = vllm["gpu_memory_utilization"] * config["plan"]["gpu_memory_gb"] * memory.GB
    if not cuda:
        engine = vllm["kv_cache_memory_bytes"] or 0  # the CPU build's KV cache (RAM)
    sleep = bool(vllm["enable_sleep_mode"]) and cuda
    setup = memory.TrainingShape(
        micro_batch=t["per_device_train_batch_size"],
        prompt_tokens=config["aggregator"]["prompt"]["max_prompt_tokens"] or 0,
        completion_tokens=t["max_completion_length"],
        dtype_bytes=2 if (t["bf16"] if t["bf16"] is not None else cuda) else 4,
        lora_r=t["lora"]["r"],
        lora_modules=tuple(t["lora"]["target_modules"]),
        gradient_checkpointing=bool(t["gradient_checkpointing"]),
        engine_bytes=engine if vllm["enabled"] else 0,
        sleep_mode=sleep,
        cuda=cuda,
    )
    terms = memory.training_terms(shape, setup)
    return terms, memory.peak_bytes(terms, sleep), shape


def _shards_to_fit(shards: int, hours_per_job: float, allowed_h: float) -> int:
    """How many shards make a job of ``hours_per_job`` (at ``shards``) fit ``allowed_h``."""
    return math.ceil(shards * hours_per_job / allowed_h)


def check_budget(
    config: Mapping, runtimes_h: Mapping[str, float], attempts: int = 1, root: str | Path = "."
) -> None:
    """The checks that need the bill (run at start, after ``check_consistency``): a job whose
    expected work cannot fit its rule's runtime, and a GPU training set-up whose per-GPU memory
    estimate exceeds ``plan.gpu_memory_gb``. Raise ConfigError naming the keys, the numbers and
    the ways out.

    ``attempts``: how many runtimes a job that resumes (sample parts, training checkpoints) may
    span. The workflow passes 1: Snakemake 9 reads ``retries`` only after the Snakefile, so the
    expected work must fit one runtime and the retries stay a margin for a slow or preempted
    node and for the estimate's own error."""
    from confagg import budget, memory

    problems = []
    inputs = budget.Inputs(
        problems=problem_counts(config, root), runtimes_h=runtimes_h, attempts=attempts
    )
    rows = budget.plan(config, inputs)
    rate = config["plan"]["generation_tokens_per_s"]
    for row in budget.over_runtime(rows, attempts):
        tries = attempts if row.rule.split(" ")[0] in budget.RESUMABLE else 1
        allowed = row.runtime_h * tries
        if row.rule.startswith("sample_shard"):
            pool = row.rule == f"sample_shard ({budget.POOL})"
            shards_key = "training_pool.shards" if pool else "evaluation.shards"
            shards = config["training_pool" if pool else "evaluation"]["shards"]
            need = _shards_to_fit(shards, row.hours_per_job, allowed)
            way = (
                f"set {shards_key} to {need} or more (now {shards}), a longer runtime "
                f"(set-resources: sample_shard: runtime), a smaller sampling.max_tokens "
                f"({config['sampling']['max_tokens']}), or plan.generation_tokens_per_s if "
                f"your GPUs measured faster"
            )
        elif row.rule == "train_aggregator":
            way = (
                f"fewer training.max_steps ({config['training']['max_steps']}), more "
                f"training.gpus ({config['training']['gpus']}), a longer runtime "
                f"(set-resources: train_aggregator: runtime), or plan.training_tokens_per_s / "
                f"plan.generation_tokens_per_s if measured faster"
            )
        else:
            shards = config["evaluation"]["aggregate_shards"]
            need = _shards_to_fit(shards, row.hours_per_job, allowed)
            way = (
                f"set evaluation.aggregate_shards to {need} or more (now {shards}), a longer "
                f"runtime (set-resources: {row.rule.split(' ')[0]}: runtime), or fewer "
                f"evaluation.aggregators / set_sizes / outputs_per_set / "
                f"aggregator_sampling.max_tokens"
            )
        problems.append(
            f"{row.rule}: its largest job expects {row.hours_per_job:.1f} h of work (plan."
            f"expected_length {config['plan']['expected_length']} of the length limit, at "
            f"plan.generation_tokens_per_s {rate:g}) but may run {row.runtime_h:g} h x "
            f"{tries} attempt(s) = {allowed:g} h; {way}"
        )

    t = config["training"]
    estimate = training_memory(config, root) if int(t["gpus"]) > 0 else None
    limit = config["plan"]["gpu_memory_gb"]
    if estimate is not None and estimate[1] / memory.GB > limit:
        terms, peak, _ = estimate
        listing = ", ".join(f"{k} {v / memory.GB:.1f}" for k, v in terms.items())
        problems.append(
            f"training: one GPU process needs about {peak / memory.GB:.1f} GB > "
            f"plan.gpu_memory_gb {limit:g} ({listing}; GB). Ways out: a smaller "
            f"training.per_device_train_batch_size ({t['per_device_train_batch_size']}; raise "
            f"gradient_accumulation_steps to keep the batch), training.vllm.enable_sleep_mode "
            f"true (now {t['vllm']['enable_sleep_mode']}), a smaller "
            f"training.vllm.gpu_memory_utilization ({t['vllm']['gpu_memory_utilization']}), a "
            f"shorter training.max_completion_length ({t['max_completion_length']}) or "
            f"aggregator.prompt.max_prompt_tokens, training.gradient_checkpointing true "
            f"(now {t['gradient_checkpointing']}); or plan.gpu_memory_gb if your GPUs have more"
        )
    if problems:
        raise ConfigError("the run does not fit:\n  " + "\n  ".join(problems))
