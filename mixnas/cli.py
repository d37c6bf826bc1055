"""The ``mixnas`` command: every argparse parser of mixnas lives here, and nothing in the library imports it.

Every subcommand turns a bad input (a malformed config, an impossible architecture, a missing dataset,
a corrupt checkpoint) into one line on stderr, ``mixnas: error: ...``, and exit status 2: the library
raises ``mixnas.errors.MixnasError`` subclasses for them, and anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mixnas.errors import MixnasError, UsageError
from mixnas.run_dir import RunDir

EXIT_USAGE = 2
CLIError = UsageError  # the name earlier versions used


# ------------------------------------------------------------------------------------------- arg types
def _integer(least: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


def _real(what: str, low: float, high: float, low_open: bool, high_open: bool) -> Callable[[str], float]:
    """An argparse type: a number between ``low`` and ``high`` (open or closed at each end; NaN never)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


def _run_dir(kind: str) -> Callable[[str], RunDir]:
    """An argparse type: a run directory of ``kind`` (``supernet`` or ``training``), made a ``RunDir`` here,
    where it enters, and passed as one from then on."""
    def parse(text: str) -> RunDir:
        return RunDir.of(text, kind)

    return parse


positive_int = _integer(1, "a positive integer")
nonnegative_int = _integer(0, "an integer >= 0")
positive_float = _real("a positive finite number", 0.0, math.inf, low_open=True, high_open=True)
nonnegative_float = _real("a finite number >= 0", 0.0, math.inf, low_open=False, high_open=True)
fraction = _real("a number in [0, 1)", 0.0, 1.0, low_open=False, high_open=True)  # label smoothing
percent = _real("a percentage in [0, 100]", 0.0, 100.0, low_open=False, high_open=False)
run_directory = _run_dir("supernet")
training_directory = _run_dir("training")


# ----------------------------------------------------------------------------------------------- profile
def cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from mixnas.device import resolve_device
    from mixnas.packaged import load_arch
    from mixnas.search.cost import architecture_cost
    from mixnas.search.latency_backends import check_backend
    from mixnas.supernet import build_model

    resolve_device(args.device)  # one clear line when CUDA is asked for but absent
    amp = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if not args.no_latency:
        check_backend(args.latency_backend, args.device, amp)
    archs = [load_arch(p) for p in args.arch]  # validate every file before measuring any
    rows = []
    for path, arch in zip(args.arch, archs):
        torch.manual_seed(0)
        model = build_model(arch).eval()
        cost = architecture_cost(
            model, arch, device=args.device, batch_size=args.batch_size, latency=not args.no_latency,
            runs=args.runs, warmup=args.warmup, max_seconds=args.max_seconds, amp_dtype=amp,
            latency_backend=args.latency_backend,
        )
        row = {"arch": str(path), "name": arch.name or Path(path).stem, "arch_id": arch.arch_id, **cost.to_dict()}
        rows.append(row)
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
    else:
        print(format_profile_table(rows))
    return 0


