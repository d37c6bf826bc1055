"""The public entry point: ``load_dataset(spec, input_size)`` -> ``DatasetBundle``, and ``make_loader``.

Normalisation (per channel mean / std):

- ``digits``: measured on the rendered train split (the canvases are dark and tinted, so (0.5, 0.5, 0.5)
  would leave the inputs far from zero mean); the val and calib splits use the same constants.
- ``cifar``: the usual CIFAR-10 / CIFAR-100 training-set constants (``CIFAR10_MEAN`` ...).
- ``imagefolder``: ImageNet's (timm's ``IMAGENET_DEFAULT_MEAN`` / ``_STD``), as pretrained backbones expect.

Augmentation (training split only; ``augment=False`` turns it off):

- ``digits``: random crop with 2 px edge padding (scaled with the canvas); no flip, digits have a handedness.
- ``cifar``: the standard random crop with 4 px zero padding (scaled with the input size) and horizontal flip.
- ``imagefolder``: timm's ``create_transform``: random-resized crop (scale 0.35..1), horizontal flip, no
  colour jitter, auto-augment or random erasing. Evaluation: resize, centre crop (timm's crop_pct 0.875).

Random augmentation draws from torch's global generator (in the main process) or the DataLoader's
per-worker generator (seeded from the loader's generator); seed torch to make it repeatable.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mixnas.data.digits import NUM_CLASSES as DIGITS_CLASSES
from mixnas.data.digits import make_digits
from mixnas.data.folders import CIFAR_SIDE, DataError, read_cifar, read_imagefolder
from mixnas.search_space import Preprocessing

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
MIN_INPUT_SIZE = 8
DIGITS_RENDERS_KEPT = 2  # (canvas, seed) renders a process keeps: about 30 MB each at 32 px, 120 MB at 64
MAX_DIGITS_CANVAS = 64  # larger inputs render at 64 px and are resized: a 224 px canvas would need ~1 GB
EVAL_CROP_PCT = 0.875  # imagefolder's evaluation: resize to input_size / 0.875, centre crop (timm's default)
SPEC_FORMS = "'digits', 'cifar:PATH' or 'imagefolder:PATH'"


@dataclass
class DatasetBundle:
    """A dataset ready for the supernet.

    Attributes:
        train: yields (float32 (C, H, W) normalised image, int label), augmented unless ``augment=False``.
        val: the held-out split, deterministic (no augmentation).
        num_classes: labels are 0..num_classes-1.
        in_chans: image channels (3 for every dataset here).
        input_size: H = W of the images yielded.
        name: ``digits``, ``cifar:PATH`` or ``imagefolder:PATH``.
        calib: the training images with the val transform, for BatchNorm recalibration of subnets.
        preprocessing: the val transform's normalisation and resize, as exported architectures record it.
    """

    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int
    input_size: int
    name: str
    calib: Dataset
    preprocessing: Preprocessing | None = None


class TensorTransform:
    """uint8 (C, H, W) -> normalised float32 (C, S, S): resize, then optionally random crop and flip.

    Written with plain tensor ops because torchvision's per-sample transforms cost ~0.3 ms (and edge
    padding several ms) per 32 px image on this CPU build, which would dominate a small model's epoch.

    Args:
        input_size: S, the output side in px.
        mean: per-channel mean of the [0, 1] image.
        std: per-channel std of the [0, 1] image.
        crop_padding: random crop of S from the image padded by this many px on each side; 0 = no crop.
        padding_mode: ``"constant"`` (zeros) or ``"edge"`` (repeat the border pixels).
        hflip: flip horizontally with probability 0.5.
    """

    def __init__(
        self,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 0,
        padding_mode: str = "constant",
        hflip: bool = False,
    ) -> None:
        if padding_mode not in ("constant", "edge"):
            raise ValueError(f"padding_mode must be 'constant' or 'edge', got {padding_mode!r}")
        self.input_size = input_size
        self.crop_padding = crop_padding
        self.padding_mode = padding_mode
        self.hflip = hflip
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-add on the 0..255 values.
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        S, p = self.input_size, self.crop_padding
        x = img.float()
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x[None], size=(S, S), mode="bilinear", align_corners=False, antialias=True)[0]
        if p > 0:
            r = torch.rand(3)
            i, j = int(r[0] * (2 * p + 1)), int(r[1] * (2 * p + 1))
            if self.padding_mode == "edge":
                # Gather with clamped indices == crop of the edge-padded image, without padding it.
                rows = (torch.arange(S) + (i - p)).clamp_(0, S - 1)
                cols = (torch.arange(S) + (j - p)).clamp_(0, S - 1)
                x = x.index_select(1, rows).index_select(2, cols)
            else:
                x = F.pad(x, (p, p, p, p))[:, i : i + S, j : j + S]
            if self.hflip and r[2] < 0.5:
                x = x.flip(-1)
        elif self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return torch.addcmul(self.shift, x, self.scale)

    def __repr__(self) -> str:
        return (
            f"TensorTransform(input_size={self.input_size}, crop_padding={self.crop_padding}, "
            f"padding_mode={self.padding_mode!r}, hflip={self.hflip})"
        )


class TensorImageDataset(Dataset):
    """Images held in memory as uint8 (N, C, H, W), transformed one at a time.

    Args:
        images: uint8 (N, C, H, W).
        labels: int64 (N,).
        transform: uint8 (C, H, W) -> float32 (C, S, S).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: TensorTransform) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            got = f"{images.dtype} {tuple(images.shape)} and {len(labels)} labels"
            raise ValueError(f"images must be uint8 (N, C, H, W) with N labels, got {got}")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])

    @property
    def targets(self) -> list[int]:
        """Every label, as torchvision's datasets name them (for class-balanced samplers)."""
        return self.labels.tolist()


