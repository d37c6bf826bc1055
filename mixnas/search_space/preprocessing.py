"""Preprocessing: how a network's input images were prepared, recorded with the architectures it exports.

A network trained on the digits canvases (32 px, their own mean and std) fed the way an ImageNet model is
fed (224 px, ImageNet's mean and std) scores chance without an error. An exported ArchConfig therefore
records the normalisation and resizing of the data it was trained on, and its timm ``pretrained_cfg`` is
built from them (``mixnas.supernet.timm_model``), so ``timm.data.resolve_data_config(model=m)`` and
``create_transform`` feed it as it was trained. The input size is the ArchConfig's own ``input_size``.

It is a label of the weights, not of the architecture: it is not part of ``arch_id``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mixnas.errors import ConfigError
from mixnas.search_space._fields import as_float, check_keys, read_choice, read_float

INTERPOLATIONS = ["bilinear", "bicubic", "nearest"]
# What an architecture without a record is assumed to expect: an ImageNet model's preprocessing (timm's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Per-channel normalisation and the evaluation resize of a network's inputs.

    Args:
        mean: per-channel mean of the [0, 1] image, subtracted.
        std: per-channel std of the [0, 1] image, divided by (each > 0).
        interpolation: the resize's interpolation (timm's names).
        crop_pct: evaluation resizes the image to ``input_size / crop_pct`` and centre-crops ``input_size``
            (timm's convention); 1.0 resizes straight to ``input_size``.
        dataset: the dataset spec trained on (a label: ``digits``, ``cifar:PATH``, ``imagefolder:PATH``).
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    dataset: str | None = None

    @classmethod
    def from_dict(cls, d: Any, path: str = "preprocessing") -> Preprocessing:
        check_keys(d, {"mean", "std", "interpolation", "crop_pct", "dataset"}, path)
        dataset = d.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            raise ConfigError(f"{path}.dataset: expected a string, got {dataset!r}")
        out = cls(
            mean=_floats(d.get("mean"), f"{path}.mean", positive=False),
            std=_floats(d.get("std"), f"{path}.std", positive=True),
            interpolation=read_choice(d, "interpolation", path, INTERPOLATIONS, "bicubic"),
            crop_pct=read_float(d, "crop_pct", path, 0.875, low=0.0, high=1.0, low_open=True),
            dataset=dataset,
        )
        if len(out.mean) != len(out.std):
            raise ConfigError(f"{path}.std: {len(out.std)} values for {len(out.mean)} means; give one per channel")
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                               "interpolation": self.interpolation, "crop_pct": float(self.crop_pct)}
        if self.dataset is not None:
            out["dataset"] = self.dataset
        return out

    def check_channels(self, in_chans: int, path: str = "preprocessing") -> None:
        if len(self.mean) != in_chans:
            raise ConfigError(f"{path}.mean: {len(self.mean)} values for in_chans {in_chans}; give one per channel")


def _floats(value: Any, field: str, positive: bool) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"{field}: expected a list of numbers, one per channel, got {value!r}")
    if len(value) > 16:
        raise ConfigError(f"{field}: {len(value)} values; at most 16 channels")
    return tuple(as_float(v, f"{field}[{i}]", low=0.0 if positive else None, low_open=positive)
                 for i, v in enumerate(value))


def read_preprocessing(d: Mapping, key: str, path: str) -> Preprocessing | None:
    """The optional ``preprocessing`` entry of a config mapping."""
    value = d.get(key)
    return None if value is None else Preprocessing.from_dict(value, f"{path}.{key}" if path else key)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "Preprocessing", "read_preprocessing"]
