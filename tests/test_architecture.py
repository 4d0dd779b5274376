"""The import rules of docs/architecture.md, enforced on the source of scripts/confagg/.

- core (pure maths and text: no file I/O) imports only core;
- the shared layer (tables, engine, settings of the workflow) imports core and shared;
- a stage (a module a rule runs: it has a ``__main__`` block) imports core and shared, never
  another stage.
Every module must be in exactly one layer, so a new module has to be placed on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scripts" / "confagg"

CORE = {
    "answers",
    "aggregator_prompt",
    "budget",
    "confidence",
    "grouping",
    "memory",
    "methods",
    "prompts",
    "scoring",
    "seeds",
    "stats",
    "verify",
}
SHARED = {
    "candidates",
    "config",
    "costs",
    "engine",
    "files",
    "fingerprints",
    "orchestrator",
    "preflight",
    "problems",
    "provenance",
    "settings",
    "streaming",
    "tables",
    "tinymodel",
    "verifier",
}
# Parts of one stage, imported by that stage alone.
STAGE_PARTS = {
    "colocate": "train",
    "manifest": "train",
    "resume": "train",
    "trainset": "train",
    "parts": "sample",
    "figures": "report",
    "summaries": "report",
}
# Not a layer: the package marker.
IGNORED = {"__init__"}

# What counts as file I/O in a core module: these imports and these calls.
IO_IMPORTS = {
    "pyarrow.parquet",
    "confagg.tables",
    "confagg.files",
    "confagg.candidates",
    "confagg.engine",
    "shutil",
    "tempfile",
}
IO_CALLS = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "read_table"}


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module) -> set[str]:
    """Every module name an ``import`` or ``from ... import`` names, anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "confagg":  # from confagg import x
                names.update(f"confagg.{a.name}" for a in node.names)
    return names


def _is_stage(tree: ast.Module) -> bool:
    """A module with ``if __name__ == "__main__":`` (a rule runs it with ``python -m``)."""
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            left = node.test.left
            if isinstance(left, ast.Name) and left.id == "__name__":
                return True
    return False


def _layers() -> dict[str, str]:
    layers = {}
    for name, tree in _modules().items():
        if name in IGNORED:
            continue
        if name in CORE:
            layers[name] = "core"
        elif name in SHARED:
            layers[name] = "shared"
        elif name in STAGE_PARTS:
            layers[name] = "part"
        elif _is_stage(tree):
            layers[name] = "stage"
        else:
            layers[name] = "unplaced"
    return layers


def test_every_module_has_a_layer():
    unplaced = sorted(n for n, layer in _layers().items() if layer == "unplaced")
    assert not unplaced, (
        f"modules in no layer: {unplaced}; add them to CORE or SHARED in this test (and to "
        "docs/architecture.md), or give them a __main__ block if a rule runs them"
    )
    stale = sorted((CORE | SHARED | set(STAGE_PARTS)) - set(_layers()))
    assert not stale, f"listed here but not in scripts/confagg: {stale}"


ALLOWED = {
    "core": {"core"},
    "shared": {"core", "shared"},
    "stage": {"core", "shared"},
    "part": {"core", "shared", "part"},
}


@pytest.mark.parametrize("module", sorted(_layers()))
def test_imports_follow_the_layers(module):
    layers = _layers()
    tree = _modules()[module]
    wrong = []
    for name in sorted(_imports(tree)):
        if not name.startswith("confagg."):
            continue
        target = name.split(".")[1]
        if target not in layers or target == module:
            continue
        if layers[target] == "part":
            owner = STAGE_PARTS[target]
            if owner not in (module, STAGE_PARTS.get(module)):
                wrong.append(f"{name} (a part of {owner})")
        elif layers[target] not in ALLOWED[layers[module]]:
            wrong.append(f"{name} ({layers[target]})")
    assert not wrong, f"{module} ({layers[module]}) may not import {wrong}"


@pytest.mark.parametrize("module", sorted(CORE))
def test_core_does_no_file_io(module):
    tree = _modules()[module]
    io_imports = sorted(_imports(tree) & IO_IMPORTS)
    calls = sorted(
        {
            (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in IO_CALLS
        }
    )
    assert not io_imports and not calls, f"{module} is core but does I/O: {io_imports} {calls}"


def test_the_rules_catch_a_violation(tmp_path):
    """The checks above see a stage importing a stage (guards against a vacuous test)."""
    tree = ast.parse(
        "from confagg.sample import x\nif __name__ == '__main__':\n    pass\n", "fake.py"
    )
    assert _is_stage(tree)
    assert "confagg.sample" in _imports(tree)