def _tensor_bundle(
    name: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
    train_tf: TensorTransform,
    val_tf: TensorTransform,
    input_size: int,
) -> DatasetBundle:
    return DatasetBundle(
        train=TensorImageDataset(train_images, train_labels, train_tf),
        val=TensorImageDataset(val_images, val_labels, val_tf),
        num_classes=num_classes,
        in_chans=int(train_images.shape[1]),
        input_size=input_size,
        name=name,
        calib=TensorImageDataset(train_images, train_labels, val_tf),
        # TensorTransform resizes straight to the input size, bilinear, with no crop.
        preprocessing=Preprocessing(tuple(val_tf.mean), tuple(val_tf.std), "bilinear", 1.0, name),
    )


@functools.lru_cache(maxsize=DIGITS_RENDERS_KEPT)
def _digits_renders(canvas: int, seed: int) -> tuple[tuple[Tensor, ...], list[float], list[float]]:
    """The rendered splits (train images, labels, val images, labels) and the train split's per-channel
    mean and std; kept for the process's next load of the same canvas and seed (rendering takes ~0.7 s)."""
    train, val = make_digits(canvas_size=canvas, seed=seed)
    pixels = train.images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255.0
    return (train.images, train.labels, val.images, val.labels), pixels.mean(1).tolist(), pixels.std(1).tolist()


def _load_digits(input_size: int, seed: int, augment: bool) -> DatasetBundle:
    canvas = min(input_size, MAX_DIGITS_CANVAS)
    kept, mean, std = _digits_renders(canvas, seed)
    images = tuple(t.clone() for t in kept)  # the caller's own copies: the kept renders stay as rendered
    pad = max(1, round(2 * input_size / 32))
    val_tf = TensorTransform(input_size, mean, std)
    train_tf = val_tf
    if augment:
        train_tf = TensorTransform(input_size, mean, std, crop_padding=pad, padding_mode="edge")
    return _tensor_bundle("digits", *images, DIGITS_CLASSES, train_tf, val_tf, input_size)


