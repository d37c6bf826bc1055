"""``timm.create_model("mixnas", arch=...)``: an exported architecture as a timm model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from timm.models import register_model

from mixnas.search_space import ArchConfig
from mixnas.supernet.backbone import MixerNet, build_model


@register_model
def mixnas(pretrained: bool = False, arch: str | Path | ArchConfig | dict | None = None, **kwargs: Any) -> MixerNet:
    """Build a mixnas architecture through timm.

    Args:
        pretrained: unsupported (nothing is downloaded); load exported weights with ``checkpoint_path=``.
        arch: an ArchConfig, its dict form, or the path of its YAML/JSON file (required).
        kwargs: ``num_classes`` and ``in_chans`` override the config; timm's own keys are ignored.
    """
    if arch is None:
        raise ValueError('timm.create_model("mixnas") needs arch=<path to an ArchConfig YAML or JSON>')
    if pretrained:
        raise ValueError("mixnas has no downloadable weights; pass checkpoint_path=<exported .safetensors>")
    if isinstance(arch, (str, Path)):
        arch = ArchConfig.load(arch)
    elif isinstance(arch, dict):
        arch = ArchConfig.from_dict(arch)
    overrides = {k: kwargs[k] for k in ("num_classes", "in_chans") if kwargs.get(k) is not None}
    if overrides:
        arch = replace(arch, **overrides)
    return build_model(arch)
