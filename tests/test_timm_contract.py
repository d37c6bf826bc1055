"""timm's generic model contract, in the spirit of timm's ``tests/test_models.py`` (written here), over every
shipped reference (at a reduced width and depth: the structure, mixers and input size kept) and over
architectures of the demo space, built through ``timm.create_model("mixnas", arch=...)``."""

from __future__ import annotations

import random

import pytest
import timm
import torch
from shipped import reduced
from timm.data import create_transform, resolve_data_config

import mixnas.supernet.timm_model  # noqa: F401  (registers "mixnas" with timm)
from mixnas import ArchConfig
from mixnas.errors import ConfigError
from mixnas.packaged import load_arch, load_space, reference_names
from mixnas.search_space import Preprocessing
from mixnas.supernet.checkpoint import save_weights
from mixnas.supernet.timm_model import DEFAULT_ARCH

pytestmark = pytest.mark.usefixtures("one_thread")


def demo_archs(n: int) -> list[ArchConfig]:
    space = load_space("demo").with_num_classes(10)
    rng = random.Random(7)
    digits = Preprocessing((0.2, 0.21, 0.19), (0.3, 0.31, 0.29), "bilinear", 1.0, "digits")
    return [space.sample(rng).with_preprocessing(digits) for _ in range(n)]


CASES = [(name, reduced(load_arch(name))) for name in reference_names()] + \
        [(f"demo{i}", a) for i, a in enumerate(demo_archs(3))]


def image_batch(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, *model.pretrained_cfg["input_size"])


@pytest.mark.parametrize(("name", "arch"), CASES, ids=[c[0] for c in CASES])
def test_generic_model_contract(name: str, arch: ArchConfig) -> None:
    model = timm.create_model("mixnas", arch=arch).eval()
    cfg = model.pretrained_cfg
    # The cfg describes the network and its data.
    assert cfg["input_size"] == (arch.in_chans, arch.input_size, arch.input_size)
    assert cfg["num_classes"] == model.num_classes == arch.num_classes
    expected = arch.preprocessing or Preprocessing()
    assert tuple(cfg["mean"]) == expected.mean and tuple(cfg["std"]) == expected.std
    assert cfg["interpolation"] == expected.interpolation and cfg["crop_pct"] == expected.crop_pct
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert state[cfg["classifier"] + ".weight"].shape[0] == arch.num_classes
    assert model.get_classifier() is model.head
    data = resolve_data_config(model=model)
    assert data["input_size"] == cfg["input_size"] and tuple(data["mean"]) == expected.mean

    x = image_batch(model)
    with torch.no_grad():
        logits = model(x)
        tokens = model.forward_features(x)
        pooled = model.forward_head(tokens, pre_logits=True)
        maps = model.forward_intermediates(x, intermediates_only=True)
        final, maps2 = model.forward_intermediates(x)
    assert logits.shape == (2, arch.num_classes)
    assert tokens.shape[-1] == model.num_features == arch.stages[-1].dim
    assert pooled.shape == (2, model.head_hidden_size)
    torch.testing.assert_close(model.forward_head(tokens), logits)
    torch.testing.assert_close(final, tokens)
    assert len(maps) == len(maps2) == len(arch.stages) == len(model.feature_info)
    for fmap, info in zip(maps, model.feature_info):
        assert fmap.shape[:2] == (2, info["num_chs"])
        assert fmap.shape[-1] * info["reduction"] == arch.input_size  # NCHW, at the stated reduction

    # reset_classifier: no classifier gives the pooled features, then the unpooled map.
    model.reset_classifier(0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pooled)
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert model(x).shape == tokens.shape
    model.reset_classifier(5, "avg")
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    assert model.num_classes == 5 and model.pretrained_cfg["num_classes"] == arch.num_classes  # as timm's

    # features_only: one NCHW map per stage, the channels and reductions feature_info states.
    backbone = timm.create_model("mixnas", arch=arch, features_only=True).eval()
    kept = backbone.model.state_dict()
    backbone.model.load_state_dict({k: v for k, v in state.items() if k in kept})
    with torch.no_grad():
        features = backbone(x)
    assert [f.shape[1] for f in features] == backbone.feature_info.channels()
    assert [arch.input_size // f.shape[-1] for f in features] == backbone.feature_info.reduction()
    assert len(features) == len(arch.stages)
    torch.testing.assert_close(features[0], maps[0])
    last = timm.create_model("mixnas", arch=arch, features_only=True, out_indices=(-1,))
    assert last.feature_info.channels() == [arch.stages[-1].dim]
    assert not any(k.startswith("head.") for k in last.state_dict())  # pruned


@pytest.mark.parametrize(("name", "arch"), CASES[::3], ids=[c[0] for c in CASES[::3]])
def test_backward_reaches_every_parameter(name: str, arch: ArchConfig) -> None:
    model = timm.create_model("mixnas", arch=arch, num_classes=3).train()
    model(image_batch(model)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    arch = reduced(load_arch("swin_t"))
    model = timm.create_model("mixnas", arch=arch).train()
    x = image_batch(model)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)
        model(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(s.grad_checkpointing for s in model.stages)
    for key, g in grads[0].items():
        torch.testing.assert_close(grads[1][key], g, msg=key)


def test_num_classes_zero_and_global_pool_through_create_model() -> None:
    arch = reduced(load_arch("dwnet_t"))
    pooled = timm.create_model("mixnas", arch=arch, num_classes=0).eval()
    unpooled = timm.create_model("mixnas", arch=arch, num_classes=0, global_pool="").eval()
    x = image_batch(pooled)
    with torch.no_grad():
        assert pooled(x).shape == (2, arch.stages[-1].dim)
        assert unpooled(x).shape == (2, 7, 7, arch.stages[-1].dim)
    assert pooled.num_classes == 0
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("mixnas", arch=arch, global_pool="max")


def test_drop_rates_are_honoured() -> None:
    arch = reduced(load_arch("swin_t"))
    model = timm.create_model("mixnas", arch=arch, drop_rate=0.3, drop_path_rate=0.25)
    assert model.head_drop.p == 0.3
    assert model.default_arch.drop_path_rate == 0.25
    assert model.drop_path_rates(model.default_arch)[-1][-1] == pytest.approx(0.25)
    model.train()
    x = image_batch(model)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))  # dropout and drop-path are active in training
    with pytest.raises(TypeError):
        timm.create_model("mixnas", arch=arch, no_such_argument=1)


