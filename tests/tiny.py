"""The tiny search spaces the tests share, and how their supernets are trained: tests/conftest.py trains each
once per session (fixtures ``tiny_run`` and ``static_run``); tests copy the directory rather than change it.

``TINY_SPACE`` has every kind of choice (depths, widths, heads, FFNs, a static and an input-dependent mixer)
at a size a supernet trains on the digits in seconds. ``STATIC_SPACE`` has static mixers only, so that each
architecture's cost is one number: the Ray tests put a GFLOPs limit between its smallest and largest
candidates and expect both feasible and infeasible trials."""

from __future__ import annotations

from typing import Any

TINY_SPACE: dict[str, Any] = {
    "name": "tiny", "input_size": 32, "num_classes": 10, "patch_size": 8, "layout": "hierarchical",
    "stages": [
        {"depth": [1, 2], "dim": [16, 24], "heads": [2], "mlp_ratio": [2.0], "ffn": ["mlp", "local"],
         "mixers": {"window_attn": {"window_size": [2, 4]}, "dwconv": {"kernel_size": [3]},
                    "dge": {"granularities": [[1, 2]]}}},
        {"depth": [1], "dim": [32], "heads": [2, 4], "mlp_ratio": [2.0],
         "mixers": {"window_attn": {"window_size": [2]}, "dwconv": {"kernel_size": [3]},
                    "dge": {"granularities": [[1, 2]]}}},
    ],
}
TINY_TRAINING: dict[str, Any] = {"epochs": 1, "steps_per_epoch": 3, "batch_size": 16, "calib_batches": 2}

STATIC_SPACE: dict[str, Any] = {
    "name": "tiny", "input_size": 32, "num_classes": 10, "patch_size": 8, "layout": "hierarchical",
    "stages": [
        {"depth": [1, 2], "dim": [16, 24], "heads": [2], "mlp_ratio": [2.0], "ffn": ["mlp"],
         "mixers": {"dwconv": {"kernel_size": [3]}, "window_attn": {"window_size": [2, 4]}}},
        {"depth": [1], "dim": [32], "heads": [2], "mlp_ratio": [2.0], "ffn": ["mlp"],
         "mixers": {"dwconv": {"kernel_size": [3]}, "window_attn": {"window_size": [2]}}},
    ],
}
STATIC_TRAINING: dict[str, Any] = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "calib_batches": 1}
