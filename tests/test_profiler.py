"""Tests of mixnas.search.profiler: FLOPs against hand-written formulas and published numbers, params,
latency sanity. FLOPs are multiply-adds throughout."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest
import timm
import timm.layers
import torch
import torch.nn.functional as F
from torch import nn

from mixnas.search.profiler import (
    LatencyStats,
    count_flops,
    count_params,
    device_name,
    flops_by_module,
    flops_summary,
    measure_latency,
    unsupported_ops,
)

# ----------------------------------------------------------------------------------------------------
# Small modules with costs computable by hand


class Apply(nn.Module):
    """Wraps a function of one input and some constant tensors, so that it can be traced as a model."""

    def __init__(self, fn, *constants: torch.Tensor):
        super().__init__()
        self.fn, self.constants = fn, constants

    def forward(self, x):
        return self.fn(x, *self.constants)


class Attention(nn.Module):
    """Global multi-head attention over tokens (B, N, C), fused (SDPA) or explicit."""

    def __init__(self, dim: int, heads: int, fused: bool):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """A pre-norm transformer block, to exercise the ops our mixers use (norm, GELU, add, roll, pool)."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        tokens = tokens + self.attn(self.norm1(torch.roll(tokens, 1, dims=1)))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return self.head(F.hardswish(tokens).mean(1))


class DynamicDepthwise(nn.Module):
    """A depth-wise conv whose k x k kernel is predicted per image: a grouped conv with computed weights."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.k = kernel_size
        self.predict = nn.Linear(channels, channels * kernel_size**2)

    def forward(self, x):
        b, c, h, w = x.shape
        weight = self.predict(x.mean((2, 3))).reshape(b * c, 1, self.k, self.k)
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=self.k // 2, groups=b * c)
        return out.reshape(b, c, h, w)


class InputDependent(nn.Module):
    """Runs an extra Linear only for images whose mean is positive."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.base = nn.Linear(dim, dim)
        self.extra = nn.Linear(dim, dim)

    def forward(self, x):
        x = self.base(x)
        if x.mean() > 0:
            x = self.extra(x)
        return x


def _flops(fn, x: torch.Tensor, *constants: torch.Tensor) -> int:
    return count_flops(Apply(fn, *constants), x)


# ----------------------------------------------------------------------------------------------------
# FLOPs of single ops


@pytest.mark.parametrize("shape", [(1, 49, 24), (1, 7, 7, 24), (24,)])
def test_linear_flops_are_tokens_times_in_times_out(shape):
    linear = nn.Linear(24, 40)
    tokens = torch.Size(shape[:-1]).numel()
    assert count_flops(linear, torch.randn(shape)) == tokens * 24 * 40


def test_conv_flops_pointwise_depthwise_grouped():
    x = torch.randn(1, 16, 14, 14)
    assert count_flops(nn.Conv2d(16, 32, 1), x) == 14 * 14 * 32 * 16
    assert count_flops(nn.Conv2d(16, 16, 3, padding=1, groups=16), x) == 14 * 14 * 16 * 3 * 3
    # strided, grouped (4 groups of 4 channels): Hout*Wout*Cout*(Cin/groups)*kh*kw
    assert count_flops(nn.Conv2d(16, 8, 3, stride=2, padding=1, groups=4), x) == 7 * 7 * 8 * 4 * 3 * 3
    assert unsupported_ops(nn.Conv2d(16, 16, 3, groups=16), x) == {}


def test_conv_flops_with_computed_weights():
    b, c, h, w, k = 2, 8, 10, 10, 7
    predict = b * c * (c * k * k)  # the Linear predicting kernels; the mean pooling is free
    conv = b * c * h * w * k * k  # one k x k kernel per (image, channel)
    assert count_flops(DynamicDepthwise(c, k), torch.randn(b, c, h, w)) == predict + conv


def test_sdpa_flops_are_the_two_matmuls():
    heads, n, d = 3, 50, 16
    q, k, v = (torch.randn(1, heads, n, d) for _ in range(3))
    assert _flops(F.scaled_dot_product_attention, q, k, v) == 2 * heads * n * n * d


