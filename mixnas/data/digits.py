"""The embedded default dataset: real handwritten digits rendered into cluttered colour canvases.

The source images are scikit-learn's 1797 8x8 handwritten digits (shipped inside scikit-learn, so nothing
is downloaded; ``source_digits`` reads its file without importing ``sklearn.datasets``). As they come they
are saturated: a small network gets ~99% of them right, which leaves no room to tell architectures apart.
Each render therefore

- scales one digit to 12..16 px (on a 32 px canvas; proportionally on other canvases) and puts it at a
  random position,
- lays 2-3 fragments (random crops) of digits of *other* classes beneath it, so the network must find the
  whole digit rather than any stroke,
- paints background, fragments and digit with independent random colours (3 channels), and
- adds Gaussian noise of a random strength.

The source digits are split ~80/20 per class by the seed; train renders use only the train sources (for
the digit and for its fragments) and val renders only the val sources, so validation measures
generalisation to unseen handwriting, not to new placements of seen digits.

Everything is drawn from ``numpy.random.Generator`` streams derived from the seed: the same seed gives
identical tensors.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = 10
DESIGN_CANVAS = 32  # the sizes below are for a 32 px canvas and scale with the canvas
DIGIT_SIZE = (12, 16)  # px, inclusive
FRAGMENTS = (2, 3)  # fragments per render, inclusive
FRAGMENT_CROP = (0.35, 0.6)  # fragment side as a fraction of its (scaled) source digit
BACKGROUND = (0.0, 0.35)  # per-channel intensity in [0, 1]
DIGIT_COLOUR = (0.5, 1.0)  # kept above the background so the digit is always visible
FRAGMENT_COLOUR = (0.3, 1.0)  # may match the digit's colour: colour alone must not give the digit away
NOISE_STD = (0.03, 0.12)
_CHUNK = 1024  # renders composited at once; bounds memory on large canvases


@dataclass(frozen=True)
class DigitRenders:
    """One split of the rendered task.

    Attributes:
        images: uint8 (N, 3, S, S), S the canvas size.
        labels: int64 (N,), the digit's class 0..9.
        source_index: int64 (N,), the index into ``sklearn.datasets.load_digits()`` of the digit shown.
    """

    images: torch.Tensor
    labels: torch.Tensor
    source_index: torch.Tensor


def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: images float64 (1797, 8, 8), ink 0..16, and labels int64 (1797,),
    as ``sklearn.datasets.load_digits`` gives them.

    Read from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``), found without importing
    scikit-learn: importing ``sklearn.datasets`` imports SciPy, about a second of CPU in every process that
    loads the digits (each Ray worker, each torchrun rank), and nothing else in those processes needs it.
    Where the file is not at that place, scikit-learn's own loader reads it.
    """
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def split_sources(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split source indices into train and val, stratified by class.

    Args:
        labels: the class of every source image.
        val_fraction: the share of each class that goes to val (rounded per class).
        seed: non-negative; the same seed gives the same split.

    Returns:
        Sorted train indices and sorted val indices; disjoint, together all of ``range(len(labels))``.
    """
    rng = np.random.default_rng([seed, 0])
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.append(members[: int(round(len(members) * val_fraction))])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def _scaled(lo_hi: tuple[int, int], canvas_size: int) -> tuple[int, int]:
    scale = canvas_size / DESIGN_CANVAS
    return max(3, round(lo_hi[0] * scale)), max(3, round(lo_hi[1] * scale))


def _digit_bank(sources: np.ndarray, sizes: range) -> dict[int, np.ndarray]:
    """Every source digit upscaled (bilinear) to every size a render may use: {size: (n, size, size)}."""
    x = torch.from_numpy(sources).float()[:, None]
    return {
        s: F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)[:, 0].numpy() for s in sizes
    }


def _other_class(
    pool: np.ndarray, labels: np.ndarray, avoid: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Draw from ``pool`` once per entry of ``avoid`` (labels), never a source of that entry's label."""
    pick = rng.choice(pool, size=avoid.shape)
    clash = labels[pick] == avoid
    while clash.any():  # ~1/10 clash per round, so this ends after a handful of rounds
        pick[clash] = rng.choice(pool, size=int(clash.sum()))
        clash = labels[pick] == avoid
    return pick


def render_digits(
    bank: dict[int, np.ndarray],
    labels: np.ndarray,
    source_ids: np.ndarray,
    renders_per_source: int,
    canvas_size: int,
    rng: np.random.Generator,
) -> DigitRenders:
    """Render ``renders_per_source`` cluttered canvases of every digit in ``source_ids``.

    Args:
        bank: upscaled source digits, ``{size: (n_all_sources, size, size)}`` float in [0, 1].
        labels: the class of every source (indexed like the bank).
        source_ids: the sources to render; fragments are also taken only from these.
        renders_per_source: renders of each source; every source appears equally often, so the class
            balance is that of the sources.
        canvas_size: S, the side of the square canvas in px.
        rng: the only source of randomness.
    """
    S = canvas_size
    n = len(source_ids) * renders_per_source
    main = np.repeat(source_ids, renders_per_source)
    size_lo, size_hi = _scaled(DIGIT_SIZE, S)
    n_max = FRAGMENTS[1]

    # All per-render parameters are drawn up front, in a fixed order, so the result depends on the seed only.
    size = rng.integers(size_lo, size_hi + 1, n)
    y = rng.integers(0, S - size + 1)
    x = rng.integers(0, S - size + 1)
    n_frag = rng.integers(FRAGMENTS[0], FRAGMENTS[1] + 1, n)
    frag_src = _other_class(source_ids, labels, np.repeat(labels[main][:, None], n_max, axis=1), rng)
    frag_size = rng.integers(size_lo, size_hi + 1, (n, n_max))
    fh = np.maximum(2, (rng.uniform(*FRAGMENT_CROP, (n, n_max)) * frag_size).astype(np.int64))
    fw = np.maximum(2, (rng.uniform(*FRAGMENT_CROP, (n, n_max)) * frag_size).astype(np.int64))
    crop_y = rng.integers(0, frag_size - fh + 1)
    crop_x = rng.integers(0, frag_size - fw + 1)
    paste_y = rng.integers(0, S - fh + 1)
    paste_x = rng.integers(0, S - fw + 1)
    background = rng.uniform(*BACKGROUND, (n, 3)).astype(np.float32)
    digit_colour = rng.uniform(*DIGIT_COLOUR, (n, 3)).astype(np.float32)
    frag_colour = rng.uniform(*FRAGMENT_COLOUR, (n, n_max, 3)).astype(np.float32)
    noise_std = rng.uniform(*NOISE_STD, n).astype(np.float32)

    images = np.empty((n, 3, S, S), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        c = stop - start
        digit_alpha = np.zeros((c, S, S), dtype=np.float32)
        frag_alpha = np.zeros((c, n_max, S, S), dtype=np.float32)
        for i, g in enumerate(range(start, stop)):
            s = size[g]
            digit_alpha[i, y[g] : y[g] + s, x[g] : x[g] + s] = bank[s][main[g]]
            for k in range(n_frag[g]):
                h, w = fh[g, k], fw[g, k]
                src = bank[frag_size[g, k]][frag_src[g, k]]
                frag_alpha[i, k, paste_y[g, k] : paste_y[g, k] + h, paste_x[g, k] : paste_x[g, k] + w] = src[
                    crop_y[g, k] : crop_y[g, k] + h, crop_x[g, k] : crop_x[g, k] + w
                ]
        # Alpha-composite back to front: background, fragments, digit; the stroke intensity is the alpha.
        img = np.broadcast_to(background[start:stop, :, None, None], (c, 3, S, S)).copy()
        for k in range(n_max):
            a = frag_alpha[:, k, None]
            img += a * (frag_colour[start:stop, k, :, None, None] - img)
        img += digit_alpha[:, None] * (digit_colour[start:stop, :, None, None] - img)
        img += rng.standard_normal((c, 3, S, S), dtype=np.float32) * noise_std[start:stop, None, None, None]
        images[start:stop] = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)

    return DigitRenders(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels[main].astype(np.int64)),
        source_index=torch.from_numpy(main.astype(np.int64)),
    )


