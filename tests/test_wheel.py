"""A wheel install (not editable) carries the packaged configs: from an empty directory it runs the demo
preset (shortened) and profiles a reference by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_runs_the_demo_and_profiles_a_reference(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("mixnas-*.whl")
    venv = tmp_path / "venv"
    # Without its own pip (ensurepip takes 3 s): this environment's pip installs into it (``pip --python``).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # Reuse this environment's dependencies: its site-packages as a plain path entry (its .pth files, the
    # editable install of mixnas among them, are not processed there).
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "reused.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                                str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    mixnas = venv / "bin" / "mixnas"
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}

    where = subprocess.run([str(python), "-c", "import mixnas; print(mixnas.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert str(venv) in where and str(ROOT) not in where, where  # the wheel's copy, not the source tree

    profile = subprocess.run([str(mixnas), "profile", "swin_t", "--no-latency", "--json"], cwd=empty, env=env,
                             capture_output=True, text=True, timeout=300)
    assert profile.returncode == 0, profile.stderr[-2000:]
    assert abs(json.loads(profile.stdout)["params"] - 28_288_354) < 1000

    run = subprocess.run(
        [str(mixnas), "run", "--preset", "demo", "--out", "demo", "--epochs", "1", "--steps-per-epoch", "3",
         "--trials", "2", "--quiet"],
        cwd=empty, env=env, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (empty / "demo" / "pages" / "index.html").is_file()
    assert list((empty / "demo" / "exported").glob("*.yaml"))