def format_profile_table(rows: list[dict]) -> str:
    """Fixed-width table: name, params (M), GFLOPs (DGE: mean [min-max]), latency median / p90 (ms)."""
    header = f"{'architecture':<18} {'params':>9} {'GFLOPs':>18} {'latency ms (median / p90)':>27}"
    lines = [header, "-" * len(header)]
    for r in rows:
        g = f"{r['gflops']:.3f}"
        if abs(r["gflops_max"] - r["gflops_min"]) > 1e-9:
            g = f"{r['gflops']:.2f} [{r['gflops_min']:.2f}-{r['gflops_max']:.2f}]"
        lat = "-"
        if "latency_ms" in r:
            lat = f"{r['latency_ms']['median']:.2f} / {r['latency_ms']['p90']:.2f}"
        lines.append(f"{r['name']:<18} {r['params'] / 1e6:>8.2f}M {g:>18} {lat:>27}")
    if rows and "device" in rows[0]:
        backend = rows[0]["latency_ms"].get("backend", "eager")
        lines.append(
            f"latency on {rows[0]['device']}, batch {rows[0]['batch_size']}"
            + ("" if backend == "eager" else f", {backend}") + "; FLOPs are multiply-adds at batch 1"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- supernet
def train_config_from_args(args: argparse.Namespace):
    from mixnas.training import TrainConfig

    return TrainConfig(
        data=args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        num_random=args.num_random, distill=not args.no_distill, rotate_mixers=args.rotate_mixers,
        distill_min_teacher_acc=args.distill_min_teacher_acc, fair=args.fair,
        budget_weight=args.budget_weight,
        clip_grad=args.clip_grad, seed=args.seed, steps_per_epoch=args.steps_per_epoch,
        calib_batches=args.calib_batches, workers=args.workers,
    )


def cmd_supernet_train(args: argparse.Namespace) -> int:
    from mixnas.packaged import load_space
    from mixnas.training import train_supernet

    space = load_space(args.space)
    train_supernet(space, args.out, train_config_from_args(args), device=args.device, progress=not args.quiet,
                   num_classes=args.num_classes, init_weights=args.init_weights)
    return 0


def add_training_arguments(p: argparse.ArgumentParser, epochs: int, batch_size: int, lr: float,
                           out: Callable[[str], RunDir] = run_directory) -> None:
    """The flags supernet and standalone training share; ``out`` parses ``--out`` (``run_directory`` or
    ``training_directory``)."""
    p.add_argument("--data", default="digits", help="digits (embedded), cifar:PATH or imagefolder:PATH")
    p.add_argument("--epochs", type=positive_int, default=epochs, help="total epochs (raise it to train further)")
    p.add_argument("--out", required=True, type=out, help="run directory (created; resumed when it exists)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help="images per step (per process)")
    p.add_argument("--lr", type=positive_float, default=lr, help="peak AdamW learning rate")
    from mixnas.training._loop import CLIP_GRAD, LABEL_SMOOTHING, WARMUP_EPOCHS, WEIGHT_DECAY

    p.add_argument("--weight-decay", type=nonnegative_float, default=WEIGHT_DECAY, help="AdamW weight decay")
    p.add_argument("--warmup-epochs", type=nonnegative_float, default=WARMUP_EPOCHS, help="linear warm-up epochs")
    p.add_argument("--label-smoothing", type=fraction, default=LABEL_SMOOTHING,
                   help="label smoothing of the cross-entropy")
    p.add_argument("--clip-grad", type=nonnegative_float, default=CLIP_GRAD, help="gradient-norm clip (0 disables)")
    p.add_argument("--seed", type=int, default=0, help="seeds data order, augmentation and sampling")
    p.add_argument("--steps-per-epoch", type=nonnegative_int, default=0,
                   help="cap on steps per epoch (0: whole training set)")
    p.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when available")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


# -------------------------------------------------------------------------------------- standalone train
def standalone_config_from_args(args: argparse.Namespace):
    """The StandaloneConfig that ``mixnas train``'s arguments describe."""
    from mixnas.training import StandaloneConfig

    return StandaloneConfig(
        data=args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, clip_grad=args.clip_grad,
        seed=args.seed, data_seed=args.data_seed, steps_per_epoch=args.steps_per_epoch, workers=args.workers,
        init_weights=args.init_weights,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """``mixnas train``: train the architecture into ``--out``; prints where the weights are."""
    from mixnas.packaged import load_arch
    from mixnas.training import train_architecture

    arch = load_arch(args.arch)
    history = train_architecture(arch, args.out, standalone_config_from_args(args), device=args.device,
                                 progress=not args.quiet)
    if history and not args.quiet:
        last = history[-1]
        print(f"{args.out.path}: {last['epoch']} epochs, val top-1 {float(last['val_acc']):.2f}%; "
              f"weights in {args.out.weights}")
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from mixnas.training import StandaloneConfig

    d = StandaloneConfig()
    p = sub.add_parser("train", help="train one architecture from scratch or from exported weights (resumable)")
    p.add_argument("arch", metavar="ARCH", help="ArchConfig YAML or JSON file, or a packaged reference's name")
    add_training_arguments(p, epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, out=training_directory)
    p.add_argument("--init-weights", default=None, metavar="FILE",
                   help="start from these weights (a .safetensors of mixnas export --weights for this ARCH)")
    p.add_argument("--data-seed", type=int, default=d.data_seed,
                   help="fixes the dataset (digits: its renders and train/val split); --seed leaves it alone")
    p.set_defaults(func=cmd_train)


# ------------------------------------------------------------------------------------------------ search
def eval_settings_from_args(args: argparse.Namespace):
    from mixnas.search import EvalSettings

    latency = args.latency or ("lut" if args.latency_lut else "measure")
    return EvalSettings(
        device=args.device, latency=latency, latency_lut=str(args.latency_lut) if args.latency_lut else None,
        latency_batch_size=args.latency_batch_size, latency_runs=args.latency_runs,
        latency_backend=args.latency_backend, train_epochs=args.train_epochs, seed=args.seed, val_limit=args.val_limit,
        finetune_steps=args.finetune_steps, flops_images=args.flops_images,
    )


def search_settings_from_args(args: argparse.Namespace):
    from mixnas.search import Limits, SearchSettings
    from mixnas.trials import parse_objectives

    try:
        objectives = tuple(parse_objectives(args.objectives))
    except ValueError as e:
        raise UsageError(f"--objectives: {e}") from None
    limits = Limits(args.max_gflops, args.max_params, args.max_latency_ms)
    return SearchSettings(trials=args.trials, objectives=objectives, sampler=args.sampler, limits=limits,
                          seed=args.seed, references=not args.no_references, warm_start=not args.no_warm_start)


def cmd_search(args: argparse.Namespace) -> int:
    from mixnas.lock import drive

    with drive(args.run_dir, "search", create=False):  # refused at once while another process drives it
        return _search(args)


def _search(args: argparse.Namespace) -> int:
    from mixnas.search import CandidateEvaluator

    settings = search_settings_from_args(args)
    evaluation = eval_settings_from_args(args)
    if evaluation.latency == "none" and "latency" in settings.objectives:
        raise UsageError("--objectives: latency is an objective but --latency none measures none")
    if evaluation.latency == "measure":
        from mixnas.device import resolve_device
        from mixnas.search.latency_backends import check_backend

        check_backend(evaluation.latency_backend, resolve_device(evaluation.device))
    if args.backend == "ray":
        from mixnas.search.ray_cluster import RaySettings
        from mixnas.search.ray_runner import run_ray_search

        ray_settings = RaySettings(address=args.address, cpus_per_trial=args.cpus_per_trial,
                                   gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent)
        table = run_ray_search(args.run_dir, settings, evaluation, ray_settings, progress=not args.quiet)
    else:
        from mixnas.search.optuna_runner import run_optuna_search

        evaluator = CandidateEvaluator(args.run_dir, evaluation)
        table = run_optuna_search(args.run_dir, settings, evaluator, progress=not args.quiet)
    searched = table[~table["is_reference"]]
    complete, failed = int((searched["state"] == "COMPLETE").sum()), int((searched["state"] == "FAIL").sum())
    print(f"{len(searched)} trials in {args.run_dir.trials_parquet} ({complete} complete, {failed} failed); "
          f"see them with: mixnas results {args.run_dir.path}")
    return 0


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="multi-objective search over a trained supernet (resumable)")
    p.add_argument("run_dir", type=run_directory, help="a supernet run directory (mixnas supernet train --out)")
    p.add_argument("--trials", type=positive_int, required=True, help="finished trials to reach")
    p.add_argument("--objectives", default="accuracy,flops,latency",
                   help="comma-separated: accuracy (max), flops, params, latency (min)")
    p.add_argument("--sampler", choices=["guided", "nsga2", "tpe", "random", "gp"], default="guided",
                   help="guided: evolution screened by an accuracy predictor (the default); or an Optuna sampler")
    p.add_argument("--no-warm-start", action="store_true",
                   help="do not seed the first trials with the space's extremes and each mixer's largest network")
    p.add_argument("--max-gflops", type=positive_float, default=None, help="constraint: GFLOPs at batch 1")
    p.add_argument("--max-params", type=positive_float, default=None, help="constraint: parameter count")
    p.add_argument("--max-latency-ms", type=positive_float, default=None, help="constraint: median latency (ms)")
    p.add_argument("--latency", choices=["measure", "lut", "none"], default=None,
                   help="measure on --device (default), predict from --latency-lut, or none")
    p.add_argument("--latency-lut", type=Path, default=None, help="lookup table (mixnas latency build-lut)")
    p.add_argument("--latency-batch-size", type=positive_int, default=1, help="batch size for measured latency")
    p.add_argument("--latency-runs", type=positive_int, default=20, help="timed runs per candidate")
    add_latency_backend_option(p)
    p.add_argument("--train-epochs", type=nonnegative_int, default=0,
                   help="fine-tune each candidate this many epochs first")
    p.add_argument("--finetune-steps", type=nonnegative_int, default=0,
                   help="cap on fine-tuning steps per epoch (0: all)")
    p.add_argument("--val-limit", type=nonnegative_int, default=0, help="score on at most this many validation images")
    p.add_argument("--flops-images", type=nonnegative_int, default=0,
                   help="validation images whose FLOPs are averaged for DGE candidates (0: all scored ones)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="where candidates are scored")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--no-references", action="store_true", help="skip the hand-designed reference architectures")
    p.add_argument("--backend", choices=["optuna", "ray"], default="optuna", help="optuna in process, or Ray Tune")
    p.add_argument("--address", default=None, help="Ray cluster address (auto, or HOST:PORT); default: local Ray")
    p.add_argument("--cpus-per-trial", type=positive_float, default=1.0, help="Ray: CPUs per trial")
    p.add_argument("--gpus-per-trial", type=nonnegative_float, default=0.0, help="Ray: GPUs per trial")
    p.add_argument("--max-concurrent", type=positive_int, default=2, help="Ray: trials at once")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_search)


# ------------------------------------------------------------------------------------- results and export
def _objectives(text: str) -> list[str]:
    from mixnas.trials import parse_objectives

    try:
        return parse_objectives(text)
    except ValueError as e:
        raise UsageError(f"--objectives: {e}") from None


def cmd_results(args: argparse.Namespace) -> int:
    from mixnas.results import load_trials, pareto_records, pareto_table
    from mixnas.results.run_pages import write_run_pages

    objectives = _objectives(args.objectives)

    table = load_trials(args.run_dir)
    if "latency" in objectives and not table["latency_ms"].notna().any():
        objectives = [o for o in objectives if o != "latency"]
    if args.json:
        print(json.dumps(pareto_records(table, objectives), indent=2))
    else:
        print(pareto_table(table, objectives))
    index = write_run_pages(args.run_dir, table, objectives, out=args.out)
    print(f"Pareto pages: {index}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mixnas.results import export_architectures

    if not args.pareto and not args.trial:
        raise UsageError("choose what to export: --pareto or --trial N")
    formats = list(dict.fromkeys(args.format or []))
    if formats and not args.weights:
        raise UsageError("--format: a deployment file holds the weights; add --weights")
    if "onnx" in formats:
        from mixnas.supernet.deploy import require

        require("onnx", "onnxscript")  # before the supernet is loaded and anything is written
    prepare = None
    if args.weights:
        from mixnas.search import CandidateEvaluator, load_settings

        prepare = CandidateEvaluator(args.run_dir, load_settings(args.run_dir)).prepare
    paths = export_architectures(args.run_dir, args.out, trials=args.trial, pareto=args.pareto,
                                 objectives=_objectives(args.objectives), weights=prepare, progress=not args.quiet,
                                 formats=formats)
    for p in paths:
        print(p)
    return 0


def cmd_rank_check(args: argparse.Namespace) -> int:
    from mixnas.search.ranking import RankSettings, rank_check

    settings = RankSettings(archs=args.archs, epochs=args.epochs, seeds=args.seeds, device=args.device,
                            backend=args.backend, address=args.address, cpus_per_task=args.cpus_per_task,
                            gpus_per_task=args.gpus_per_task, steps_per_epoch=args.steps_per_epoch)
    rank_check(args.run_dir, settings, progress=not args.quiet)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mixnas.presets import get_preset, run_preset

    preset = get_preset(args.preset, args.data)
    if args.steps_per_epoch is not None:
        preset = replace(preset, steps_per_epoch=args.steps_per_epoch)
    run_preset(preset, args.out, progress=not args.quiet, trials=args.trials, epochs=args.epochs)
    return 0


# ---------------------------------------------------------------------------------------- latency tables
def cmd_build_lut(args: argparse.Namespace) -> int:
    """``mixnas latency build-lut``: build a table for a space and write it as JSON; returns the exit status."""
    import torch

    from mixnas.device import resolve_device
    from mixnas.packaged import load_space
    from mixnas.search.latency_backends import check_backend
    from mixnas.search.latency_lut import CALIBRATION_WARN_PCT, build_latency_table

    resolve_device(args.device)
    check_backend(args.latency_backend, args.device)
    space = load_space(args.space)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = build_latency_table(
        space, device=args.device, batch_size=args.batch_size, runs=args.runs, warmup=args.warmup,
        calibration_archs=args.calibration_archs, seed=args.seed, progress=not args.quiet,
        max_seconds_per_entry=args.max_seconds, passes=args.passes, backend=args.latency_backend,
    )
    table.save(args.out)
    cal = table.calibration
    print(
        f"wrote {args.out}: {len(table.entries)} components on {table.device}, batch {table.batch_size}; "
        f"calibration: {cal['scale']:.3f} x sum {cal['offset_ms']:+.3f} ms ({cal['fit']}, "
        f"{cal['mape_pct']:.1f}% error on {len(cal['points'])} networks); built in {table.meta['build_seconds']} s"
    )
    if cal["mape_pct"] > CALIBRATION_WARN_PCT:
        print(
            f"warning: the calibration networks lie {cal['mape_pct']:.0f}% from the calibrated component sums; "
            f"the device was probably busy: rebuild with --passes 3"
            + (" --threads 1" if table.device_type == "cpu" else "") + " when it is quieter",
            file=sys.stderr,
        )
    return 0


def add_lut_parser(sub: argparse._SubParsersAction) -> None:
    from mixnas.search.latency_lut import DEFAULT_RUNS, DEFAULT_WARMUP

    actions = sub.add_parser("latency", help="latency lookup tables").add_subparsers(
        dest="latency_command", required=True, metavar="ACTION"
    )
    p = actions.add_parser(
        "build-lut", help="measure every block choice of a space on a device, for latency prediction elsewhere"
    )
    p.add_argument("--space", required=True, help="search space YAML, or a packaged space's name")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where latency is measured")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass")
    p.add_argument("--out", required=True, type=Path, help="the table (JSON) to write")
    p.add_argument("--runs", type=positive_int, default=DEFAULT_RUNS, help="timed runs per component (median)")
    p.add_argument("--warmup", type=nonnegative_int, default=DEFAULT_WARMUP, help="untimed runs before them")
    p.add_argument("--calibration-archs", type=positive_int, default=8,
                   help="random networks measured whole to calibrate (besides the largest and smallest)")
    p.add_argument("--max-seconds", type=positive_float, default=None,
                   help="cap on the timed runs of one component (s); at least 5 runs")
    p.add_argument("--passes", type=positive_int, default=1,
                   help="measure everything this many times in alternating order, keep the median (3 on a busy CPU)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's own); the table holds for this count")
    p.add_argument("--seed", type=int, default=0, help="seeds the calibration networks and initialisation")
    p.add_argument("--quiet", action="store_true", help="no component count or progress bar")
    add_latency_backend_option(p)
    p.set_defaults(func=cmd_build_lut)


def add_latency_backend_option(p: argparse.ArgumentParser) -> None:
    """``--latency-backend``: how a network runs when its latency is measured (``mixnas.search.latency_backends``)."""
    from mixnas.search.latency_backends import BACKENDS

    p.add_argument("--latency-backend", choices=BACKENDS, default="eager",
                   help="time the network as deployed: eager PyTorch (default), torch.compile (compiled first, "
                        "CUDA graphs on a GPU) or ONNX Runtime (CPU; needs mixnas[deploy])")


# ------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixnas", description="Neural architecture search over token mixers for vision backbones."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("profile", help="parameters, GFLOPs and latency of architecture configs")
    p.add_argument("arch", nargs="+", help="ArchConfig YAML or JSON file(s), or packaged references by name (swin_t)")
    p.add_argument("--json", action="store_true", help="print JSON (one object, or a list for several files)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where latency is measured")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per timed forward pass")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="compute dtype for latency (autocast)")
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs (median and p90 over them)")
    p.add_argument("--warmup", type=positive_int, default=10, help="untimed warm-up runs")
    p.add_argument("--max-seconds", type=positive_float, default=None,
                   help="stop timing an architecture after this long (at least 5 runs)")
    p.add_argument("--no-latency", action="store_true", help="count parameters and FLOPs only")
    add_latency_backend_option(p)
    p.set_defaults(func=cmd_profile)

    sn = sub.add_parser("supernet", help="train the weight-sharing supernet").add_subparsers(
        dest="supernet_command", required=True, metavar="ACTION")
    p = sn.add_parser("train", help="sandwich-rule training with in-place distillation (resumable; torchrun for DDP)")
    p.add_argument("--space", required=True, help="search space YAML, or a packaged space's name (demo, cifar, ...)")
    add_training_arguments(p, epochs=10, batch_size=64, lr=2e-3)
    p.add_argument("--calib-batches", type=positive_int, default=10, help="batches for BatchNorm recalibration")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes of the head (default: the space's; 'num_classes: auto' takes the dataset's)")
    p.add_argument("--num-random", type=nonnegative_int, default=2,
                   help="random architectures per step (sandwich rule)")
    p.add_argument("--no-distill", action="store_true", help="train every architecture on the labels")
    p.add_argument("--rotate-mixers", action="store_true",
                   help="the sandwich's largest and smallest take each mixer in turn (default: the first listed)")
    p.add_argument("--distill-min-teacher-acc", type=percent, default=0.0,
                   help="distil only from a teacher at least this accurate (%%) on the batch; labels before")
    p.add_argument("--fair", action="store_true",
                   help="FairNAS: each step's random architectures use every mixer of every stage once")
    p.add_argument("--budget-weight", type=nonnegative_float, default=1.0, help="weight of DGE's budget loss")
    p.add_argument("--init-weights", type=Path, default=None, metavar="RUN_OR_FILE",
                   help="start from another supernet's weights (a wider space's run directory or .safetensors; "
                        "e.g. a few-shot part narrowed with fewer mixers); ignored when resuming")
    p.set_defaults(func=cmd_supernet_train)

    add_search_parser(sub)

    p = sub.add_parser("results", help="print the Pareto table and write the plotly pages")
    p.add_argument("run_dir", type=run_directory, help="a run directory that has been searched")
    p.add_argument("--objectives", default="accuracy,flops,latency", help="objectives of the front")
    p.add_argument("--out", type=Path, default=None, help="where the pages go (default RUN_DIR/pages)")
    p.add_argument("--json", action="store_true", help="print the front as JSON")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("export", help="write chosen architectures as ArchConfig YAML (and weights)")
    p.add_argument("run_dir", type=run_directory, help="a run directory that has been searched")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--pareto", action="store_true", help="every architecture on the Pareto front")
    which.add_argument("--trial", type=int, action="append", help="trial number (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="directory for the YAML files")
    p.add_argument("--weights", action="store_true", help="also write inherited weights (safetensors)")
    p.add_argument("--format", action="append", choices=["onnx", "torch-export"],
                   help="also write each network for deployment beside its weights: onnx (.onnx, needs "
                        "mixnas[deploy]) or torch-export (.pt2); repeatable; needs --weights")
    p.add_argument("--objectives", default="accuracy,flops,latency", help="objectives of the front")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

    add_train_parser(sub)

    p = sub.add_parser("rank-check", help="train searched architectures from scratch and compare their ranking "
                                          "with the supernet's (resumable)")
    p.add_argument("run_dir", type=run_directory, help="a run directory that has been searched")
    p.add_argument("--archs", type=positive_int, default=12, help="architectures to train (K)")
    p.add_argument("--epochs", type=positive_int, default=15, help="standalone epochs each")
    p.add_argument("--seeds", type=positive_int, default=1, help="training seeds per architecture (averaged)")
    p.add_argument("--steps-per-epoch", type=nonnegative_int, default=0,
                   help="cap on steps per epoch (0: whole training set)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: one after the other; ray: Ray tasks side by side")
    p.add_argument("--address", default=None, help="Ray cluster address; default: a local instance")
    p.add_argument("--cpus-per-task", type=positive_float, default=1.0, help="Ray: CPUs per training")
    p.add_argument("--gpus-per-task", type=nonnegative_float, default=0.0, help="Ray: GPUs per training")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when available")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_rank_check)

    p = sub.add_parser("run", help="the main job: train, search, results, export (resumable)")
    p.add_argument("--preset", default="demo", help="demo (embedded data), cifar or imagenet")
    p.add_argument("--out", type=run_directory, required=True, help="run directory")
    p.add_argument("--data", default=None, help="dataset spec; cifar and imagenet presets need one")
    p.add_argument("--trials", type=positive_int, default=None, help="override the preset's candidate count")
    p.add_argument("--epochs", type=positive_int, default=None, help="override the preset's training epochs")
    p.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="cap the steps of each training epoch (a quick check of the whole job)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_run)

    add_lut_parser(sub)
    return parser


def _version() -> str:
    from mixnas import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MixnasError as e:
        print(f"mixnas: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as e:
        print(f"mixnas: error: {e.filename or e}: no such file or directory", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mixnas: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
