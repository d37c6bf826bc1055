"""How much of ``Supernet.extract`` was the random initialisation of a model whose weights are all replaced?

``Supernet.extract(arch)`` builds the standalone model and loads the supernet's slices into it. It now
builds it inside ``weights_to_be_loaded`` (no random draws); before, every weight was first drawn
(timm's ``trunc_normal_``, PyTorch's conv initialisation) and then overwritten. This times ``extract`` both
ways on random architectures of a shipped space, alternating, one torch thread, and checks that the two
models are equal.

    python bench/extract_init.py [--space imagenet] [--archs 8] [--repeats 5] [--out docs/benchmarks/extract_init.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import random
import statistics
import sys
from pathlib import Path

import torch
from supernet_step import alternate  # bench/, this script's folder

import mixnas.supernet.supernet as supernet_module
from mixnas import Supernet
from mixnas.packaged import load_space

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="imagenet")
    parser.add_argument("--archs", type=int, default=8, help="random architectures extracted per call")
    parser.add_argument("--repeats", type=int, default=5, help="alternating calls of each variant")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "extract_init.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = load_space(args.space)
    space = space.with_num_classes(1000) if space.num_classes is None else space
    torch.manual_seed(0)
    net = Supernet(space).eval()
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(args.archs)]
    loaded = supernet_module.weights_to_be_loaded

    def extract_all(skip_init: bool) -> list[torch.nn.Module]:
        supernet_module.weights_to_be_loaded = loaded if skip_init else contextlib.nullcontext
        try:
            return [net.extract(a) for a in archs]
        finally:
            supernet_module.weights_to_be_loaded = loaded

    same = all(
        all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
        for a, b in zip(extract_all(True), extract_all(False))
    )
    times = alternate({"initialised, then loaded": lambda: extract_all(False),
                       "built for loading (now)": lambda: extract_all(True)},
                      argparse.Namespace(warmup=1, steps=args.repeats), torch.device("cpu"))
    med = {k: statistics.median(v) / len(archs) for k, v in times.items()}
    before, now = med["initialised, then loaded"], med["built for loading (now)"]
    print({k: round(v, 1) for k, v in med.items()}, f"{before / now:.2f}x", "equal" if same else "DIFFERENT")
    lines = [
        "# Supernet.extract without the random initialisation of the model it loads",
        "",
        f"Measured {datetime.date.today()} with `bench/extract_init.py` on {platform.machine()} (1 torch thread,"
        f" torch {torch.__version__}, Python {platform.python_version()}), the 2-core CPU machine. Time of"
        f" `supernet.extract(arch)` per architecture, {args.archs} random architectures of the {args.space} space,"
        f" median of {args.repeats} alternating calls of each variant (`bench/supernet_step.py`'s `alternate`).",
        "",
        "| variant | ms per architecture | speed-up |",
        "|---|---:|---:|",
        f"| initialised, then loaded (before) | {before:.0f} | 1.00x |",
        f"| built for loading (`weights_to_be_loaded`, now) | {now:.0f} | {before / now:.2f}x |",
        "",
        f"The extracted models' state dicts are {'identical' if same else 'NOT identical'} both ways. Every"
        " parameter and persistent buffer is loaded (strict `load_state_dict`), so the draws were thrown away;"
        " fixed values (zero biases, LayerNorm's ones) and the non-persistent index buffers are still set"
        " (`tests/test_supernet.py`). Search exports, rank-check and the extraction tests call `extract`.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
