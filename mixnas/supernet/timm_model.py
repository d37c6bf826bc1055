"""``timm.create_model("mixnas", arch=...)``: an exported architecture as a timm model.

The model is built by timm's own ``build_model_with_cfg``, so timm's generic arguments behave as they do
for timm's models::

    m = timm.create_model("mixnas", arch="exported/trial0012_....yaml",
                          checkpoint_path="exported/trial0012_....safetensors")
    cfg = timm.data.resolve_data_config(model=m)      # the input size, mean and std it was trained with
    backbone = timm.create_model("mixnas", arch=..., features_only=True)   # one NCHW map per stage

* ``pretrained_cfg``: built from the architecture (``input_size``, ``in_chans``, ``num_classes``) and the
  preprocessing its weights were trained with (an exported architecture records its dataset's; without a
  record, ImageNet's, as timm assumes).
* ``num_classes`` (0: no classifier, pooled features), ``global_pool`` (``avg`` or ``''``), ``drop_rate``
  (dropout before the classifier), ``drop_path_rate`` (overrides the architecture's), ``img_size`` (another
  input size the architecture admits), ``features_only`` / ``out_indices`` (timm's feature getter over
  ``forward_intermediates``).
* ``pretrained=True`` loads a local file named by ``pretrained_cfg_overlay=dict(file=...)`` (with
  ``num_classes`` changed, timm drops the classifier's weights); mixnas downloads nothing.
  ``checkpoint_path=`` loads a file strictly, as timm does.
* Without ``arch``, the default is the shipped Swin-T reference (``DEFAULT_ARCH``: 224 px, 1000 classes),
  so loops over ``timm.list_models()`` build it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from timm.models import build_model_with_cfg, register_model

from mixnas.errors import ConfigError
from mixnas.packaged import load_arch
from mixnas.search_space import ArchConfig
from mixnas.supernet.backbone import MixerNet, build_model, pretrained_cfg_of

DEFAULT_ARCH = "swin_t"  # a shipped reference (mixnas/configs/reference/swin_t.yaml)


def _arch_of(arch: str | Path | ArchConfig | dict | None) -> ArchConfig:
    if arch is None:
        return load_arch(DEFAULT_ARCH)
    if isinstance(arch, ArchConfig):
        return arch
    if isinstance(arch, dict):
        return ArchConfig.from_dict(arch, source="arch")
    if isinstance(arch, (str, Path)):
        return load_arch(arch)  # a file, or a shipped reference by name ("dwnet_t")
    raise TypeError(f"arch must be an ArchConfig, its dict form or the path of its YAML/JSON file, got {arch!r}")


def _build(arch: ArchConfig, num_classes: int | None = None, in_chans: int | None = None,
           global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float | None = None,
           img_size: int | tuple[int, int] | None = None) -> MixerNet:
    changes: dict[str, Any] = {}
    if in_chans is not None and in_chans != arch.in_chans:
        changes["in_chans"] = in_chans
        if arch.preprocessing is not None and len(arch.preprocessing.mean) != in_chans:
            changes["preprocessing"] = None  # recorded for other channels: no longer describes the input
    if drop_path_rate is not None:
        changes["drop_path_rate"] = drop_path_rate
    if img_size is not None:
        size = img_size if isinstance(img_size, int) else img_size[0]
        if not isinstance(img_size, int) and (len(img_size) != 2 or img_size[0] != img_size[1]):
            raise ValueError(f"img_size: mixnas networks take square inputs, got {img_size}")
        changes["input_size"] = int(size)
    if changes:
        arch = replace(arch, **changes)
        try:
            arch.validate()
        except ConfigError as e:
            raise ConfigError(f"{', '.join(changes)}: {e}") from None
    model = build_model(arch, global_pool=global_pool, drop_rate=drop_rate)
    if num_classes is not None and num_classes != arch.num_classes:
        model.reset_classifier(num_classes)
    return model


@register_model
def mixnas(pretrained: bool = False, arch: str | Path | ArchConfig | dict | None = None, **kwargs: Any) -> MixerNet:
    """Build a mixnas architecture through timm (see the module's docstring).

    Args:
        pretrained: load the local weights file named by ``pretrained_cfg_overlay=dict(file=...)``.
        arch: an ArchConfig, its dict form, the path of its YAML/JSON file or a shipped reference's name;
            None: ``DEFAULT_ARCH``.
        kwargs: timm's model arguments (``num_classes``, ``in_chans``, ``global_pool``, ``drop_rate``,
            ``drop_path_rate``, ``img_size``, ``features_only``, ``out_indices``, ``pretrained_cfg_overlay``);
            any other raises TypeError.
    """
    a = _arch_of(arch)
    kwargs.pop("cache_dir", None)  # nothing is downloaded
    given = kwargs.pop("pretrained_cfg", None)
    overlay = {**(given if isinstance(given, dict) else {}), **(kwargs.pop("pretrained_cfg_overlay", None) or {})}
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    if pretrained and not (overlay.get("file") or overlay.get("url") or overlay.get("state_dict")):
        raise ValueError("mixnas has no downloadable weights: pass pretrained_cfg_overlay=dict(file=<exported "
                         ".safetensors>) or checkpoint_path=<exported .safetensors>")
    input_size = a.input_size
    if kwargs.get("img_size") is not None:
        size = kwargs["img_size"]
        input_size = size if isinstance(size, int) else size[0]
    pool = input_size * a.resolutions[-1] // a.input_size
    cfg = pretrained_cfg_of(input_size, kwargs.get("in_chans") or a.in_chans, a.num_classes, pool, a.preprocessing)
    cfg.update(overlay)
    n_stages = len(a.stages)
    model = build_model_with_cfg(
        lambda **kw: _build(a, **kw), "mixnas", pretrained, pretrained_cfg=cfg,
        feature_cfg={"feature_cls": "getter", "out_indices": tuple(range(n_stages))}, **kwargs,
    )
    return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model
