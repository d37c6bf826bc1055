"""Real Ray clusters on this machine (slow): a two-node cluster started with Ray's own CLI runs a search
whose trials land on both nodes, and when the second node is killed mid-search (while a trial there is held
in its evaluation) the search finishes on the survivor with every trial complete once; ``--backend ray``
without an address starts a local instance despite a stale cluster file and joins a live cluster (saying
so); a local instance dies with a ``kill -9``-ed driver; Ray's private loopback flag still exists."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

import mixnas.search.ray_cluster as ray_cluster
from mixnas.results import load_trials
from mixnas.search.ray_cluster import RaySettings, live_cluster_address, start_ray, stop_ray

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_processes(marker: str) -> list[int]:
    """PIDs of live processes whose command line contains ``marker``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            child, parent = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def running_a_trial(pid: int) -> bool:
    """Whether a Ray worker under ``pid`` (a node's ``ray start``) is running a trial right now."""
    for child in descendants(pid):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc.train"):
                return True
        except OSError:
            continue
    return False


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def ray_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private default Ray temp dir (RAY_TMPDIR) for this test and the processes it starts, so that no
    ``ray_current_cluster`` file of the machine is read or written."""
    root = Path(f"/tmp/mxr{os.getpid()}{tmp_path.name[-6:]}")  # short: Ray's socket paths must fit in 107 bytes
    root.mkdir()
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    yield root
    shutil.rmtree(root, ignore_errors=True)


# Put on a node's PYTHONPATH: while the file MIXNAS_TEST_HOLD names exists, every candidate that node's Ray
# workers score waits before scoring, so a trial there is still running when the node is killed (without it
# the trial could end between the test seeing it and the kill, and nothing would be interrupted). A node
# given MIXNAS_TEST_RELEASE first removes that file (the other node's hold) whenever it starts scoring: the
# head holds its trial until the second node has one, so that the head cannot score them all while the second
# node's worker is still starting (it did, once the workers scored faster).
HOLD_HOOK = """
import importlib.abc, os, sys, time
from pathlib import Path

HOLD = Path(os.environ["MIXNAS_TEST_HOLD"])
RELEASE = os.environ.get("MIXNAS_TEST_RELEASE")


class _HoldEvaluations(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "mixnas.search.evaluator":
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_hold(module):
            exec_module(module)
            evaluate = module.CandidateEvaluator.evaluate

            def held(self, *args, **kwargs):
                if RELEASE:
                    Path(RELEASE).unlink(missing_ok=True)  # the other node goes on
                while HOLD.exists():
                    HOLD.with_suffix(".held").touch()  # tells the test the hook works on this node
                    time.sleep(0.2)
                return evaluate(self, *args, **kwargs)

            module.CandidateEvaluator.evaluate = held

        spec.loader.exec_module = exec_and_hold
        return spec


sys.meta_path.insert(0, _HoldEvaluations())
"""


@contextlib.contextmanager
def node(args: list[str], ray_tmp: Path, name: str, hold: Path | None = None, release: Path | None = None,
         ) -> Iterator[subprocess.Popen]:
    """A Ray node started with ``ray start ... --block``; stopped (its whole tree) at the end. ``hold`` and
    ``release``: the files of HOLD_HOOK's MIXNAS_TEST_HOLD and MIXNAS_TEST_RELEASE."""
    # Ray 2.60's `ray start` turns on token authentication (token in ~/.ray/auth_token); a joining node
    # sends it only in token mode. On SIGTERM a node drains for up to 30 s before it stops (for Ray Serve's
    # replicas); nothing here needs draining, so it stops at once.
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "token",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    if hold is not None:  # the node's workers hold their evaluations while the file ``hold`` exists
        hook = ray_tmp / f"{name}-hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(HOLD_HOOK)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH", "")) if p)
        env["MIXNAS_TEST_HOLD"] = str(hold)
        if release is not None:
            env["MIXNAS_TEST_RELEASE"] = str(release)
    log = open(ray_tmp / f"{name}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([str(BIN / "ray"), "start", *args, "--block", "--disable-usage-stats"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def search_command(run: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mixnas.cli", "search", str(run), "--trials", str(trials), "--backend", "ray",
            "--objectives", "accuracy,flops", "--latency", "none", "--val-limit", "64", "--flops-images", "2",
            "--no-references", "--cpus-per-trial", "1", "--max-concurrent", "2", "--quiet", *extra]


