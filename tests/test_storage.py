"""A full or read-only disk: one line naming the file, exit 2, the previous file intact, no temporary left."""

from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pytest

import mixnas.atomic as atomic
from mixnas.cli import main
from mixnas.errors import StorageError
from mixnas.search_space import SearchSpace
from mixnas.trials import save_trials
from tests.test_guided_search import _row
from tests.tiny import TINY_SPACE


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_an_atomic_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path: Path,
                                                                              monkeypatch) -> None:
    target = tmp_path / "trials.csv"
    target.write_text("old\n")
    monkeypatch.setattr(atomic.os, "replace", _full_disk)
    with pytest.raises(StorageError, match=r"trials\.csv: cannot be written \(No space left on device\)"):
        atomic.atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"]  # no temporary left


def test_a_read_only_folder_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(atomic.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))
    with pytest.raises(StorageError, match="Read-only file system"):
        atomic.atomic_write_text(tmp_path / "x" / "page.html", "<html>")


def test_mixnas_results_on_a_full_disk_exits_2_with_one_line(tmp_path: Path, monkeypatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    space = SearchSpace.from_dict(TINY_SPACE)
    rows = []
    for i, (acc, gflops) in enumerate([(60.0, 0.001), (70.0, 0.002)]):
        arch = space.sample(i)
        rows.append(_row(i, arch.arch_id, acc, gflops, 2.0 + i) | {"arch": arch.canonical_json(),
                                                                    "summary": arch.summary()})
    save_trials(pd.DataFrame(rows), run)
    monkeypatch.setattr(atomic.os, "replace", _full_disk)
    assert main(["results", str(run), "--objectives", "accuracy,flops"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be written" in err and str(run) in err
    assert not [p for p in run.rglob("*.tmp")]