def make_digits(
    canvas_size: int = 32,
    seed: int = 0,
    train_renders: int = 5,
    val_renders: int = 4,
    val_fraction: float = 0.2,
) -> tuple[DigitRenders, DigitRenders]:
    """Build the train and val splits of the digits task.

    With the defaults: 1438 train sources x 5 = 7190 train images and 359 val sources x 4 = 1436 val
    images, 3 x 32 x 32 uint8, rendered in well under a second.

    Args:
        canvas_size: S, the side of the square canvas in px (>= 8).
        seed: non-negative; the same seed gives identical tensors.
        train_renders: renders of each train source digit.
        val_renders: renders of each val source digit.
        val_fraction: the share of source digits (per class) held out for val.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if canvas_size < 8:
        raise ValueError(f"canvas_size must be >= 8, got {canvas_size}")
    if train_renders < 1 or val_renders < 1:
        raise ValueError(f"train_renders and val_renders must be >= 1, got {train_renders}, {val_renders}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")

    images, labels = source_digits()
    sources = (images / 16.0).astype(np.float32)  # (1797, 8, 8), ink intensity in [0, 1]
    train_idx, val_idx = split_sources(labels, val_fraction, seed)
    size_lo, size_hi = _scaled(DIGIT_SIZE, canvas_size)
    bank = _digit_bank(sources, range(size_lo, size_hi + 1))
    # Separate streams: changing the number of train renders leaves val unchanged, and vice versa.
    train_rng, val_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    train = render_digits(bank, labels, train_idx, train_renders, canvas_size, train_rng)
    val = render_digits(bank, labels, val_idx, val_renders, canvas_size, val_rng)
    return train, val
