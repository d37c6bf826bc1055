"""What a mixer's spec owns: its FLOP handles, its input-dependent cost and its no-weight-decay parameters.
The core asks the spec; a mixer that declares nothing for an op it uses gets one line, never a silent 0."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mixnas import ArchConfig, build_model
from mixnas.errors import ConfigError
from mixnas.search.cost import model_gflops
from mixnas.search.profiler import count_flops, unsupported_ops
from mixnas.search_space import MixerConfig, MixerSpec, register_mixer, unregister_mixer
from mixnas.supernet import MixerContext

TOKENS = 8  # 32 px, patch 4


def rfft2_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """An FFT's multiply-adds, N log2 N per transformed plane (a stated convention, tested as declared)."""
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(inputs[0])
    plane = shape[-2] * shape[-1]
    return int(math.prod(shape[:-2]) * plane * math.log2(plane))


class FourierMix(nn.Module):
    """GFNet-like toy: rfft2 over the tokens, magnitude, back to (B, H, W, C)."""

    def forward(self, x: Tensor, ctx: MixerContext) -> Tensor:
        y = torch.fft.rfft2(x.permute(0, 3, 1, 2), norm="ortho").abs()
        y = nn.functional.pad(y, (0, x.shape[2] - y.shape[-1]))
        return y.permute(0, 2, 3, 1)


class Scaled(nn.Module):
    """A learned per-channel scale (to name in no_weight_decay)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))
        self.mix = nn.Parameter(torch.ones(2, dim))

    def forward(self, x: Tensor, ctx: MixerContext) -> Tensor:
        return x * self.mix[0, : x.shape[-1]]


def spec(name: str, module: type[nn.Module], **attrs: Any) -> MixerSpec:
    def build(self: MixerSpec, dim: int, heads: int, limits: dict[str, Any], resolution: int) -> nn.Module:
        return module(dim) if module is Scaled else module()

    cls = type(f"{name}Spec", (MixerSpec,), {"name": name, "abbreviation": name[:3], "uses_heads": False,
                                             "build": build, **attrs})
    return cls()


@pytest.fixture
def registered() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        unregister_mixer(name)


def arch_of(mixer: str) -> ArchConfig:
    return ArchConfig.from_dict({
        "input_size": 32, "num_classes": 10, "patch_size": 4,
        "stages": [{"depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2, "mixer": {"type": mixer}}],
    })


def test_an_op_nobody_counts_is_refused_not_counted_as_zero(registered: list[str]) -> None:
    register_mixer(spec("fourier_bare", FourierMix))
    registered.append("fourier_bare")
    model, x = build_model(arch_of("fourier_bare")), torch.randn(1, 3, 32, 32)
    assert "aten::fft_rfft2" in unsupported_ops(model, x)
    with pytest.raises(ConfigError, match="aten::fft_rfft2 .*flop_handles") as info:
        model_gflops(model, arch_of("fourier_bare"))
    assert "\n" not in str(info.value)


def test_the_spec_s_flop_handles_count_its_ops(registered: list[str]) -> None:
    x = torch.randn(1, 3, 32, 32)
    register_mixer(spec("fourier_free", FourierMix, flop_handles={"aten::fft_rfft2": None}))
    registered.append("fourier_free")
    free = count_flops(build_model(arch_of("fourier_free")), x)
    unregister_mixer("fourier_free")
    register_mixer(spec("fourier", FourierMix, flop_handles={"aten::fft_rfft2": rfft2_flops}))
    registered.append("fourier")
    counted = count_flops(build_model(arch_of("fourier")), x)
    assert counted - free == 16 * TOKENS * TOKENS * 6  # 16 planes of 8 x 8: 64 log2 64 each
    assert unsupported_ops(build_model(arch_of("fourier")), x) == {}
    # Another mixer may share the op only with the same handle: fvcore counts an op one way everywhere.
    register_mixer(spec("fourier_too", FourierMix, flop_handles={"aten::fft_rfft2": rfft2_flops}))
    registered.append("fourier_too")
    with pytest.raises(ValueError, match="differs from mixer 'fourier'"):
        register_mixer(spec("fourier_free", FourierMix, flop_handles={"aten::fft_rfft2": None}))


@pytest.mark.parametrize("attrs, message", [
    ({"input_dependent_cost": True}, "input_dependent_cost needs wraps_block"),
    ({"flop_handles": {"fft_rfft2": None}}, "flop_handles must map op names"),
    ({"flop_handles": {"aten::fft_rfft2": 3}}, "flop_handles must map op names"),
    ({"no_weight_decay": "gain"}, "no_weight_decay must be a tuple"),
])
def test_a_spec_that_states_its_facts_wrongly_is_refused_at_registration(attrs: dict[str, Any], message: str
                                                                          ) -> None:
    with pytest.raises(ValueError, match=message):
        register_mixer(spec("wrong", FourierMix, **attrs))
    with pytest.raises(ConfigError):  # nothing was registered
        MixerConfig.from_dict({"type": "wrong"})


def test_no_weight_decay_comes_from_the_specs(registered: list[str]) -> None:
    register_mixer(spec("scaled", Scaled, no_weight_decay=("mix",)))
    registered.append("scaled")
    names = build_model(arch_of("scaled")).no_weight_decay()
    assert "stages.0.blocks.0.mixers.scaled.mix" in names
    assert "stages.0.blocks.0.mixers.scaled.gain" not in names  # 1-D: timm spares it anyway, not named
    swin = build_model(ArchConfig.from_dict({
        "input_size": 32, "num_classes": 10, "patch_size": 4,
        "stages": [{"depth": 2, "dim": 16, "heads": 2, "mlp_ratio": 2, "mixer": {"type": "window_attn",
                                                                                "window_size": 4}}],
    }))
    tables = {n for n, _ in swin.named_parameters() if n.endswith("rel_pos.table")}
    assert len(tables) == 2 and tables <= swin.no_weight_decay()
