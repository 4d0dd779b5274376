"""Workflow configuration: JSON-schema validation with defaults, and clear errors.

Called by the Snakefile before any rule is defined, so a wrong key or type stops the run at
once with a message naming the key (``sampling.temperature: 'hot' is not of type 'number'``).
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from pathlib import Path

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


def validate(config: MutableMapping, schema_path: str | Path) -> None:
    """Fill defaults into ``config`` and validate it; raise ConfigError naming every bad key."""
    import jsonschema

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
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    check_model(config["generator"]["model"], "generator.model")


def model_kind(spec: str) -> str:
    """``"smollm2"``, ``"local"`` (an existing folder) or ``"hub"`` (a hub id)."""
    if spec == SMOLLM2:
        return "smollm2"
    if Path(spec).is_dir():
        return "local"
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return "hub"
    return "missing"


def check_model(spec: str, key: str) -> None:
    """Fail fast on a model that is neither a folder, a hub id nor the packaged SmolLM2."""
    if model_kind(spec) == "missing":
        raise ConfigError(
            f"invalid configuration:\n  {key}: {spec!r} is not an existing model "
            f"folder, a hub id like 'Qwen/Qwen3-1.7B', or {SMOLLM2!r}"
        )


def hub_slug(spec: str) -> str:
    """Folder name for a hub model under resources/models/."""
    return spec.replace("/", "--")