@pytest.fixture
def run(static_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(static_run, dst)
    return dst


def test_two_nodes_share_the_trials_and_a_dead_node_loses_nothing(run: Path, ray_tmp: Path) -> None:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    head_args = ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
                 "--include-dashboard", "false"]
    head_hold = ray_tmp / "hold-head"
    with node(head_args, ray_tmp, "head", hold=head_hold):
        wait_until(lambda: live_cluster_address() is not None, 60, "the head node")
        address = live_cluster_address()
        worker_args = ["--address", address, "--num-cpus", "1", "--dashboard-agent-listen-port", "0",
                       "--min-worker-port", "0", "--max-worker-port", "0", "--temp-dir", str(ray_tmp / "w")]
        hold = ray_tmp / "hold-evaluations"
        with node(worker_args, ray_tmp, "worker", hold=hold, release=head_hold) as second:
            assert start_ray(RaySettings(address=address))
            try:
                wait_until(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, 60, "the second node")
                (head_id,) = [n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"]]
            finally:
                stop_ray()

            # 6 trials with one CPU per node and two at a time: both nodes take some (the head holds its first
            # trial until the second node starts scoring one).
            head_hold.touch()
            first = subprocess.run(search_command(run, 6, "--address", address), env=env, cwd=ROOT,
                                   capture_output=True, text=True, timeout=600)
            assert first.returncode == 0, first.stderr[-3000:]
            table = load_trials(run)
            assert len(table) == 6 and (table["state"] == "COMPLETE").all()
            assert table["worker"].str.len().gt(0).all()
            assert table["worker"].nunique() == 2, table["worker"].tolist()

            # 6 more; the second node is killed while it scores one (held until then): that trial runs again on
            # the head. The head again holds its first until the second node has one.
            hold.touch()
            head_hold.touch()
            held = hold.with_suffix(".held")
            proc = subprocess.Popen(search_command(run, 12, "--address", address), env=env, cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            experiment = run / "search" / "ray"

            def second_node_scores_a_new_trial() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"the extended search ended (exit {proc.returncode}) before a trial was seen on the second "
                        f"node; workers: {load_trials(run)['worker'].tolist()}; {proc.stderr.read()[-3000:]}")
                # A trial of the second node waits in its evaluation (the hook says so) until the node dies.
                return held.is_file() and running_a_trial(second.pid)

            try:
                wait_until(second_node_scores_a_new_trial, 300, "a trial of the extended search on the second node")
            except AssertionError as e:
                if proc.poll() is None:
                    proc.kill()
                logs = "".join(f"\n--- {p.name}:\n" + p.read_text()[-1500:] for p in sorted(ray_tmp.glob("*.log")))
                raise AssertionError(f"{e}; trial folders: {sorted(d.name for d in experiment.glob('trial_*'))}; "
                                     f"search stderr: {proc.communicate()[1][-3000:]}{logs}") from None
            tree = descendants(second.pid)  # the node's raylet and workers, whatever process group they are in
            os.killpg(second.pid, signal.SIGKILL)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            hold.unlink()
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
    table = load_trials(run)
    assert len(table) == 12 and (table["state"] == "COMPLETE").all(), table[["number", "state", "failure_reason"]]
    assert table["arch_id"].is_unique and list(table["number"]) == list(range(12))
    # The trial held on the second node could not finish there (it waited until the node died): it, and every
    # other trial of the extended search, was scored on the head.
    extended = table[table["number"] >= 6]
    assert extended["worker"].str.endswith("/" + head_id[:8]).all(), table[["number", "worker"]].to_string()


def test_loopback_flag_still_exists() -> None:
    """mixnas binds a local instance to 127.0.0.1 through Ray's private single-machine switch; if a Ray
    upgrade removes it, fail here rather than listen on every interface."""
    import inspect

    import ray._private.ray_constants as ray_constants
    from ray._private import services

    assert hasattr(ray_constants, "ENABLE_RAY_CLUSTER"), "ray_constants.ENABLE_RAY_CLUSTER is gone"
    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR == ray_cluster._SINGLE_MACHINE_ENV
    assert "ENABLE_RAY_CLUSTER" in inspect.getsource(services.get_node_ip_address)
    assert "_node_ip_address" in inspect.getsource(ray.init)


def test_without_an_address_a_stale_file_is_ignored_and_a_live_cluster_used(
    ray_tmp: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    stale = ray_tmp / "ray" / "ray_current_cluster"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text(f"127.0.0.1:{free_port()}")  # a cluster that stopped long ago
    assert live_cluster_address() is None
    assert start_ray(RaySettings())  # a local instance, not a ValueError about num_cpus
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
    finally:
        stop_ray()
    port = free_port()
    with node(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
               "--include-dashboard", "false"], ray_tmp, "head"):
        wait_until(lambda: live_cluster_address() is not None, 60, "the head node")
        assert start_ray(RaySettings(), say=print)
        try:
            assert f"using the running Ray cluster at {live_cluster_address()}" in capsys.readouterr().out
            assert ray.cluster_resources().get("CPU") == 1  # the cluster's, not this machine's count
        finally:
            stop_ray()


def test_a_killed_driver_takes_its_local_instance_with_it(run: Path, ray_tmp: Path) -> None:
    before = set(Path("/tmp").glob("mixnas-ray-*"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": "/tmp"}
    proc = subprocess.Popen(search_command(run, 20), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: list((run / "search" / "ray").glob("trial_*")), 300, "the first trial")
        (temp_dir,) = set(Path("/tmp").glob("mixnas-ray-*")) - before
        assert ray_processes(str(temp_dir)), "no Ray process of the instance found"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_until(lambda: not ray_processes(str(temp_dir)), 20, "the instance's processes to exit")
    finally:
        proc.kill()
        proc.wait()
