"""Export chosen architectures as ArchConfig YAML files, optionally with their inherited weights and as
deployment files (ONNX, a ``torch.export`` program) beside them.

Each file is named so a person can tell them apart (trial number, accuracy, GFLOPs, the mixers by stage),
e.g. ``trial0012_acc87.3_gf0.041_win-dw-dge.yaml``. With weights, the network written is the one the
search scored: the caller passes the scoring network's maker (``CandidateEvaluator.prepare``: supernet
weights, the same fine-tuning if any, BatchNorm recalibrated the same way), so loading it reproduces the
recorded accuracy. Every file records the preprocessing of the data the supernet trained on (its
normalisation and resize), so ``timm.create_model("mixnas", arch=...)`` gets a ``pretrained_cfg`` that feeds
the network as it was scored. A manifest ``exported.csv`` lists what was written.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from mixnas.atomic import atomic_write_text
from mixnas.errors import ResultsError
from mixnas.results.pareto import pareto_front
from mixnas.run_dir import RunDir
from mixnas.search_space import ArchConfig
from mixnas.supernet.checkpoint import save_weights
from mixnas.supernet.deploy import FORMATS, DeployError, require, write_format
from mixnas.training import read_preprocessing
from mixnas.trials import load_trials

MAX_NAME = 120  # characters of a file's stem; file systems allow 255 bytes, and suffixes and temporaries add some


def export_name(row: pd.Series, arch: ArchConfig) -> str:
    """``trial0012_acc87.3_gf0.041_win-dw-dge``: sortable, and readable at a glance. A name longer than
    ``MAX_NAME`` (a network of very many stages) keeps its first mixers and ends with the arch id."""
    mixers = "-".join(s.mixer.spec.abbreviation for s in arch.stages)
    acc = f"acc{row['accuracy']:.1f}" if math.isfinite(row["accuracy"]) else "accNA"
    gflops = f"gf{row['gflops']:.3g}" if math.isfinite(row["gflops"]) else "gfNA"
    name = f"trial{int(row['number']):04d}_{acc}_{gflops}_{mixers}"
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 14]}_{arch.arch_id}"
    return name


def select_trials(df: pd.DataFrame, trials: Sequence[int] | None, pareto: bool, objectives: Sequence[str],
                  source: str) -> pd.DataFrame:
    """The rows to export: the Pareto front, or the given trial numbers (which must be complete)."""
    if pareto:
        front = pareto_front(df, objectives)
        if front.empty:
            raise ResultsError(f"{source}: no feasible complete trials, so no Pareto front to export")
        return front
    rows = []
    for n in trials or []:
        match = df[(df["number"] == n) & (~df["is_reference"])]
        if match.empty:
            raise ResultsError(f"{source}: --trial {n}: no such trial (numbers run from 0 to {df['number'].max()})")
        if match.iloc[0]["state"] != "COMPLETE":
            raise ResultsError(f"{source}: --trial {n}: the trial did not complete ({match.iloc[0]['state']})")
        rows.append(match.iloc[0])
    return pd.DataFrame(rows)


def export_architectures(
    run_dir: RunDir | str | Path, out_dir: str | Path, trials: Sequence[int] | None = None, pareto: bool = False,
    objectives: Sequence[str] = ("accuracy", "gflops", "latency"),
    weights: Callable[[ArchConfig], nn.Module] | None = None, progress: bool = True,
    formats: Sequence[str] = (),
) -> list[Path]:
    """Write one YAML (and, given ``weights``, one .safetensors) per chosen trial; returns the YAML paths.

    Args:
        run_dir: a searched run directory (a ``RunDir`` or its path).
        out_dir: where the files go.
        trials: trial numbers to export (each must be complete).
        pareto: export the Pareto front of ``objectives`` instead.
        objectives: the front's objectives (latency is dropped when no trial measured it).
        weights: makes the scored network of an architecture (``CandidateEvaluator(run_dir,
            load_settings(run_dir)).prepare``); None writes the configs only.
        progress: show a progress bar.
        formats: deployment formats written beside each weights file (``onnx``, ``torch-export``:
            ``mixnas.supernet.deploy``); they need ``weights``.
    """
    run, out_dir = RunDir.of(run_dir), Path(out_dir)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise DeployError(f"--format: unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    if formats and weights is None:
        raise DeployError("--format: a deployment format holds the weights; add --weights")
    if "onnx" in formats:
        require("onnx", "onnxscript")  # before anything is written
    df = load_trials(run)
    if not df["latency_ms"].notna().any():
        objectives = [o for o in objectives if o != "latency"]
    chosen = select_trials(df, trials, pareto, objectives, str(run.path))
    preprocessing = read_preprocessing(run)
    written, manifest = [], []
    for _, row in tqdm(list(chosen.iterrows()), desc="export", disable=not progress, leave=False):
        arch = ArchConfig.from_dict(json.loads(row["arch"]))
        stem = export_name(row, arch)
        arch = arch.with_name(f"trial {int(row['number'])}: {row['accuracy']:.2f}% top-1, {row['gflops']:.4g} GFLOPs")
        arch = arch.with_preprocessing(preprocessing)
        yaml_path = out_dir / f"{stem}.yaml"
        arch.to_yaml(yaml_path)
        entry = {"file": yaml_path.name, "trial": int(row["number"]), "arch_id": row["arch_id"],
                 "accuracy": row["accuracy"], "gflops": row["gflops"], "params": row["params"],
                 "latency_ms": row["latency_ms"], "weights": ""}
        if weights is not None:
            model = weights(arch).cpu()
            weights_path = out_dir / f"{stem}.safetensors"
            save_weights(model, weights_path, {"arch_id": arch.arch_id, "accuracy": f"{row['accuracy']:.4f}"})
            entry["weights"] = weights_path.name
            for fmt in formats:
                entry[fmt] = write_format(model, out_dir / stem, fmt).name
        manifest.append(entry)
        written.append(yaml_path)
    buf = io.StringIO()
    pd.DataFrame(manifest).to_csv(buf, index=False)
    atomic_write_text(out_dir / "exported.csv", buf.getvalue())
    return written
