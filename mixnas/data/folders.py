"""Datasets on disk: the CIFAR-10/100 python-pickle layout and ImageFolder trees.

Both readers check the layout before anything is loaded and raise ``DataError`` with a one-line message
that starts with the spec (``cifar:PATH`` / ``imagefolder:PATH``) and names the file or folder at fault.
"""

from __future__ import annotations

import codecs
import os
import pickle
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from mixnas.errors import DataError


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------------------

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR100_FILES = ("train", "test")
CIFAR_SIDE = 32
_CIFAR_ROW = 3 * CIFAR_SIDE * CIFAR_SIDE  # one image per row: 1024 R, then 1024 G, then 1024 B, row-major
# The tarballs unpack into these folders; pointing at their parent works too.
_CIFAR_SUBDIRS = ("cifar-10-batches-py", "cifar-100-python")


def _numpy_attr(modules: tuple[str, ...], name: str) -> Callable[..., Any] | None:
    """``module.name`` from the first of ``modules`` that imports (numpy 2 renamed ``core`` to ``_core``)."""
    import importlib

    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1"). Only that codec is honoured,
    # so a file cannot make us run an arbitrary (possibly third-party) codec.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """The only callables a CIFAR pickle may name, and what each resolves to.

    Unpickling runs whatever callables a file names (``os.system`` included), so a downloaded "CIFAR"
    file could execute code. The official files hold dicts, lists, bytes, ints and numpy uint8 arrays;
    arrays are rebuilt through ``_reconstruct`` + ``ndarray`` + ``dtype`` (written by numpy 1 as
    ``numpy.core.multiarray``, by numpy 2 as ``numpy._core.multiarray``). Two more pure constructors are
    allowed so copies re-pickled by Python 3 load as well: ``_frombuffer`` (numpy arrays at protocol 5)
    and a latin-1-only ``_codecs.encode`` (bytes at protocol 2). Nothing else resolves.
    """
    reconstruct = _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")
    frombuffer = _numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        if reconstruct is not None:
            allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        if frombuffer is not None:
            allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _DeclaredTooLarge(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of ``_allowed_globals`` and refuses everything else.

    An array constructor in a pickle names its shape, so a file of a few kilobytes could declare gigabytes
    (and a loader would train on a million phantom images): an array may not declare more bytes than the
    file holds (``max_bytes``); its contents come from the file itself.
    """

    _allowed = _allowed_globals()

    def __init__(self, file: Any, max_bytes: int, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.max_bytes = max_bytes
        check = self._checked(lambda shape, *a, **k: shape)

        class BoundedArray(np.ndarray):  # a type, as _reconstruct wants, whose constructor checks the shape
            def __new__(cls, shape: Any, *args: Any, **kwargs: Any) -> np.ndarray:
                check(shape if isinstance(shape, (tuple, list)) else (shape,))
                return np.ndarray.__new__(cls, shape, *args, **kwargs)

        self._array_type = BoundedArray

    def _checked(self, make: Callable[..., Any]) -> Callable[..., Any]:
        def build(*args: Any, **kwargs: Any) -> Any:
            shapes = [a for a in args if isinstance(a, (tuple, list))] + [kwargs.get("shape", ())]
            for shape in shapes:
                if all(isinstance(n, int) for n in shape):
                    count = 1
                    for n in shape:
                        count *= max(int(n), 0)
                    if count > self.max_bytes:
                        raise _DeclaredTooLarge(f"an array of shape {tuple(shape)[:8]}")
            return make(*args, **kwargs)

        return build

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = self._allowed[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None
        if found is np.ndarray:
            return self._array_type
        return found if found in (np.dtype, _latin1_encode) else self._checked(found)


def _read_cifar_file(file: Path, where: str) -> dict[str, Any]:
    try:
        with open(file, "rb") as f:
            # encoding="bytes": the official files were written by Python 2, whose str must stay bytes.
            obj = _CifarUnpickler(f, max_bytes=os.fstat(f.fileno()).st_size, encoding="bytes").load()
    except _DeclaredTooLarge as e:
        raise DataError(
            f"{where}: {file}: declares {e} ({file.stat().st_size} bytes on disk hold no such array): refused"
        ) from None
    except _RefusedGlobal as e:
        raise DataError(
            f"{where}: {file}: refused to unpickle global {e} (a CIFAR file holds only numpy arrays, "
            "lists and bytes; loading this one could run code)"
        ) from None
    except Exception as e:  # a corrupt pickle can raise almost anything (EOFError, ValueError, KeyError...)
        reason = f"{type(e).__name__}: {_one_line(e)}"
        raise DataError(f"{where}: {file}: not a readable CIFAR pickle ({reason})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{where}: {file}: expected a dict, found {type(obj).__name__}")
    # Keys are bytes in the official (Python 2) files and str in Python 3 re-pickles; accept both.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(file: Path, where: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One file's images as uint8 (N, 3, 32, 32) and labels as int64 (N,), checked."""
    d = _read_cifar_file(file, where)
    data, labels = d.get("data"), d.get(label_key)
    if isinstance(data, np.ndarray):
        data = data.view(np.ndarray)  # the unpickler's checked array type, as a plain array
    if data is None or labels is None:
        raise DataError(f"{where}: {file}: missing key {'data' if data is None else label_key!r}")
    is_array = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
    if not (is_array and data.shape[1] == _CIFAR_ROW):
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise DataError(f"{where}: {file}: 'data' must be uint8 of shape (N, {_CIFAR_ROW}), got {got}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{where}: {file}: {label_key!r} are not integers ({_one_line(e)})") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"{where}: {file}: {data.shape[0]} images but {labels.size} {label_key!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where}: {file}: {label_key!r} range {labels.min()}..{labels.max()} "
            f"is outside 0..{num_classes - 1}"
        )
    return data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), labels


