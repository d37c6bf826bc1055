"""``RunDir``: a run directory, the one place that names its files and reads and writes its settings.

A supernet run directory (``mixnas supernet train --out``) holds::

    space.yaml            the search space trained on (num_classes resolved)
    train_config.json     the training settings (a resumed run must use the same, epochs aside)
    preprocessing.json    the data's normalisation and resize, recorded in every exported architecture
    checkpoint.pt         full training state after the last finished epoch (torch.save, read weights_only)
    supernet.safetensors  the weights alone, for search and export
    metrics.csv           one row per finished epoch
    search/               journal.log (the Optuna study), eval_settings.json, weights.json (the digest of
                          the supernet weights the search scored with), cache/ (one JSON per scored
                          architecture), cost_table.json (FLOPs and parameters per component of the
                          space), random_baseline.csv (uniform samples scored alike), ray/ (the Ray Tune
                          experiment)
    trials.parquet, trials.csv    the trial table
    pages/, exported/, ranking/   results pages, exported architectures, rank-check trainings
    .mixnas.lock          held by the process driving the directory (``mixnas.lock``)

A standalone training directory (``mixnas train --out``, ``kind="training"``) holds ``arch.yaml``,
``train_config.json``, ``checkpoint.pt``, ``model.safetensors`` and ``metrics.csv``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from mixnas.atomic import atomic_write_text
from mixnas.errors import CheckpointError

T = TypeVar("T")

KINDS = ("supernet", "training")


def changed_setting(new: Any, stored: Any, where: str) -> str | None:
    """The first field of two settings dataclasses, other than ``epochs`` (which a resumed run may raise),
    whose values differ, as ``"lr: 0.001 in <where>, 0.002 now"``; None when they agree."""
    for f in fields(new):
        if f.name != "epochs" and getattr(new, f.name) != getattr(stored, f.name):
            return f"{f.name}: {getattr(stored, f.name)!r} in {where}, {getattr(new, f.name)!r} now"
    return None


class RunDir:
    """A run directory and its files.

    Args:
        path: the directory (it need not exist yet).
        kind: ``supernet`` (supernet training, search and results) or ``training`` (one architecture).
    """

    SPACE = "space.yaml"
    ARCH = "arch.yaml"
    TRAIN_CONFIG = "train_config.json"
    PREPROCESSING = "preprocessing.json"
    CHECKPOINT = "checkpoint.pt"
    SUPERNET_WEIGHTS = "supernet.safetensors"
    MODEL_WEIGHTS = "model.safetensors"
    METRICS = "metrics.csv"
    DISTRIBUTED = "distributed.json"
    SEARCH = "search"
    JOURNAL = "journal.log"
    EVAL_SETTINGS = "eval_settings.json"
    SEARCH_WEIGHTS = "weights.json"
    CACHE = "cache"
    COST_TABLE = "cost_table.json"
    RANDOM_BASELINE = "random_baseline.csv"
    RAY = "ray"
    RAY_SETTINGS = "mixnas_search.json"
    TRIALS_PARQUET = "trials.parquet"
    TRIALS_CSV = "trials.csv"
    PAGES = "pages"
    EXPORTED = "exported"
    RANKING = "ranking"
    LOCK = ".mixnas.lock"

    def __init__(self, path: str | Path, kind: str = "supernet") -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.path = Path(path)
        self.kind = kind

    @classmethod
    def of(cls, value: RunDir | str | Path, kind: str | None = "supernet") -> RunDir:
        """``value`` as a run directory: where a path enters the library (a public function's argument), it
        becomes a ``RunDir`` once, and everything inside passes that object.

        Args:
            value: a ``RunDir`` (returned as it is) or the directory's path.
            kind: the kind a path is taken as, and the kind a ``RunDir`` must be; None accepts a ``RunDir``
                of either kind (for what every run directory has, such as its lock) and takes a path as
                ``supernet``.

        Raises:
            ValueError: ``value`` is a ``RunDir`` of another kind than ``kind``.
        """
        if isinstance(value, RunDir):
            if kind is not None and value.kind != kind:
                raise ValueError(f"kind: a {kind} directory is needed, got {value!r}")
            return value
        return cls(value, kind or "supernet")

    def resolved(self) -> RunDir:
        """The same run directory named by its absolute path, symbolic links resolved (what a process with
        another working directory, such as a Ray worker, is given)."""
        return RunDir(self.path.resolve(), self.kind)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, kind={self.kind!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------------------------------ files
    @property
    def space_file(self) -> Path:
        return self.path / self.SPACE

    @property
    def arch_file(self) -> Path:
        return self.path / self.ARCH

    @property
    def config_file(self) -> Path:
        return self.path / self.TRAIN_CONFIG

    @property
    def preprocessing_file(self) -> Path:
        """The normalisation and resize of the data trained on (exported architectures record them)."""
        return self.path / self.PREPROCESSING

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def weights(self) -> Path:
        """The weights file: ``supernet.safetensors`` or, for a training directory, ``model.safetensors``."""
        return self.path / (self.SUPERNET_WEIGHTS if self.kind == "supernet" else self.MODEL_WEIGHTS)

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def distributed_report(self) -> Path:
        return self.path / self.DISTRIBUTED

    @property
    def search_dir(self) -> Path:
        return self.path / self.SEARCH

    @property
    def journal(self) -> Path:
        return self.search_dir / self.JOURNAL

    @property
    def eval_settings_file(self) -> Path:
        return self.search_dir / self.EVAL_SETTINGS

    @property
    def cache_dir(self) -> Path:
        return self.search_dir / self.CACHE

    @property
    def search_weights_file(self) -> Path:
        """The digest of the supernet weights a search scored its candidates with."""
        return self.search_dir / self.SEARCH_WEIGHTS

    @property
    def random_baseline(self) -> Path:
        """Random sampling on the same supernet, the hypervolume page's baseline (``mixnas.search.baseline``)."""
        return self.search_dir / self.RANDOM_BASELINE

    @property
    def cost_table(self) -> Path:
        """FLOPs and parameters of every component of the space (``mixnas.search.cost_table``)."""
        return self.search_dir / self.COST_TABLE

    @property
    def ray_dir(self) -> Path:
        return self.search_dir / self.RAY

    @property
    def ray_settings_file(self) -> Path:
        return self.ray_dir / self.RAY_SETTINGS

    @property
    def trials_parquet(self) -> Path:
        return self.path / self.TRIALS_PARQUET

    @property
    def trials_csv(self) -> Path:
        return self.path / self.TRIALS_CSV

    @property
    def pages_dir(self) -> Path:
        return self.path / self.PAGES

    @property
    def exported_dir(self) -> Path:
        return self.path / self.EXPORTED

    @property
    def ranking_dir(self) -> Path:
        return self.path / self.RANKING

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    def is_trained(self) -> bool:
        """Whether the directory holds trained weights."""
        return self.weights.is_file()

    def is_searched(self) -> bool:
        """Whether a search has written a trial table here."""
        return self.trials_parquet.is_file() or self.trials_csv.is_file()

    # ---------------------------------------------------------------------------------------- settings
    def read_settings(self, cls: type[T], path: Path | None = None) -> T:
        """A settings dataclass from its JSON file (default ``train_config.json``).

        Raises:
            CheckpointError: the file is missing or is not the JSON of ``cls`` (unknown or missing fields).
        """
        path = path or self.config_file
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing; the {self._noun()} is incomplete") from None
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt ({e.__class__.__name__}: {str(e)[:100]})") from None

    def write_settings(self, settings: Any, path: Path | None = None) -> None:
        """Write a settings dataclass as JSON, atomically (default ``train_config.json``)."""
        if not is_dataclass(settings):
            raise TypeError(f"settings must be a dataclass, got {type(settings).__name__}")
        atomic_write_text(path or self.config_file, json.dumps(asdict(settings), indent=2) + "\n")

    def weights_digest(self) -> str:
        """SHA-256 of the supernet's weights file (``supernet.safetensors``): what every cached score and a
        search's trials are keyed to, so that weights trained further never mix with earlier scores.

        Raises:
            CheckpointError: the weights file is missing or unreadable.
        """
        digest = hashlib.sha256()
        try:
            with open(self.weights, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as e:
            raise CheckpointError(f"{self.weights}: cannot be read ({e.strerror or type(e).__name__})") from None
        return digest.hexdigest()

    def check_settings(self, settings: Any, path: Path | None = None) -> None:
        """Refuse settings that differ from the stored ones (``epochs`` may grow); nothing stored: fine.

        Raises:
            CheckpointError: naming the file and the first differing setting.
        """
        path = path or self.config_file
        if not path.exists():
            return
        diff = changed_setting(settings, self.read_settings(type(settings), path), f"the {self._noun()}")
        if diff is not None:
            raise CheckpointError(f"{path}: this run used other settings ({diff})")

    def _noun(self) -> str:
        return "run directory" if self.kind == "supernet" else "output directory"


__all__ = ["RunDir", "changed_setting"]
