"""mixnas's Swin-T and DeiT-T against timm's independent implementations, with the same weights.

timm's freshly initialised weights are loaded into mixnas's models through a key mapping; the logits
must agree to 1e-4 in float32. This checks window attention (partition, shift, mask, relative position
bias), global attention, patch merging, the stem, the FFN and the head.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch

from mixnas import ArchConfig, build_model

REFERENCE = Path(__file__).resolve().parents[1] / "mixnas" / "configs" / "reference"


def mixnas_key(timm_key: str) -> str:
    """The mixnas parameter name for a timm Swin or ViT parameter name."""
    rules = [
        (r"^patch_embed\.proj\.", "patch_embed."),
        (r"^patch_embed\.norm\.", "stem_norm."),
        (r"^layers\.(\d+)\.", r"stages.\1."),
        (r"^blocks\.", "stages.0.blocks."),
        (r"\.attn\.relative_position_bias_table$", ".mixers.window_attn.rel_pos.table"),
        (r"\.attn\.", ".mixers.window_attn."),
        (r"\.mlp\.", ".ffns.mlp."),
        (r"^head\.fc\.", "head."),
    ]
    key = timm_key
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def load_timm_weights(model: torch.nn.Module, timm_model: torch.nn.Module) -> None:
    """Copy timm's weights into ``model``, reshaping to mixnas's (sliceable) layouts."""
    ours = model.state_dict()
    loaded = set()
    for k, v in timm_model.state_dict().items():
        if k.endswith("relative_position_index") or k.endswith("attn_mask"):
            continue  # buffers computed from the window size
        key = mixnas_key(k)
        assert key in ours, f"no mixnas parameter for timm's {k} (mapped to {key})"
        target = ours[key]
        if k.endswith("relative_position_bias_table"):
            v = v.t()  # ((2w-1)^2, heads) -> (heads, (2w-1)^2)
        ours[key] = v.reshape(target.shape).clone()
        loaded.add(key)
    missing = sorted(set(ours) - loaded - {k for k in ours if k.endswith("num_batches_tracked")})
    assert not missing, f"mixnas parameters not covered by timm's: {missing[:5]}"
    model.load_state_dict(ours)


@pytest.mark.parametrize(
    ("config", "timm_name", "timm_kwargs"),
    [
        ("swin_t", "swin_tiny_patch4_window7_224", {}),
        ("deit_t", "vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg", "fc_norm": False}),
    ],
)
def test_logits_match_timm(config: str, timm_name: str, timm_kwargs: dict) -> None:
    torch.manual_seed(0)
    reference = timm.create_model(timm_name, pretrained=False, **timm_kwargs).eval()
    arch = ArchConfig.from_yaml(REFERENCE / f"{config}.yaml")
    model = build_model(arch).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    load_timm_weights(model, reference)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        got = model(x)
    assert got.shape == expected.shape == (2, 1000)
    # timm's init leaves near-constant logits; compare against their spread too, not only 1e-4.
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_shifted_windows_matter() -> None:
    """Dropping the shift (a bug that keeps shapes) breaks the agreement: the check has teeth."""
    torch.manual_seed(0)
    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    arch = ArchConfig.from_yaml(REFERENCE / "swin_t.yaml")
    model = build_model(arch).eval()
    load_timm_weights(model, reference)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # a less symmetric network
        load_timm_weights(model, reference)
        x = torch.randn(1, 3, 224, 224)
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=0)
        import mixnas.supernet.mixers.window_attn as wa

        original = wa.effective_window
        try:
            wa.effective_window = lambda w, r, i: (min(w, r), 0)
            assert (model(x) - expected).abs().max() > 1e-3
        finally:
            wa.effective_window = original