@dataclass(frozen=True)
class CifarArrays:
    """A CIFAR dataset in memory.

    Attributes:
        train_images / val_images: uint8 (N, 3, 32, 32).
        train_labels / val_labels: int64 (N,).
        num_classes: 10 (CIFAR-10, ``labels``) or 100 (CIFAR-100, ``fine_labels``).
        root: the folder the files were read from.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    root: Path


def read_cifar(path: str) -> CifarArrays:
    """Read the official CIFAR-10 or CIFAR-100 python-pickle layout.

    CIFAR-10 is ``data_batch_1..5`` (train) and ``test_batch`` (val), labels under ``labels``; CIFAR-100 is
    ``train`` and ``test``, labels under ``fine_labels``. The layout is detected from the files present;
    the ``batches.meta`` / ``meta`` files hold only class names and are not needed. The folder the tarball
    unpacks into (``cifar-10-batches-py``, ``cifar-100-python``) may be given or its parent.

    Args:
        path: the folder.

    Raises:
        DataError: the folder is missing, holds neither layout (or only part of one), or a file is
            corrupt, malformed or names a global other than numpy's array constructors.
    """
    where = f"cifar:{path}"
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{where}: no such directory")

    def present(folder: Path, names: tuple[str, ...]) -> list[str]:
        return [n for n in names if (folder / n).is_file()]

    if not present(root, CIFAR10_FILES + CIFAR100_FILES):
        for sub in _CIFAR_SUBDIRS:
            if present(root / sub, CIFAR10_FILES + CIFAR100_FILES):
                root = root / sub
                break

    found10, found100 = present(root, CIFAR10_FILES), present(root, CIFAR100_FILES)
    if found10:
        layout, files, label_key, num_classes = "CIFAR-10", CIFAR10_FILES, "labels", 10
    elif found100:
        layout, files, label_key, num_classes = "CIFAR-100", CIFAR100_FILES, "fine_labels", 100
    else:
        raise DataError(
            f"{where}: no CIFAR files in {root}; expected CIFAR-10 (data_batch_1..data_batch_5, test_batch) "
            "or CIFAR-100 (train, test)"
        )
    missing = [n for n in files if not (root / n).is_file()]
    if missing:
        raise DataError(f"{where}: {layout} layout in {root} is missing {', '.join(missing)}")

    batches = [_cifar_batch(root / n, where, label_key, num_classes) for n in files]
    train, val = batches[:-1], batches[-1]  # the test file is last in both layouts
    return CifarArrays(
        train_images=torch.from_numpy(np.concatenate([b[0] for b in train])),
        train_labels=torch.from_numpy(np.concatenate([b[1] for b in train])),
        val_images=torch.from_numpy(np.ascontiguousarray(val[0])),
        val_labels=torch.from_numpy(val[1]),
        num_classes=num_classes,
        root=root,
    )


# ---------------------------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------------------------


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; an unreadable file raises a DataError naming it, not a bare PIL error."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except Image.DecompressionBombError:
        raise DataError(f"{path}: refused: a decompression bomb (its header declares more pixels than PIL's "
                        f"limit of {Image.MAX_IMAGE_PIXELS})") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({_one_line(e)})") from None


def _class_dirs(folder: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store's kin) are not classes.
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def image_files(folder: str | Path) -> list[str]:
    """The image files under ``folder``, sorted: regular files only (a FIFO or a device named ``.png`` would
    hang or flood a loader), and every real directory walked once, so that a symbolic link that loops back
    (or two links to one folder) neither counts an image twice nor walks forever. Links to files and a
    linked class folder are followed."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [str(folder)]
    while stack:
        current = stack.pop()
        try:
            info = os.stat(current)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir():  # follows links; the (device, inode) set stops loops
                    stack.append(e.path)
                elif e.name.lower().endswith(IMG_EXTENSIONS) and stat.S_ISREG(os.stat(e.path).st_mode):
                    out.append(e.path)
            except OSError:
                continue  # a dangling link
    return sorted(out)


