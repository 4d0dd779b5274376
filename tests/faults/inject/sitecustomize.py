"""Fault injection for tests/faults: a real ``kill -9`` at an exact point of a stage's life,
with no hook in the stage itself.

The fault suite runs a stage's command line with this folder first on ``PYTHONPATH``, so every
Python process of the job (the stage, accelerate's worker, vLLM's engine) imports this module
at start-up. It does nothing unless ``CONFAGG_FAULT_TRACE`` or ``CONFAGG_FAULT_KILL`` is set.
Then it counts the file-system events of the process that touch ``CONFAGG_FAULT_ROOT`` (the
run's results folder):

* ``mkstemp`` a temporary file is created; ``mkdir`` a folder; ``open`` a file opened to write;
* ``parquet`` a row group handed to ``pyarrow.parquet.ParquetWriter.write_table``;
  ``footer`` ``ParquetWriter.close`` (the file is complete once it returns);
* ``link`` / ``replace`` / ``rmtree`` a hard link, rename or folder removal (its target);

and, as a kill point only, ``call:<module>:<function>`` a call of a named function (e.g.
``call:confagg.engine:make_engine``: a point inside the computation, where nothing is written).

``CONFAGG_FAULT_TRACE=<file>``: append each event as a JSON line (what a clean run does, from
which the suite picks its kill points). ``CONFAGG_FAULT_KILL=<event>`` with
``CONFAGG_FAULT_AT=<n>`` (1-based, per process; default 1) and optionally
``CONFAGG_FAULT_MATCH=<text>`` (only events whose path holds it count): on the n-th such event,
*before* it happens, append it to ``CONFAGG_FAULT_MARK`` and SIGKILL the whole process group
(the job: the suite starts each in a session of its own, as Slurm kills a job's whole cgroup).
With ``CONFAGG_FAULT_ERRNO=<name>`` (e.g. ``ENOSPC``) the event fails instead: it raises that
``OSError`` where the call would have run (a full disk or an I/O error at that write), and the
job carries on as it would.

``CONFAGG_FAULT_DELAY=call:<module>:<function or Class.method>`` with ``CONFAGG_FAULT_DELAY_S=<s>``:
sleep that long before each call of it, and count no events (a job made slow by a fixed amount,
for the Slurm time-limit tests, whatever the speed of the machine).
"""

from __future__ import annotations

import os

_TRACE = os.environ.get("CONFAGG_FAULT_TRACE")
_KILL = os.environ.get("CONFAGG_FAULT_KILL")
_DELAY = os.environ.get("CONFAGG_FAULT_DELAY")


