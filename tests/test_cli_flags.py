"""Bad flags are refused by argparse with exit 2 before any file of a run is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixnas.cli import main

BAD = [
    ["--workers", "-1"], ["--steps-per-epoch", "-3"], ["--label-smoothing", "5"], ["--weight-decay", "-0.1"],
    ["--clip-grad", "nan"], ["--warmup-epochs", "-1"], ["--num-random", "-2"], ["--budget-weight", "inf"],
    ["--distill-min-teacher-acc", "150"],
]


@pytest.mark.parametrize("flag", BAD, ids=lambda f: f"{f[0]}={f[1]}")
def test_a_bad_training_flag_writes_nothing(tmp_path: Path, flag: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["supernet", "train", "--space", "demo", "--data", "digits", "--epochs", "1", "--out", str(out), *flag])
    assert exit_info.value.code == 2
    assert flag[0] in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("flag", [["--train-epochs", "-1"], ["--val-limit", "-5"], ["--cpus-per-trial", "0"],
                                  ["--gpus-per-trial", "-1"]], ids=lambda f: f"{f[0]}={f[1]}")
def test_a_bad_search_flag_is_refused_before_the_search(tmp_path: Path, flag: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(tmp_path / "run"), "--trials", "2", *flag])
    assert exit_info.value.code == 2 and not (tmp_path / "run").exists()
