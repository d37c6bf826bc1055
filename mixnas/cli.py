"""The ``mixnas`` command.

Every subcommand turns a bad input (a malformed config, an impossible architecture, a missing dataset,
a corrupt checkpoint) into one line on stderr, ``mixnas: error: ...``, and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing error raised by a subcommand: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------------------- profile
def cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from mixnas.search.cost import architecture_cost
    from mixnas.search_space import ArchConfig
    from mixnas.supernet import build_model

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: CUDA is not available on this machine; use --device cpu")
    amp = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    archs = [ArchConfig.load(p) for p in args.arch]  # validate every file before measuring any
    rows = []
    for path, arch in zip(args.arch, archs):
        torch.manual_seed(0)
        model = build_model(arch).eval()
        cost = architecture_cost(
            model, arch, device=args.device, batch_size=args.batch_size, latency=not args.no_latency,
            runs=args.runs, warmup=args.warmup, max_seconds=args.max_seconds, amp_dtype=amp,
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
        lines.append(
            f"latency on {rows[0]['device']}, batch {rows[0]['batch_size']}; FLOPs are multiply-adds at batch 1"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ parser
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixnas", description="Neural architecture search over token mixers for vision backbones."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("profile", help="parameters, GFLOPs and latency of architecture configs")
    p.add_argument("arch", nargs="+", help="ArchConfig YAML or JSON file(s)")
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
    p.set_defaults(func=cmd_profile)
    return parser


def _version() -> str:
    from mixnas import __version__

    return __version__


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is meant for the user as it is."""
    from mixnas.search_space import ConfigError

    errors: list[type[BaseException]] = [CLIError, ConfigError]
    for module, name in (("mixnas.data", "DataError"), ("mixnas.results", "ResultsError"),
                         ("mixnas.supernet.checkpoint", "CheckpointError")):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(getattr(__import__(module, fromlist=[name]), name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except user_errors() as e:
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