def _install() -> None:
    import builtins
    import errno
    import functools
    import importlib.abc
    import importlib.util
    import io
    import json
    import shutil
    import signal
    import sys
    import tempfile
    import time

    root = os.path.abspath(os.environ.get("CONFAGG_FAULT_ROOT") or os.getcwd())
    mark = os.environ.get("CONFAGG_FAULT_MARK")
    kill_event = _KILL or ""
    kill_n = int(os.environ.get("CONFAGG_FAULT_AT") or 1)
    kill_match = os.environ.get("CONFAGG_FAULT_MATCH") or ""
    fail_errno = os.environ.get("CONFAGG_FAULT_ERRNO")
    counts: dict[str, int] = {}
    matched = [0]  # events that count towards the kill
    real_open = builtins.open
    busy = [False]  # our own trace writes are no events

    def under_root(path) -> bool:
        try:
            p = os.path.abspath(os.fspath(path))
        except TypeError:  # a file descriptor
            return False
        return p == root or p.startswith(root + os.sep)

    def event(kind: str, path=None) -> None:
        if busy[0] or (not kind.startswith("call:") and (path is None or not under_root(path))):
            return
        counts[kind] = n = counts.get(kind, 0) + 1
        record = {"event": kind, "n": n, "pid": os.getpid(), "path": path and os.fspath(path)}
        busy[0] = True
        try:
            if _TRACE:
                with real_open(_TRACE, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if kind == kill_event and kill_match in (record["path"] or ""):
                matched[0] += 1
                if matched[0] != kill_n:
                    return
                if mark:
                    with real_open(mark, "a") as f:
                        f.write(json.dumps(record) + "\n")
                        f.flush()
                        os.fsync(f.fileno())
                if fail_errno:
                    code = getattr(errno, fail_errno)
                    raise OSError(code, os.strerror(code), record["path"])
                os.killpg(os.getpgrp(), signal.SIGKILL)
        finally:
            busy[0] = False

    def wrap(fn, kind, path_of):
        @functools.wraps(fn)  # keeps attributes callers test (shutil.rmtree.avoids_symlink_...)
        def wrapper(*args, **kwargs):
            event(kind, path_of(*args, **kwargs))
            return fn(*args, **kwargs)

        return wrapper

    def opened_to_write(file, mode="r", *args, **kwargs):
        return file if any(c in mode for c in "wax+") else None

    def temp_dir(*args, **kwargs):
        return kwargs.get("dir") or (args[2] if len(args) > 2 else tempfile.gettempdir())

    def patch_parquet(module) -> None:
        cls = module.ParquetWriter
        cls.write_table = wrap(cls.write_table, "parquet", lambda self, *a, **k: self.where)
        cls.close = wrap(cls.close, "footer", lambda self, *a, **k: self.where)

    # module name -> its patches, applied as the module loads (call:<module>:<function> events,
    # pyarrow's writer, the delay)
    after_import: dict[str, list] = {}
    if _TRACE or _KILL:
        after_import["pyarrow.parquet.core"] = [patch_parquet]
        builtins.open = io.open = wrap(real_open, "open", opened_to_write)
        tempfile.mkstemp = wrap(tempfile.mkstemp, "mkstemp", temp_dir)
        os.mkdir = wrap(os.mkdir, "mkdir", lambda path, *a, **k: path)
        os.link = wrap(os.link, "link", lambda src, dst, *a, **k: dst)
        os.replace = wrap(os.replace, "replace", lambda src, dst, *a, **k: dst)
        os.rename = wrap(os.rename, "replace", lambda src, dst, *a, **k: dst)
        shutil.rmtree = wrap(shutil.rmtree, "rmtree", lambda path, *a, **k: path)

    if kill_event.startswith("call:"):
        _, module_name, func = kill_event.split(":")

        def patch_call(module, func=func, kind=kill_event) -> None:
            setattr(module, func, wrap(getattr(module, func), kind, lambda *a, **k: None))

        after_import.setdefault(module_name, []).append(patch_call)

    if _DELAY:
        _, delay_module, qualname = _DELAY.split(":")
        delay_s = float(os.environ.get("CONFAGG_FAULT_DELAY_S") or 1)

        def patch_delay(module, qualname=qualname) -> None:
            *owners, name = qualname.split(".")
            owner = functools.reduce(getattr, owners, module)
            fn = getattr(owner, name)

            @functools.wraps(fn)
            def slow(*args, **kwargs):
                time.sleep(delay_s)
                return fn(*args, **kwargs)

            setattr(owner, name, slow)

        after_import.setdefault(delay_module, []).append(patch_delay)

    class AfterImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name not in after_import:
                return None
            sys.meta_path.remove(self)  # find the real spec, then put ourselves back
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            loader, patches = spec.loader, after_import[name]

            class Loader(importlib.abc.Loader):
                def create_module(self, spec):
                    return loader.create_module(spec)

                def exec_module(self, module):
                    loader.exec_module(module)
                    for patch in patches:
                        patch(module)

            spec.loader = Loader()
            return spec

    sys.meta_path.insert(0, AfterImport())


if _TRACE or _KILL or _DELAY:
    _install()