def test_sdpa_flops_with_extra_batch_dims_and_unequal_lengths():
    lead, lq, lk, e, ev = (2, 3, 4), 10, 12, 8, 6
    q, k, v = torch.randn(*lead, lq, e), torch.randn(*lead, lk, e), torch.randn(*lead, lk, ev)
    mask = torch.zeros(lq, lk)
    expected = 24 * lq * lk * e + 24 * lq * lk * ev
    masked_sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert _flops(masked_sdpa, q, k, v) == expected


def test_attention_module_flops_by_hand():
    dim, heads, n = 48, 3, 50
    x = torch.randn(1, n, dim)
    projections = n * dim * 3 * dim + n * dim * dim
    attention = 2 * heads * n * n * (dim // heads)
    assert count_flops(Attention(dim, heads, fused=True), x) == projections + attention


def test_explicit_attention_counts_as_sdpa():
    x = torch.randn(1, 64, 48)
    assert count_flops(Attention(48, 4, fused=False), x) == count_flops(Attention(48, 4, fused=True), x)


def test_matmul_flops_count_broadcast_batches():
    a, b = torch.randn(5, 6), torch.randn(3, 6, 7)
    assert _flops(torch.matmul, a, b) == 3 * 5 * 6 * 7
    assert _flops(torch.matmul, torch.randn(6), torch.randn(6, 7)) == 6 * 7


def test_bmm_baddbmm_einsum_flops():
    a, b = torch.randn(4, 5, 6), torch.randn(4, 6, 7)
    assert _flops(torch.bmm, a, b) == 4 * 5 * 6 * 7
    assert _flops(lambda a, b: torch.baddbmm(torch.zeros(4, 5, 7), a, b), a, b) == 4 * 5 * 6 * 7
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8)
    assert _flops(lambda q, k: torch.einsum("bhqd,bhkd->bhqk", q, k), q, k) == 2 * 3 * 10 * 12 * 8


def test_norms_and_global_pool_keep_fvcore_counts():
    x = torch.randn(1, 8, 6, 6)
    assert count_flops(nn.LayerNorm(8), torch.randn(1, 36, 8)) == 5 * 36 * 8
    assert count_flops(nn.BatchNorm2d(8), x) == 2 * 8 * 6 * 6  # eval: scale and shift
    assert count_flops(nn.AdaptiveAvgPool2d(1), x) == 8 * 6 * 6
    assert count_flops(nn.AvgPool2d(2), x) == 0


def test_block_ops_are_all_known():
    assert unsupported_ops(Block(), torch.randn(1, 32, 4, 4)) == {}


# ----------------------------------------------------------------------------------------------------
# Behaviour around the count


def test_count_flops_is_quiet(caplog):
    model = Block()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        count_flops(model, torch.randn(1, 32, 4, 4))
        flops_summary(InputDependent(), torch.randn(2, 3, 8))  # data-dependent branch: TracerWarning
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_importing_the_profiler_warns_nothing():
    code = "import torch, timm; import mixnas.search.profiler"
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_count_flops_uses_eval_mode_and_restores_modes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Dropout(0.5))
    x = torch.randn(1, 3, 8, 8)
    eval_flops = count_flops(model.eval(), x)
    assert count_flops(model.train(), x) == eval_flops  # BatchNorm in training mode would count more
    assert model.training and model[1].training
    model[1].eval()  # a deliberately frozen BatchNorm inside a training model
    count_flops(model, x)
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_count_flops_leaves_no_hooks_even_when_the_trace_fails():
    model = Block()
    count_flops(model, torch.randn(1, 32, 4, 4))
    with pytest.raises(RuntimeError):
        count_flops(model, torch.randn(1, 31, 4, 4))  # wrong channel count: LayerNorm raises
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_flops_by_module_totals():
    model = Block()
    by_module = flops_by_module(model, torch.randn(1, 32, 4, 4))
    assert by_module[""] == count_flops(model, torch.randn(1, 32, 4, 4))
    assert by_module["attn"] == by_module["attn.qkv"] + by_module["attn.proj"] + 2 * 16 * 16 * 32
    assert by_module["mlp"] == 16 * 32 * 64 * 2


