"""Seals on Ray Tune's state files (mixnas.search.seal): what a restore would unpickle must carry a seal
made with this user's key, or the restore is refused with one line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mixnas.errors import ConfigError
from mixnas.search import seal


@pytest.fixture
def key_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def experiment_with(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_the_key_is_made_once_private_and_reused(key_home: Path) -> None:
    key = seal.load_key()
    path = key_home / "mixnas" / "seal.key"
    assert len(key) == seal.KEY_BYTES and path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert seal.load_key() == key
    assert not [p for p in path.parent.iterdir() if p.name != "seal.key"]  # no temporary left


@pytest.mark.parametrize("case", ["readable by others", "a link", "too short"])
def test_a_key_others_could_read_or_that_is_not_a_key_is_refused(key_home: Path, tmp_path: Path, case: str) -> None:
    path = key_home / "mixnas" / "seal.key"
    path.parent.mkdir(parents=True)
    if case == "a link":
        (tmp_path / "elsewhere").write_bytes(b"k" * seal.KEY_BYTES)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.write_bytes(b"k" * (seal.KEY_BYTES if case == "readable by others" else 5))
        os.chmod(path, 0o644 if case == "readable by others" else 0o600)
    with pytest.raises(ConfigError, match="seal.key") as info:
        seal.load_key()
    assert "\n" not in str(info.value)


def test_sealed_files_verify_and_the_log_keeps_only_the_current_ones(key_home: Path, tmp_path: Path) -> None:
    experiment = experiment_with(tmp_path / "ray", {"tuner.pkl": b"tuner", "experiment_state-1.json": b"{}"})
    (experiment / "trial_0").mkdir()  # folders are not state files
    log = experiment / seal.SEAL_LOG
    seal.seal_folder(experiment, log)
    (experiment / "experiment_state-1.json").write_bytes(b'{"a": 1}')  # Tune saves again
    seal.seal_folder(experiment, log)
    assert len(log.read_text().splitlines()) == 4
    seal.verify(experiment)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(e["file"] for e in entries) == ["experiment_state-1.json", "tuner.pkl"]
    seal.verify(experiment)  # the compacted log still verifies


def test_a_file_sealed_in_a_staging_folder_verifies_where_it_arrives(key_home: Path, tmp_path: Path) -> None:
    """Tune writes its state to a staging folder and copies it to the experiment: the seal goes with the
    content, not the folder. Temporaries and skipped names are not sealed."""
    staging = experiment_with(tmp_path / "staging", {"searcher-state-1.pkl": b"s", "tmp-x.pkl": b"t",
                                                     "mixnas_search.json": b"{}"})
    experiment = experiment_with(tmp_path / "ray", {})
    seal.seal_folder(staging, experiment / seal.SEAL_LOG, skip=["mixnas_search.json"])
    assert [json.loads(x)["file"] for x in (experiment / seal.SEAL_LOG).read_text().splitlines()] == \
        ["searcher-state-1.pkl"]
    (experiment / "searcher-state-1.pkl").write_bytes(b"s")
    (experiment / "mixnas_search.json").write_bytes(b'{"objectives": []}')
    seal.verify(experiment, skip=["mixnas_search.json"])


@pytest.mark.parametrize("case", ["changed", "planted", "forged seal", "copied key-less", "link", "no log"])
def test_a_state_file_without_a_valid_seal_is_refused(key_home: Path, tmp_path: Path, case: str) -> None:
    experiment = experiment_with(tmp_path / "ray", {"tuner.pkl": b"tuner", "searcher-state-1.pkl": b"state"})
    log = experiment / seal.SEAL_LOG
    seal.seal_folder(experiment, log)
    before = log.read_bytes()
    bad = experiment / "searcher-state-1.pkl"
    if case == "changed":
        bad.write_bytes(b"state, then a payload")
    elif case == "planted":
        bad = experiment / "callback-states-1.pkl"
        bad.write_bytes(b"payload")
    elif case == "forged seal":  # a line written without the key: its HMAC is wrong
        bad.write_bytes(b"payload")
        import hashlib
        digest = hashlib.sha256(b"payload").hexdigest()
        with open(log, "a") as f:
            f.write(json.dumps({"file": bad.name, "sha256": digest, "mac": "0" * 64}) + "\n{torn")
        before = log.read_bytes()
    elif case == "copied key-less":  # sealed by someone else's key (another user, another machine)
        other = tmp_path / "other"
        os.environ["XDG_CONFIG_HOME"] = str(other)
        try:
            seal.seal_folder(experiment_with(tmp_path / "theirs", {"searcher-state-1.pkl": b"theirs"}), log)
        finally:
            os.environ["XDG_CONFIG_HOME"] = str(key_home)
        bad.write_bytes(b"theirs")
        before = log.read_bytes()
    elif case == "link":
        bad.unlink()
        (tmp_path / "elsewhere.pkl").write_bytes(b"state")
        bad.symlink_to(tmp_path / "elsewhere.pkl")
    else:
        log.unlink()
        bad = log
    with pytest.raises(ConfigError) as info:
        seal.verify(experiment)
    message = str(info.value)
    assert message.startswith(str(bad)) and "\n" not in message, message
    if case != "no log":
        assert log.read_bytes() == before  # a refused verify rewrites nothing


def test_an_empty_experiment_needs_no_log(key_home: Path, tmp_path: Path) -> None:
    seal.verify(experiment_with(tmp_path / "ray", {}))
    seal.verify(tmp_path / "absent")