def _has_image(folder: Path) -> bool:
    return bool(image_files(folder))  # ImageFolder also looks in sub-folders


class ClassFolder(ImageFolder):
    """torchvision's ImageFolder, with hidden folders not counted as classes and the files of each class
    listed by ``image_files`` (no loops, no duplicates through links, regular files only)."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = _class_dirs(Path(directory))
        return classes, {c: i for i, c in enumerate(classes)}

    @staticmethod
    def make_dataset(directory: str | Path, class_to_idx: dict[str, int],
                     extensions: tuple[str, ...] | None = None, is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        samples = []
        for name, index in sorted(class_to_idx.items(), key=lambda kv: kv[1]):
            files = image_files(Path(directory) / name)
            if not files and not allow_empty:
                raise FileNotFoundError(f"{Path(directory) / name}: no image file")
            samples.extend((f, index) for f in files)
        return samples


@dataclass(frozen=True)
class FolderSplits:
    """The ImageFolder datasets of one tree.

    Attributes:
        train: ``train/`` with the training transform.
        val: ``val/`` with the evaluation transform.
        calib: ``train/`` with the evaluation transform.
        classes: the class folder names; a label is an index into this list.
    """

    train: ClassFolder
    val: ClassFolder
    calib: ClassFolder
    classes: list[str]


def read_imagefolder(
    path: str,
    train_transform: Callable[[Image.Image], torch.Tensor],
    val_transform: Callable[[Image.Image], torch.Tensor],
) -> FolderSplits:
    """Open ``PATH/train/<class>/*`` and ``PATH/val/<class>/*`` after checking the tree.

    Args:
        path: the folder holding ``train/`` and ``val/``.
        train_transform: PIL image -> tensor, for ``train``.
        val_transform: PIL image -> tensor, for ``val`` and ``calib``.

    Raises:
        DataError: ``PATH``, ``train/`` or ``val/`` is missing; there are no class folders; the class folders
            of train and val differ (the message lists the difference); a class folder holds no image.
    """
    where = f"imagefolder:{path}"
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{where}: no such directory")
    splits = {name: root / name for name in ("train", "val")}
    for d in splits.values():
        if not d.is_dir():
            raise DataError(f"{where}: missing folder {d} (expected train/ and val/ with class folders)")
    classes = {name: _class_dirs(d) for name, d in splits.items()}
    for name, d in splits.items():
        if not classes[name]:
            raise DataError(f"{where}: {d} has no class folders")
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise DataError(
            f"{where}: class folders differ between train/ and val/: "
            f"only in train: {', '.join(only_train) or '-'}; only in val: {', '.join(only_val) or '-'}"
        )
    empty = [str(d / c) for name, d in splits.items() for c in classes[name] if not _has_image(d / c)]
    if empty:
        raise DataError(
            f"{where}: class folders without images ({', '.join(IMG_EXTENSIONS)}): {', '.join(empty)}"
        )
    train = ClassFolder(str(splits["train"]), transform=train_transform, loader=load_rgb)
    return FolderSplits(
        train=train,
        val=ClassFolder(str(splits["val"]), transform=val_transform, loader=load_rgb),
        calib=ClassFolder(str(splits["train"]), transform=val_transform, loader=load_rgb),
        classes=list(train.classes),
    )