def _load_cifar(path: str, input_size: int, augment: bool) -> DatasetBundle:
    data = read_cifar(path)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if data.num_classes == 10 else (CIFAR100_MEAN, CIFAR100_STD)
    pad = max(1, round(4 * input_size / CIFAR_SIDE))
    val_tf = TensorTransform(input_size, mean, std)
    train_tf = TensorTransform(input_size, mean, std, crop_padding=pad, hflip=True) if augment else val_tf
    return _tensor_bundle(
        f"cifar:{path}",
        data.train_images,
        data.train_labels,
        data.val_images,
        data.val_labels,
        data.num_classes,
        train_tf,
        val_tf,
        input_size,
    )


def _load_imagefolder(path: str, input_size: int, augment: bool) -> DatasetBundle:
    common = dict(interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    val_tf = create_transform(input_size, is_training=False, crop_pct=EVAL_CROP_PCT, **common)
    train_tf = (
        create_transform(
            input_size,
            is_training=True,
            scale=(0.35, 1.0),
            hflip=0.5,
            color_jitter=None,
            auto_augment=None,
            re_prob=0.0,
            **common,
        )
        if augment
        else val_tf
    )
    splits = read_imagefolder(path, train_tf, val_tf)
    return DatasetBundle(
        train=splits.train,
        val=splits.val,
        num_classes=len(splits.classes),
        in_chans=3,  # load_rgb converts every image to RGB
        input_size=input_size,
        name=f"imagefolder:{path}",
        calib=splits.calib,
        preprocessing=Preprocessing(tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), "bicubic",
                                    EVAL_CROP_PCT, f"imagefolder:{path}"),
    )


def load_dataset(spec: str, input_size: int, seed: int = 0, augment: bool = True) -> DatasetBundle:
    """Load the dataset named by ``spec``.

    Args:
        spec: ``digits`` (the embedded default, rendered from scikit-learn's handwritten digits),
            ``cifar:PATH`` (the CIFAR-10/100 python-pickle layout) or ``imagefolder:PATH``
            (``PATH/train/<class>/*`` and ``PATH/val/<class>/*``).
        input_size: side in px of the square images yielded (>= 8); images are resized to it.
        seed: non-negative; fixes the digits renders and split (the files on disk do not depend on it).
        augment: augment the training split; False gives it the val transform.

    Raises:
        DataError: one line naming the spec and the path or file at fault.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty dataset spec; expected {SPEC_FORMS}")
    spec = spec.strip()
    if input_size < MIN_INPUT_SIZE:
        raise DataError(f"{spec}: input_size must be >= {MIN_INPUT_SIZE}, got {input_size}")
    if seed < 0:
        raise DataError(f"{spec}: seed must be >= 0, got {seed}")
    kind, sep, path = spec.partition(":")
    if spec == "digits":
        return _load_digits(input_size, seed, augment)
    if sep and path and kind == "cifar":
        return _load_cifar(path, input_size, augment)
    if sep and path and kind == "imagefolder":
        return _load_imagefolder(path, input_size, augment)
    raise DataError(f"unknown dataset spec {spec!r}; expected {SPEC_FORMS}")


def make_loader(
    ds: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader whose shuffling is fixed by ``seed``.

    The order of the k-th pass over the loader depends only on ``seed`` and k, so two loaders built with
    the same seed yield the same batches pass for pass (a resumed run rebuilds the same order by
    building the loader with the same seed and skipping the finished passes, or by seeding each epoch,
    e.g. ``seed + epoch``). Worker processes are seeded from the same generator.

    Args:
        ds: the dataset.
        batch_size: samples per batch.
        shuffle: reshuffle at every pass; must be False when ``sampler`` is given.
        seed: seeds the loader's own ``torch.Generator`` (the global RNG is neither read nor advanced by
            the shuffling).
        num_workers: worker processes; 0 loads in the main process.
        drop_last: drop the last incomplete batch.
        sampler: a custom sampler (e.g. a DistributedSampler), instead of ``shuffle``.
    """
    if sampler is not None and shuffle:
        raise ValueError("make_loader: pass either shuffle=True or a sampler, not both")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=False,
    )
