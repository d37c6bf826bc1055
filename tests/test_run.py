"""`mixnas run`: the main job end to end (a shortened demo preset), and that running it again resumes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mixnas import ArchConfig, build_model
from mixnas.cli import main
from mixnas.presets import PRESETS, get_preset, run_preset
from mixnas.results import load_trials
from mixnas.search_space import ConfigError
from mixnas.supernet.checkpoint import load_weights


@pytest.mark.slow
def test_demo_preset_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    preset = replace(PRESETS["demo"], epochs=1, steps_per_epoch=4, trials=6, val_limit=128, latency_runs=3,
                     latency_max_seconds=0.2)
    out = tmp_path / "demo"
    paths = run_preset(preset, out, progress=True)
    printed = capsys.readouterr().out
    for stage in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert stage in printed
    assert f"Pareto page:      {out / 'pages' / 'index.html'}" in printed
    assert paths["index"].is_file() and "accuracy_vs_gflops.html" in paths["index"].read_text()
    assert "plotly" in (out / "pages" / "accuracy_vs_gflops.html").read_text().lower()
    table = load_trials(out)
    assert (~table["is_reference"]).sum() == 6
    exported = sorted((out / "exported").glob("*.yaml"))
    assert exported, "the front was not exported"
    for path in exported:
        model = load_weights(build_model(ArchConfig.from_yaml(path)), path.with_suffix(".safetensors")).eval()
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    # Running it again resumes: nothing is retrained or re-searched.
    checkpoint_mtime = (out / "checkpoint.pt").stat().st_mtime_ns
    journal_size = (out / "search" / "journal.log").stat().st_size
    run_preset(preset, out, progress=False)
    assert (out / "checkpoint.pt").stat().st_mtime_ns == checkpoint_mtime
    assert (out / "search" / "journal.log").stat().st_size == journal_size
    assert len(load_trials(out)) == len(table)
    # More trials continue the same search.
    run_preset(replace(preset, trials=8), out, progress=False)
    assert (~load_trials(out)["is_reference"]).sum() == 8


def test_presets_need_data_and_exist(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--data: preset cifar has no embedded data; pass --data cifar:PATH"):
        get_preset("cifar", None)
    with pytest.raises(ConfigError, match="--preset: unknown preset 'huge'"):
        get_preset("huge", None)
    assert get_preset("imagenet", "imagefolder:/data").data == "imagefolder:/data"
    for preset in PRESETS.values():
        assert preset.space_path.is_file() and preset.cost
    assert main(["run", "--preset", "cifar", "--out", "/tmp/never-created-mixnas"]) == 2
    assert "pass --data cifar:PATH" in capsys.readouterr().err
    assert not Path("/tmp/never-created-mixnas").exists()
