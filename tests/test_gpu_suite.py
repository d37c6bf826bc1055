"""The GPU suite's smoke run (every part for a few iterations, on the CPU here), and that the code it
measures imports without ray, optuna and plotly (the GPU machine has none of them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = """
import sys
for name in ("ray", "optuna", "plotly"):
    sys.modules[name] = None  # any import of them raises ImportError
import mixnas, mixnas.supernet, mixnas.search.profiler, mixnas.search.cost, mixnas.search.latency_lut
import mixnas.search
print("ok")
"""


def test_measured_code_imports_without_ray_optuna_plotly() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.slow
def test_gpu_suite_smoke(tmp_path: Path) -> None:
    # One torch thread: beside the other pytest worker, a second thread only adds contention (4x slower).
    out = subprocess.run([sys.executable, "bench/gpu_suite.py", "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for part in ("references", "dge", "supernet_step", "latency_lut", "cuda_paths"):
        text = (tmp_path / f"{part}.md").read_text()
        assert "failed" not in text.splitlines()[0] and "|" in text or part == "cuda_paths", (part, text[:500])
    assert "bf16 autocast supernet steps" in (tmp_path / "cuda_paths.md").read_text()
    assert "finite: True" in (tmp_path / "cuda_paths.md").read_text()
