"""The main job: supernet training, search, results pages and export, one after the other.

``mixnas run --preset demo --out RUN_DIR`` runs the demo preset on the embedded digits data. Every stage
resumes: running the command again skips what is done and continues what was interrupted.

Expected cost (measured figures in docs/benchmarks/):
* demo: 2-core CPU, about 8-10 minutes (training 14 epochs of 7,190 images, 40 candidates (the guided
  search, warm-started), 5 references, and 40 random samples as the hypervolume page's baseline).
* cifar: one GPU, a few hours (100 epochs of CIFAR-10's 50,000 images; 300 candidates scored on the GPU).
* imagenet: 8 GPUs under torchrun, days (120 epochs at 224x224); the search is best run with Ray and a
  GPU latency table built on the target device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mixnas.errors import ConfigError
from mixnas.packaged import SPACES_DIR, packaged_path
from mixnas.run_dir import RunDir


@dataclass(frozen=True)
class Preset:
    """One end-to-end job.

    Args:
        name: preset name.
        space: the packaged search space's name (``mixnas/configs/spaces/<space>.yaml``).
        data: default dataset spec (None: the user must pass --data).
        epochs, batch_size, lr, steps_per_epoch: supernet training.
        trials: searched candidates.
        objectives: search objectives.
        latency_runs, latency_max_seconds: per-candidate latency measurement.
        val_limit: validation images per candidate (0: all).
        flops_images: images whose FLOPs are averaged for DGE.
        device: where training and scoring run (auto: CUDA when present).
        cost: the expected cost, for the docs and the start-up message.
    """

    name: str
    space: str
    data: str | None
    epochs: int
    batch_size: int
    lr: float
    steps_per_epoch: int
    trials: int
    objectives: str = "accuracy,flops,latency"
    latency_runs: int = 20
    latency_max_seconds: float = 1.0
    val_limit: int = 0
    flops_images: int = 0
    device: str = "auto"
    cost: str = ""

    @property
    def space_path(self) -> Path:
        return packaged_path(SPACES_DIR, self.space)


PRESETS = {
    "demo": Preset("demo", "demo", "digits", epochs=14, batch_size=64, lr=2e-3, steps_per_epoch=0, trials=40,
                   latency_runs=10, latency_max_seconds=0.5, device="cpu",
                   cost="about 8-10 minutes on a 2-core CPU"),
    "cifar": Preset("cifar", "cifar", None, epochs=100, batch_size=128, lr=2e-3, steps_per_epoch=0,
                    trials=300, cost="a few hours on one GPU (supernet about 2-3 h, search about 1 h)"),
    "imagenet": Preset("imagenet", "imagenet", None, epochs=120, batch_size=128, lr=1e-3, steps_per_epoch=0,
                       trials=500, latency_runs=50, val_limit=10000, cost="days on 8 GPUs under torchrun"),
}


def get_preset(name: str, data: str | None) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if data is not None:
        preset = replace(preset, data=data)
    if preset.data is None:
        kind = "cifar:PATH" if name == "cifar" else "imagefolder:PATH"
        raise ConfigError(f"--data: preset {name} has no embedded data; pass --data {kind}")
    preset.space_path  # noqa: B018  (raises ConfigError when the installation lacks the space)
    return preset


def run_preset(preset: Preset, out: RunDir | str | Path, progress: bool = True, trials: int | None = None,
               epochs: int | None = None) -> dict[str, Path]:
    """Train, search, write the pages and export the front into the run directory ``out`` (a ``RunDir`` or its
    path); returns the paths a user looks at next."""
    from mixnas.lock import drive
    from mixnas.results import export_architectures, pareto_table
    from mixnas.results.run_pages import write_run_pages
    from mixnas.search import CandidateEvaluator, EvalSettings, SearchSettings
    from mixnas.search.baseline import random_baseline
    from mixnas.search.optuna_runner import run_optuna_search
    from mixnas.search_space import SearchSpace
    from mixnas.training import TrainConfig, train_supernet
    from mixnas.trials import load_trials, parse_objectives

    run = RunDir.of(out)
    objectives = tuple(parse_objectives(preset.objectives))
    space = SearchSpace.from_yaml(preset.space_path)
    say = print if progress else (lambda *a, **k: None)
    say(f"mixnas run --preset {preset.name}: {preset.cost}; run directory {run.path}")
    say(f"[1/4] supernet training on {preset.data}")
    config = TrainConfig(data=preset.data or "digits", epochs=epochs or preset.epochs, batch_size=preset.batch_size,
                         lr=preset.lr, steps_per_epoch=preset.steps_per_epoch)
    train_supernet(space, run, config, device=preset.device, progress=progress)
    n = trials or preset.trials
    say(f"[2/4] search: {n} candidates ({', '.join(objectives)})")
    evaluation = EvalSettings(device=preset.device, latency_runs=preset.latency_runs,
                              latency_max_seconds=preset.latency_max_seconds, val_limit=preset.val_limit,
                              flops_images=preset.flops_images)
    with drive(run, f"mixnas run --preset {preset.name}"):  # search, pages and export under one lock
        evaluator = CandidateEvaluator(run, evaluation)
        settings = SearchSettings(trials=n, objectives=objectives)
        run_optuna_search(run, settings, evaluator, progress=progress)
        # The same number of uniform samples on the same supernet: the hypervolume page's baseline.
        random_baseline(run, evaluator, n, list(objectives), settings.limits, seed=settings.seed, progress=progress)
        say("[3/4] results")
        table = load_trials(run)
        index = write_run_pages(run, table, list(objectives), title=f"mixnas {preset.name}: {run.path.name}")
        say(pareto_table(table, list(objectives)))
        say("[4/4] export of the Pareto front")
        exported = export_architectures(run, run.exported_dir, pareto=True, objectives=objectives,
                                        weights=evaluator.prepare, progress=progress)
    say(f"Pareto page:      {index}")
    say(f"exported configs: {run.exported_dir} ({len(exported)} architectures, with weights)")
    return {"index": index, "exported": run.exported_dir}
