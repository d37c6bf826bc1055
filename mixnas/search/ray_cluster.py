"""The Ray instance a search runs on: a cluster joined on purpose, or a local instance that only this user
can reach, ended with the search.

``start_ray`` joins the cluster at ``RaySettings.address``, or one this user started on the machine (never
another user's), or starts a local instance; ``stop_ray`` ends what it started. The Ray Tune backend
(``ray_runner``) and rank-check's parallel training (``ranking``) both run on it.

Networking: without an address, a local Ray instance starts with every server bound to 127.0.0.1
(Ray binds its servers to all interfaces unless the node address is the loopback one, and resolves
127.0.0.1 to the machine's address unless it runs in its single-machine mode, which is switched on
while the instance starts); the dashboard is off and usage statistics are not sent. Its folder is closed
to other users (0700) and removed at the end, Ray's token is kept at 0600, and a watchdog kills the
instance's processes (only this user's, only those whose flags name its folder) when the driver dies.
With an address (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``) it joins that cluster, whose nodes need
mixnas installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from mixnas.errors import ConfigError

LOOPBACK = "127.0.0.1"
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide the Ray Tune search runs.

    Args:
        address: a Ray cluster to join (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None starts a
            local instance bound to 127.0.0.1 (or uses the one this process already started).
        cpus_per_trial: CPUs Ray reserves for each trial.
        gpus_per_trial: GPUs Ray reserves for each trial (fractions share a GPU).
        max_concurrent: trials evaluated at once.
    """

    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2

    def __post_init__(self) -> None:
        if not self.cpus_per_trial >= 0:
            raise ConfigError(f"--cpus-per-trial: {self.cpus_per_trial:g} must be >= 0")
        if not self.gpus_per_trial >= 0:
            raise ConfigError(f"--gpus-per-trial: {self.gpus_per_trial:g} must be >= 0")
        if self.cpus_per_trial == 0 and self.gpus_per_trial == 0:
            raise ConfigError("--cpus-per-trial: 0 with --gpus-per-trial 0; a trial must reserve a CPU or a GPU")
        if self.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent: {self.max_concurrent} must be >= 1")


@contextlib.contextmanager
def _single_machine_mode() -> Iterator[None]:
    """Let Ray take 127.0.0.1 as the node address (it otherwise swaps in the machine's address)."""
    import ray._private.ray_constants as ray_constants

    saved_env, saved_flag = os.environ.get(_SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_MACHINE_ENV] = "0"  # for Ray's child processes
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = saved_env


def local_cpus() -> int:
    """CPUs this process may use (its affinity where the platform tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def live_cluster_address() -> str | None:
    """The address of a running Ray cluster this machine would join by default, or None.

    ``ray.init()`` without an address reads ``RAY_ADDRESS`` or the ``ray_current_cluster`` file that
    ``ray start`` writes, and tries to connect even when that cluster has long stopped. A running cluster
    is one whose GCS address a live raylet process on this machine names.
    """
    from ray._private import services

    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env
    address = services.find_bootstrap_address(None)
    if not address:
        return None
    services.find_gcs_addresses.cache_clear()
    if address not in services.find_gcs_addresses():
        return None
    if not cluster_owned_by_me(address):
        logging.getLogger(__name__).warning(
            "search: the Ray cluster running at %s belongs to another user; not joining it (pass --address to "
            "join a cluster on purpose), starting a local instance", address)
        return None
    return address


def cluster_owned_by_me(address: str) -> bool:
    """Whether a GCS server or raylet of this user names ``address`` (host:port) on its command line: a
    cluster another user started on this machine is never joined without ``--address``, and never sent
    this user's token."""
    uid = os.getuid()
    port = re.compile(rb"(?:^|[=:])" + re.escape(address.rsplit(":", 1)[-1].encode()) + rb"$")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        program = args[0].rsplit(b"/", 1)[-1] if args else b""
        if program in (b"gcs_server", b"raylet") and any(port.search(a) for a in args[1:]):
            return True
    return False


# Kills the processes of one local instance: this user's, with a flag (``--temp-dir=...``,
# ``--session-dir=...``, ...) naming the instance's folder. A ``tail -f`` or an editor on one of its logs
# names the folder as a plain argument and another user's process is not ours: both are left alone.
_WATCHDOG = """
import os, signal, sys, time
marker = sys.argv[1].encode()
uid = os.getuid()
sys.stdin.read()  # returns when the driver's end of the pipe closes: the driver exited or was killed
for _ in range(2):
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\\0")
        except OSError:
            continue
        if any(a.startswith(b"--") and marker in a for a in args):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
    time.sleep(0.5)
"""


