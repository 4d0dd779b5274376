"""The temporaries a kill leaves beside an output are removed by the next write of that output,
and only those: another output's temporaries in the same folder (a job writing it right now)
are left alone."""

from __future__ import annotations

import os
import tempfile

from confagg.files import atomic_dir, atomic_path


def test_a_write_removes_its_own_leftovers_only(tmp_path):
    out, other = tmp_path / "shard0.parquet", tmp_path / "shard1.parquet"
    mine = [
        tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=tmp_path)[1] for _ in range(2)
    ]
    theirs = tempfile.mkstemp(prefix=f".{other.name}.", suffix=".tmp", dir=tmp_path)[1]
    longer = tempfile.mkstemp(prefix=f".{out.name}.x.", suffix=".tmp", dir=tmp_path)[1]
    with atomic_path(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new"
    assert not any(os.path.exists(p) for p in mine)
    assert os.path.exists(theirs) and os.path.exists(longer)  # other outputs' temporaries


def test_a_folder_write_removes_its_own_leftovers_only(tmp_path):
    out = tmp_path / "merged"
    mine = [tmp_path / ".merged.tmp-123-0badcafe", tmp_path / ".merged.old-45-deadbeef"]
    theirs = tmp_path / ".adapter.tmp-123-0badcafe"
    for folder in [*mine, theirs]:
        folder.mkdir()
        (folder / "weights").write_text("half")
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_text("whole")
    assert (out / "weights").read_text() == "whole"
    assert not any(p.exists() for p in mine) and theirs.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".adapter.tmp-123-0badcafe", "merged"]
