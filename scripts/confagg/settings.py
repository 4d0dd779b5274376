"""Typed settings of a stage, built from the config that the Snakefile already validated.

Each stage declares what it reads from the config as a frozen dataclass (nested dataclasses for
config sections); its rule passes that part of the validated config as JSON (``:q``-quoted);
``load(Settings, text)`` builds the object. The schema is the only home of defaults: a key that
is missing or unknown here is a mismatch between a rule and its stage (a bug, not a user error),
so it raises naming the key rather than guessing.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(TypeError):
    """The settings handed to a stage do not match its declaration."""


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "settings") -> T:
    """``cls`` (a dataclass) from ``data``; nested dataclass fields are built recursively."""
    if not isinstance(data, Mapping):
        raise SettingsError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    missing = sorted(
        n
        for n, f in fields.items()
        if n not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if unknown or missing:
        raise SettingsError(
            f"{where}: {cls.__name__} got unknown keys {unknown} and lacks keys {missing}"
        )
    values = {name: _build(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def _build(hint: Any, value: Any, where: str) -> Any:
    """A field's value: a nested dataclass, a tuple of them (``tuple[X, ...]``), or as given."""
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if dataclasses.is_dataclass(args[0]):
            return tuple(from_mapping(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    return value


def load(cls: type[T], text: str) -> T:
    """``cls`` from a JSON object (the ``--settings`` argument of a stage)."""
    return from_mapping(cls, json.loads(text))


def to_dict(settings: Any) -> dict:
    """The plain-dict form of a settings object (for manifests and fingerprints)."""
    return dataclasses.asdict(settings)
