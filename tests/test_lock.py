"""One driver per run directory: a second command is refused with one line naming the first one's PID and
host, in either order; a lock left by a killed process is stale and taken over; holding is re-entrant."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixnas.cli import main
from mixnas.errors import RunLockedError
from mixnas.lock import drive
from mixnas.run_dir import RunDir
from mixnas.search_space import SearchSpace
from mixnas.training import TrainConfig, train_supernet

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "input_size": 32, "num_classes": 10, "patch_size": 8,
    "stages": [{"depth": [1], "dim": [16], "heads": [2], "mixers": {"dwconv": {"kernel_size": [3]}}}],
}
HOLD = """
import sys, time
from mixnas.lock import drive
with drive(sys.argv[1], "search"):
    print("held", flush=True)
    time.sleep(120)
"""


def holder(run_dir: Path) -> subprocess.Popen:
    """A process that holds ``run_dir``'s lock (as a running search would) until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_command_is_refused_while_another_drives(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = holder(run)
    try:
        config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=8, calib_batches=1)
        with pytest.raises(RunLockedError) as err:
            train_supernet(SearchSpace.from_dict(TINY), run, config, device="cpu", progress=False)
        message = str(err.value)
        assert f"pid {proc.pid} on {socket.gethostname()}" in message and "(search," in message
        assert "\n" not in message
        assert not RunDir(run).space_file.exists() and not RunDir(run).checkpoint.exists()  # nothing written
    finally:
        proc.kill()
        proc.wait()
    # Killed with SIGKILL: its lock is stale, and the same command now runs.
    assert RunDir(run).lock_file.exists()
    train_supernet(SearchSpace.from_dict(TINY), run, config, device="cpu", progress=False)
    assert RunDir(run).checkpoint.exists() and not RunDir(run).lock_file.exists()


def test_the_other_order_through_the_cli(tmp_path: Path) -> None:
    """This process drives the directory; ``mixnas search`` started on it exits 2 naming this process."""
    run = tmp_path / "run"
    with drive(run, "supernet train"):
        out = subprocess.run([sys.executable, "-m", "mixnas.cli", "search", str(run), "--trials", "2"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip()
    assert err.startswith("mixnas: error: ") and len(err.splitlines()) == 1
    assert f"pid {os.getpid()} on {socket.gethostname()} (supernet train" in err


def test_holding_is_reentrant_and_released(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with drive(run, "mixnas run"), drive(run, "search"):
        assert RunDir(run).lock_file.exists()
    assert not RunDir(run).lock_file.exists()
    with drive(run, "search"):  # free again
        pass


def test_a_lock_of_a_killed_process_is_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    proc = holder(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert RunDir(run).lock_file.read_text().strip()  # the dead holder's record is still there
    start = time.monotonic()
    with drive(run, "search"):
        pass
    assert time.monotonic() - start < 5
    assert main(["search", str(run), "--trials", "1", "--quiet"]) == 2  # not locked now: fails for its own reason
    assert "another mixnas process" not in capsys.readouterr().err


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    """On shared storage another user could plant the lock as a link to a file of the victim's: following
    it would truncate that file and write the lock's JSON into it."""
    run = tmp_path / "run"
    run.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (run / ".mixnas.lock").symlink_to(target)
    with pytest.raises(RunLockedError, match="symbolic link"), drive(run, "search"):
        pass
    assert target.read_text() == "keep me\n"
    (run / ".mixnas.lock").unlink()
    (run / ".mixnas.lock").mkdir()
    with pytest.raises(RunLockedError, match="not a regular file"), drive(run, "search"):
        pass


def test_the_next_driver_removes_temporaries_a_killed_write_left(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "pages").mkdir(parents=True)
    (run / "exported").mkdir()
    left = [run / ".trials.csv.k2j3h4.tmp", run / "pages" / ".index.html.a_b9.tmp",
            run / "exported" / ".trial0001.safetensors.x1y2.tmp"]
    for path in left:
        path.write_bytes(b"half written")
    (run / "ranking" / "abc-seed0").mkdir(parents=True)
    (run / "ranking" / "abc-seed0" / RunDir.TRAIN_CONFIG).write_text("{}")
    keep = [run / "notes.tmp", run / "pages" / "index.html", run / ".hidden",
            run / "ranking" / "abc-seed0" / ".checkpoint.pt.q1w2.tmp"]  # a nested run's own, left to it
    for path in keep:
        path.write_text("mine")
    with drive(run, "results"):
        pass
    assert not any(p.exists() for p in left)
    assert all(p.read_text() == "mine" for p in keep)