def test_default_model_and_list_models() -> None:
    assert "mixnas" in timm.list_models("mixnas")
    model = timm.create_model("mixnas")
    assert model.default_arch == load_arch(DEFAULT_ARCH)
    assert model.pretrained_cfg["input_size"] == (3, 224, 224) and model.num_classes == 1000


def test_pretrained_from_a_local_file_drops_a_mismatched_classifier(tmp_path) -> None:
    arch = reduced(load_arch("deit_t"))
    source = timm.create_model("mixnas", arch=arch)
    path = tmp_path / "w.safetensors"
    save_weights(source, path)
    same = timm.create_model("mixnas", arch=arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    for key, value in source.state_dict().items():
        torch.testing.assert_close(same.state_dict()[key], value)
    other = timm.create_model("mixnas", arch=arch, pretrained=True, num_classes=4,
                              pretrained_cfg_overlay={"file": str(path)})
    assert other.head.weight.shape[0] == 4
    torch.testing.assert_close(other.state_dict()["patch_embed.weight"], source.state_dict()["patch_embed.weight"])
    with pytest.raises(ValueError, match="no downloadable weights"):
        timm.create_model("mixnas", arch=arch, pretrained=True)


def test_img_size_that_the_architecture_does_not_admit_names_the_field() -> None:
    with pytest.raises(ConfigError, match="input_size"):
        timm.create_model("mixnas", arch="swin_t", img_size=112)  # 112 / 4 / 8 = 3.5: no patch merging


def test_timm_transform_feeds_the_recorded_preprocessing() -> None:
    """A PIL image through timm's eval transform equals mixnas's own tensor transform of the same pixels."""
    from torchvision.transforms.functional import to_pil_image

    from mixnas.data.loaders import TensorTransform

    arch = demo_archs(1)[0]
    p = arch.preprocessing
    model = timm.create_model("mixnas", arch=arch)
    transform = create_transform(**resolve_data_config(model=model))
    image = torch.randint(0, 256, (3, arch.input_size, arch.input_size), dtype=torch.uint8)
    ours = TensorTransform(arch.input_size, p.mean, p.std)(image)
    torch.testing.assert_close(transform(to_pil_image(image)), ours, atol=1e-5, rtol=1e-5)