_watchdog: subprocess.Popen | None = None


def _start_watchdog(temp_dir: str) -> None:
    """A process that kills every process of the local Ray instance (their command lines name its
    ``temp_dir``) as soon as this driver ends, ``kill -9`` included: Ray's own fate-sharing takes its GCS
    and raylet down with the driver, but its agents and workers only notice some 10-40 s later."""
    global _watchdog
    if sys.platform != "linux":
        return
    _watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, temp_dir], stdin=subprocess.PIPE,
                                 start_new_session=True, close_fds=True)


def _stop_watchdog() -> None:
    global _watchdog
    if _watchdog is not None:
        assert _watchdog.stdin is not None
        _watchdog.stdin.close()
        _watchdog.wait(timeout=30)
        _watchdog = None


def start_ray(settings: RaySettings, say: Any = None) -> bool:
    """Join the cluster at ``settings.address``, or a running one found on this machine (saying so), or
    start a local instance; True when this call started (or joined) one, which ``stop_ray`` ends.

    A Ray instance this process already started (``ray.init`` before) is used as it is. A local instance
    is started explicitly (``address="local"``: a stale ``ray_current_cluster`` file is ignored), in its
    own short temporary directory, bound to 127.0.0.1, and dies with this process.

    Args:
        settings: the address and the resources each trial asks for.
        say: prints the line that names a running cluster being joined (default: the logger).

    Raises:
        ConfigError: a local instance cannot give a trial the CPUs or GPUs it asks for.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    address = settings.address
    if address is None:
        address = live_cluster_address()
        if address is not None:
            (say or logging.getLogger(__name__).warning)(
                f"search: using the running Ray cluster at {address} (pass --address to choose another)")
    if address is not None and address != "local":
        _use_token_if_available()
        ray.init(address=address, logging_level=logging.WARNING)
        return True
    cpus = local_cpus()
    if settings.cpus_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial: {settings.cpus_per_trial:g} CPUs asked, this machine has {cpus}")
    temp_dir = tempfile.mkdtemp(prefix="mixnas-ray-")  # short: Ray's socket paths must fit in 107 bytes
    # Ray 2.60 announces, as a warning, that it turned token authentication on for the local instance.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    _start_watchdog(temp_dir)
    global _local_temp_dir
    _local_temp_dir = temp_dir
    with _single_machine_mode():
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address=LOOPBACK,
                 _temp_dir=temp_dir, logging_level=logging.WARNING)
    tighten_permissions(temp_dir)
    if ray.util.get_node_ip_address() != LOOPBACK:
        stop_ray()
        raise RuntimeError(f"Ray did not take {LOOPBACK} as the node address; refusing to listen on other interfaces")
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if settings.gpus_per_trial > gpus:
        stop_ray()
        raise ConfigError(f"--gpus-per-trial: {settings.gpus_per_trial:g} GPUs asked, this machine has {gpus:g}")
    return True


def _use_token_if_available() -> None:
    """Clusters started by ``ray start`` use token authentication by default (Ray 2.60), but a client's
    ``ray.init(address=...)`` sends the token only in token mode: switch it on when a token is at hand
    and the mode is not set (Ray's own rule for a new local instance)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


_local_temp_dir: str | None = None


def tighten_permissions(temp_dir: str) -> None:
    """Ray leaves its session folder open to every user (0777) and the token it writes readable by all
    (0644): close the local instance's folder to this user (0700) and the token to reading by this user
    (0600), so that other users of the machine can neither plant files in it nor take the token."""
    with contextlib.suppress(OSError):
        os.chmod(temp_dir, 0o700)
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    with contextlib.suppress(OSError):
        if token.is_file() and not token.is_symlink() and token.stat().st_uid == os.getuid():
            os.chmod(token, 0o600)


def stop_ray() -> None:
    """Shut down the Ray instance this process started or joined (and a local one's watchdog and folder)."""
    global _local_temp_dir
    ray.shutdown()
    _stop_watchdog()
    if _local_temp_dir is not None:
        shutil.rmtree(_local_temp_dir, ignore_errors=True)
        _local_temp_dir = None
