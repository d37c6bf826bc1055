"""The data sets the head: ``num_classes: auto`` takes the dataset's count (and says so), ``--num-classes``
overrides, an explicit count that mismatches the data is refused in one line; the shipped demo and cifar
spaces say auto."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_data import make_cifar100, make_imagefolder

from mixnas.cli import main
from mixnas.errors import ConfigError
from mixnas.packaged import load_space
from mixnas.run_dir import RunDir
from mixnas.search_space import SearchSpace
from mixnas.training import TrainConfig, train_supernet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
SPACE = {
    "input_size": 32, "num_classes": "auto", "patch_size": 8,
    "stages": [{"depth": [1], "dim": [16], "heads": [2], "mixers": {"dwconv": {"kernel_size": [3]}}}],
}
QUICK = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4", "--calib-batches", "1", "--device", "cpu"]


def test_shipped_spaces_take_the_count_from_the_data() -> None:
    assert load_space("demo").num_classes_auto and load_space("cifar").num_classes_auto
    assert load_space("imagenet").num_classes == 1000
    with pytest.raises(ConfigError, match="num_classes: 'auto' takes the count from the dataset"):
        load_space("demo").largest()
    assert SearchSpace.from_dict(SPACE).to_dict()["num_classes"] == "auto"  # round trip keeps auto


def test_a_two_class_image_folder_with_the_auto_space(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_imagefolder(tmp_path / "tree", {"ant": (6, 2), "bee": (6, 2)})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    run = tmp_path / "run"
    assert main(["supernet", "train", "--space", str(space), "--data", f"imagefolder:{folder}", "--out", str(run),
                 *QUICK]) == 0
    assert f"num_classes: auto -> 2 (the classes of imagefolder:{folder})" in capsys.readouterr().out
    stored = SearchSpace.from_yaml(RunDir(run).space_file)
    assert stored.num_classes == 2  # the run directory holds the resolved space
    # Running again resumes (the resolved space equals the stored one).
    assert main(["supernet", "train", "--space", str(space), "--data", f"imagefolder:{folder}", "--out", str(run),
                 *QUICK, "--quiet"]) == 0


def test_cifar100_and_the_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_cifar100(tmp_path / "c100")
    config = TrainConfig(data=f"cifar:{root}", epochs=1, steps_per_epoch=1, batch_size=4, calib_batches=1)
    train_supernet(SearchSpace.from_dict(SPACE), tmp_path / "auto", config, device="cpu", progress=False)
    assert SearchSpace.from_yaml(RunDir(tmp_path / "auto").space_file).num_classes == 100
    explicit = {**SPACE, "num_classes": 10}
    with pytest.raises(ConfigError, match=r"^num_classes: the space has 10 classes but cifar:.* has 100"):
        train_supernet(SearchSpace.from_dict(explicit), tmp_path / "explicit", config, device="cpu", progress=False)
    assert not (tmp_path / "explicit").exists()
    # --num-classes overrides the space's count, and must itself match the data.
    train_supernet(SearchSpace.from_dict(explicit), tmp_path / "override", config, device="cpu", progress=False,
                   num_classes=100)
    assert SearchSpace.from_yaml(RunDir(tmp_path / "override").space_file).num_classes == 100
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(explicit))
    assert main(["supernet", "train", "--space", str(space), "--data", f"cifar:{root}", "--out", str(tmp_path / "w"),
                 "--num-classes", "7", *QUICK, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--num-classes: 7, but cifar:" in err and "has 100 classes" in err