def test_flops_summary_per_image():
    model = InputDependent(8)
    images = torch.stack([torch.full((3, 8), 1.0), torch.full((3, 8), -1.0), torch.full((3, 8), 2.0)])
    with torch.no_grad():
        model.base.weight.copy_(torch.eye(8))
        model.base.bias.zero_()
    one_linear = 3 * 8 * 8
    assert flops_summary(model, images) == {
        "mean": pytest.approx((2 * one_linear + one_linear + 2 * one_linear) / 3),
        "min": one_linear,
        "max": 2 * one_linear,
    }


def test_count_params_counts_frozen_not_buffers():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    model[0].requires_grad_(False)
    assert count_params(model) == 4 * 5 + 5 + 2 * 5


# ----------------------------------------------------------------------------------------------------
# Published numbers through timm (independent implementations, fvcore-counted in the papers)


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 224, 224)


@pytest.mark.slow
def test_deit_tiny_flops_and_params(image):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000)
    assert model.blocks[0].attn.fused_attn  # so the SDPA handle is what is tested
    flops = count_flops(model, image)
    assert flops == pytest.approx(1.26e9, rel=0.03)
    assert count_params(model) == 5_717_416
    assert unsupported_ops(model, image) == {}


@pytest.mark.slow
def test_deit_tiny_flops_same_without_fused_attention(image, monkeypatch):
    fused = count_flops(timm.create_model("vit_tiny_patch16_224", pretrained=False), image)
    # record timm's flag so that monkeypatch restores it after set_fused_attn changes it
    monkeypatch.setattr(timm.layers.config, "_USE_FUSED_ATTN", timm.layers.config._USE_FUSED_ATTN)
    timm.layers.set_fused_attn(False)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    assert not model.blocks[0].attn.fused_attn
    assert count_flops(model, image) == pytest.approx(fused, rel=0.005)


@pytest.mark.slow
def test_swin_tiny_flops_and_params(image):
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=1000)
    assert count_flops(model, image) == pytest.approx(4.5e9, rel=0.03)
    assert count_params(model) == 28_288_354
    assert unsupported_ops(model, image) == {}


# ----------------------------------------------------------------------------------------------------
# Latency (sanity only: the machine is noisy)


def _check_stats(stats: LatencyStats, runs: int, warmup: int, batch_size: int) -> None:
    assert 0 < stats.median_ms <= stats.p90_ms
    assert stats.mean_ms > 0
    assert (stats.runs, stats.warmup, stats.batch_size) == (runs, warmup, batch_size)


def test_latency_cpu():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).train()
    stats = measure_latency(model, 32, batch_size=2, runs=7, warmup=2)
    _check_stats(stats, runs=7, warmup=2, batch_size=2)
    assert stats.device == device_name("cpu") and stats.device.startswith("cpu: ")
    assert stats.dtype == "float32"
    assert model.training


def test_latency_max_seconds_stops_after_five_runs():
    model = nn.Conv2d(3, 8, 3)
    stats = measure_latency(model, 32, runs=50, warmup=10, max_seconds=1e-9)
    _check_stats(stats, runs=5, warmup=1, batch_size=1)


def test_latency_autocast_dtype():
    stats = measure_latency(nn.Conv2d(3, 8, 3), 16, runs=5, warmup=1, amp_dtype=torch.bfloat16)
    assert stats.dtype == "bfloat16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_latency_cuda_without_cuda_raises():
    with pytest.raises(ValueError, match="CUDA is not available"):
        measure_latency(nn.Conv2d(3, 8, 3), 32, device="cuda")


@pytest.mark.parametrize("device", ["tpu", "not a device"])
def test_latency_unknown_device_raises(device):
    with pytest.raises(ValueError, match="'cpu' or 'cuda"):
        measure_latency(nn.Conv2d(3, 8, 3), 32, device=device)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_latency_cuda_events():
    model = Block(dim=32)
    stats = measure_latency(model, 8, in_chans=32, batch_size=4, device="cuda", runs=20, warmup=5)
    _check_stats(stats, runs=20, warmup=5, batch_size=4)
    assert stats.device == torch.cuda.get_device_name()
    bf16 = measure_latency(model, 8, in_chans=32, device="cuda", runs=5, warmup=1, amp_dtype=torch.bfloat16)
    assert bf16.dtype == "bfloat16"
    # the count does not depend on the device
    x = torch.randn(1, 32, 8, 8)
    assert count_flops(model, x.cuda()) == count_flops(model.cpu(), x)
