"""What a result depends on, and how two such records differ: the fingerprints that guard
resumed work (sample parts, training checkpoints) and the hashes in the manifests."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values (paths and other objects as strings)."""
    return json.loads(json.dumps(obj, default=str))


@functools.lru_cache(maxsize=8)
def sha256(path: str | Path) -> str:
    """The content hash of a file (read once per process: the inputs do not change in a run)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def differences(before: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new``."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [
            d
            for k in sorted(set(before) | set(now))
            for d in differences(before.get(k), now.get(k), f"{prefix}{k}.")
        ]
    if before == now:
        return []
    return [f"{prefix[:-1]}: {json.dumps(before)} -> {json.dumps(now)}"]
