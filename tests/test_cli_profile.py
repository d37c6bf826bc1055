"""`mixnas profile`: the JSON fields, the table, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixnas.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = """\
name: small
input_size: 32
num_classes: 10
patch_size: 4
layout: hierarchical
stages:
  - {depth: 2, dim: 32, heads: 2, mlp_ratio: 2.0, ffn: mlp, mixer: {type: window_attn, window_size: 4}}
  - {depth: 1, dim: 64, heads: 4, mlp_ratio: 2.0, ffn: local, mixer: {type: dwconv, kernel_size: 3}}
"""


def test_profile_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = tmp_path / "small.yaml"
    arch.write_text(SMALL)
    assert main(["profile", str(arch), "--json", "--runs", "5", "--warmup", "1", "--batch-size", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] > 10_000 and out["gflops"] > 0
    assert out["gflops_min"] == out["gflops_max"] == out["gflops"]
    assert out["latency_ms"]["p90"] >= out["latency_ms"]["median"] > 0
    assert out["latency_ms"]["runs"] == 5
    assert out["batch_size"] == 2 and out["device"].startswith("cpu")


def test_profile_dge_reports_flops_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = tmp_path / "dge.yaml"
    arch.write_text(SMALL.replace("{type: window_attn, window_size: 4}", "{type: dge, granularities: [1, 2, 4]}"))
    assert main(["profile", str(arch), "--json", "--no-latency"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gflops_min"] <= out["gflops"] <= out["gflops_max"]
    assert "latency_ms" not in out


def test_profile_table_for_several_files(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(ROOT / "mixnas" / "configs" / "reference" / f"{n}.yaml") for n in ("deit_t", "localvit_t")]
    assert main(["profile", *files, "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "deit_t" in out and "localvit_t" in out and "5.72M" in out and "5.91M" in out


BAD_CONFIGS = [
    (SMALL.replace("heads: 2,", "heads: 3,"), "stages[0].heads: dim 32 is not divisible by heads 3"),
    (SMALL.replace("window_attn", "transformer"), "stages[0].mixer.type: unknown value 'transformer'"),
    (SMALL.replace("window_size: 4", "window_size: 3"), "stages[0].mixer.window_size: 3 does not tile"),
    ("stages: [", "not valid YAML"),
]


def check_one_line(stderr: str, expected: str, arch: Path) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixnas: error: ") and expected in lines[0], stderr
    assert str(arch) in lines[0] or "bad.yaml" in lines[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                            expected: str) -> None:
    arch = tmp_path / "bad.yaml"
    arch.write_text(text)
    assert main(["profile", str(arch), "--no-latency"]) == 2
    captured = capsys.readouterr()
    check_one_line(captured.err, expected, arch)
    assert captured.out == ""


def test_bad_config_from_a_shell_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The same through the console entry point, in its own process: nothing else (no warning of an import,
    no traceback) reaches stderr."""
    text, expected = BAD_CONFIGS[0]
    arch = tmp_path / "bad.yaml"
    arch.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "mixnas.cli", "profile", str(arch), "--no-latency"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    check_one_line(proc.stderr, expected, arch)


def test_missing_file_and_no_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        arch = tmp_path / "small.yaml"
        arch.write_text(SMALL)
        assert main(["profile", str(arch), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
