"""mixnas.data: the digits task, CIFAR pickles, ImageFolder trees, transforms and seeded loaders."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import TensorDataset

from mixnas.data import DataError, DatasetBundle, load_dataset, make_loader
from mixnas.data import digits as digits_module
from mixnas.data.digits import _digit_bank, make_digits, render_digits, source_digits, split_sources
from mixnas.data.loaders import TensorTransform

# ---------------------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_dataset("digits", 32, seed=0)


def test_digits_bundle_shapes(digits: DatasetBundle) -> None:
    assert (digits.name, digits.num_classes, digits.in_chans, digits.input_size) == ("digits", 10, 3, 32)
    assert len(digits.train) == 7190 and len(digits.val) == 1436 and len(digits.calib) == len(digits.train)
    for ds in (digits.train, digits.val, digits.calib):
        x, y = ds[5]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert isinstance(y, int) and 0 <= y < 10
    # Normalised with the train split's own statistics: roughly zero mean, unit std per channel.
    xs = torch.stack([digits.calib[i][0] for i in range(0, len(digits.calib), 7)])
    assert xs.mean((0, 2, 3)).abs().max() < 0.1
    assert (xs.std((0, 2, 3)) - 1).abs().max() < 0.1


def test_digits_val_and_calib_deterministic_train_augmented(digits: DatasetBundle) -> None:
    assert torch.equal(digits.val[3][0], digits.val[3][0])
    assert torch.equal(digits.calib[3][0], digits.calib[3][0])
    torch.manual_seed(0)
    crops = [digits.train[3][0] for _ in range(8)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    # Same image underneath: calib is the train split without augmentation.
    assert digits.calib[3][1] == digits.train[3][1]
    assert torch.equal(digits.calib.images, digits.train.images)


def test_digits_same_seed_same_tensors(digits: DatasetBundle) -> None:
    train, val = make_digits(canvas_size=32, seed=0)
    assert torch.equal(train.images, digits.train.images) and torch.equal(val.images, digits.val.images)
    assert torch.equal(train.labels, digits.train.labels)
    a = make_digits(seed=1, train_renders=1, val_renders=1)
    b = make_digits(seed=2, train_renders=1, val_renders=1)
    assert not torch.equal(a[1].source_index, b[1].source_index)  # a different split of the sources
    assert not torch.equal(a[0].images[:100], b[0].images[:100])


def test_digits_loaded_again_are_the_same_renders_in_the_callers_own_tensors(digits: DatasetBundle) -> None:
    """The process keeps the renders (a second load does not render again), and each load gets copies: what
    one caller writes into its images never reaches the next load."""
    again = load_dataset("digits", 32, seed=0, augment=False)
    assert torch.equal(again.train.images, digits.train.images) and torch.equal(again.val.labels, digits.val.labels)
    assert again.train.images.data_ptr() != digits.train.images.data_ptr()
    again.train.images.zero_()
    again.val.labels.fill_(3)
    third = load_dataset("digits", 32, seed=0)
    assert torch.equal(third.train.images, digits.train.images) and torch.equal(third.val.labels, digits.val.labels)
    assert third.train.images.any()
    assert (third.train.transform.mean, third.train.transform.std) == (digits.train.transform.mean,
                                                                        digits.train.transform.std)


def test_the_source_digits_are_scikit_learns_read_without_importing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.datasets import load_digits

    reference = load_digits()
    # Read from scikit-learn's file while ``import sklearn.datasets`` fails (a None entry in sys.modules).
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    images, labels = source_digits()
    assert images.dtype == reference.images.dtype and np.array_equal(images, reference.images)
    assert labels.dtype == np.int64 and np.array_equal(labels, reference.target)
    # Where scikit-learn is not found as a folder of files, its own loader reads them: the same arrays.
    monkeypatch.delitem(sys.modules, "sklearn.datasets")
    monkeypatch.setattr(digits_module.importlib.util, "find_spec", lambda name: None)
    again, again_labels = source_digits()
    assert np.array_equal(again, images) and np.array_equal(again_labels, labels) and again_labels.dtype == np.int64


def test_digits_class_balance_and_disjoint_sources() -> None:
    train, val = make_digits(seed=3, train_renders=1, val_renders=1)
    for split in (train, val):
        counts = torch.bincount(split.labels, minlength=10).double() / len(split.labels)
        assert counts.min() > 0.09 and counts.max() < 0.11
    train_src, val_src = set(train.source_index.tolist()), set(val.source_index.tolist())
    assert not train_src & val_src
    assert len(train_src | val_src) == 1797
    assert 0.18 < len(val_src) / 1797 < 0.22


def test_split_sources_stratified_and_seeded() -> None:
    labels = np.repeat(np.arange(10), 50)
    tr, va = split_sources(labels, 0.2, seed=0)
    assert np.bincount(labels[va], minlength=10).tolist() == [10] * 10
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(500))
    assert np.array_equal(va, split_sources(labels, 0.2, seed=0)[1])
    assert not np.array_equal(va, split_sources(labels, 0.2, seed=1)[1])


def test_val_renders_use_only_val_sources_for_fragments() -> None:
    # If fragments came only from the val sources, wiping every other source from the bank changes nothing.
    rng = np.random.default_rng(0)
    sources = rng.uniform(0, 1, (60, 8, 8)).astype(np.float32)
    labels = np.repeat(np.arange(10), 6)
    val_ids = np.arange(0, 60, 3)
    bank = _digit_bank(sources, range(12, 17))
    wiped = {
        s: np.where(np.isin(np.arange(60), val_ids)[:, None, None], b, 0).astype(np.float32)
        for s, b in bank.items()
    }
    a = render_digits(bank, labels, val_ids, 3, 32, np.random.default_rng(5))
    b = render_digits(wiped, labels, val_ids, 3, 32, np.random.default_rng(5))
    assert torch.equal(a.images, b.images)
    c = render_digits(bank, labels, np.arange(60), 1, 32, np.random.default_rng(5))
    assert set(c.source_index.tolist()) == set(range(60))


def test_digits_other_input_size() -> None:
    b = load_dataset("digits", 40, seed=0, augment=False)
    x, _ = b.train[0]
    assert x.shape == (3, 40, 40) and b.input_size == 40
    assert torch.equal(b.train[0][0], b.train[0][0])  # augment=False: train is deterministic too


# ---------------------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------------------


def test_tensor_transform_edge_crop_matches_replicate_padding() -> None:
    img = torch.randint(0, 256, (3, 10, 10), dtype=torch.uint8)
    t = TensorTransform(10, (0.0,) * 3, (1 / 255,) * 3, crop_padding=2, padding_mode="edge")
    padded = F.pad(img.float()[None], (2, 2, 2, 2), mode="replicate")[0]
    windows = {
        tuple(padded[:, i : i + 10, j : j + 10].flatten().tolist()) for i in range(5) for j in range(5)
    }
    torch.manual_seed(0)
    outs = [t(img) for _ in range(40)]
    assert all(tuple(o.flatten().tolist()) in windows for o in outs)
    assert len({tuple(o.flatten().tolist()) for o in outs}) > 5


def test_tensor_transform_normalises_and_resizes() -> None:
    img = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    out = TensorTransform(24, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))(img)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, 3.0, 0.5]), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------------------

N_PER_FILE = 12


def _dump(path: Path, obj: object, protocol: int) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _batch(rng: np.random.Generator, num_classes: int, cifar100: bool) -> dict[bytes, object]:
    data = rng.integers(0, 256, (N_PER_FILE, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, N_PER_FILE).tolist()
    d: dict[bytes, object] = {b"batch_label": b"training batch", b"data": data}
    d[b"filenames"] = [f"img_{i}.png".encode() for i in range(N_PER_FILE)]
    if cifar100:
        d[b"fine_labels"] = labels
        d[b"coarse_labels"] = [lab // 5 for lab in labels]  # differs from fine: reading it would be caught
    else:
        d[b"labels"] = labels
    return d


def make_cifar10(root: Path, protocol: int = 2, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _dump(root / name, _batch(rng, 10, cifar100=False), protocol)
    _dump(root / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol)
    return root


def make_cifar100(root: Path, protocol: int = 5, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in ("train", "test"):
        _dump(root / name, _batch(rng, 100, cifar100=True), protocol)
    _dump(root / "meta", {b"fine_label_names": [b"x"] * 100}, protocol)
    return root


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_layout(tmp_path: Path, protocol: int) -> None:
    root = make_cifar10(tmp_path / "c10", protocol)
    b = load_dataset(f"cifar:{root}", 32, augment=False)
    assert (b.num_classes, b.in_chans, b.input_size, b.name) == (10, 3, 32, f"cifar:{root}")
    assert len(b.train) == 5 * N_PER_FILE and len(b.val) == N_PER_FILE and len(b.calib) == len(b.train)
    x, y = b.train[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and 0 <= y < 10
    # Rows are 1024 R, 1024 G, 1024 B, each 32x32 row-major: undo the normalisation and compare.
    with open(root / "data_batch_1", "rb") as f:
        raw = pickle.load(f)
    mean, std = torch.tensor((0.4914, 0.4822, 0.4465)), torch.tensor((0.2470, 0.2435, 0.2616))
    pixels = (x * std.view(3, 1, 1) + mean.view(3, 1, 1)) * 255
    expected = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)).float()
    assert torch.allclose(pixels, expected, atol=1e-3)
    assert y == raw[b"labels"][0]
    with open(root / "test_batch", "rb") as f:
        assert [b.val[i][1] for i in range(N_PER_FILE)] == pickle.load(f)[b"labels"]


def test_cifar100_layout_and_resize(tmp_path: Path) -> None:
    root = make_cifar100(tmp_path / "c100")
    b = load_dataset(f"cifar:{root}", 40)
    assert b.num_classes == 100 and len(b.train) == N_PER_FILE and len(b.val) == N_PER_FILE
    for ds in (b.train, b.val, b.calib):
        x, _ = ds[1]
        assert x.shape == (3, 40, 40) and x.dtype == torch.float32
    with open(root / "train", "rb") as f:
        fine = pickle.load(f)[b"fine_labels"]
    assert [b.calib[i][1] for i in range(N_PER_FILE)] == fine


def test_cifar_parent_of_tarball_folder(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "cifar-10-batches-py")
    assert load_dataset(f"cifar:{tmp_path}", 32).num_classes == 10


def test_cifar_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="no such directory") as e:
        load_dataset(f"cifar:{missing}", 32)
    assert str(missing) in str(e.value)


def test_cifar_neither_layout(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DataError) as e:
        load_dataset(f"cifar:{tmp_path}", 32)
    msg = str(e.value)
    assert str(tmp_path) in msg and "data_batch_1" in msg and "test_batch" in msg and "train" in msg
    assert "\n" not in msg


def test_cifar_partial_layout(tmp_path: Path) -> None:
    root = make_cifar10(tmp_path / "c10")
    (root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3") as e:
        load_dataset(f"cifar:{root}", 32)
    assert str(root) in str(e.value)


def test_cifar_corrupt_file(tmp_path: Path) -> None:
    root = make_cifar10(tmp_path / "c10")
    bad = root / "data_batch_2"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError) as e:
        load_dataset(f"cifar:{root}", 32)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "bad_dict",
    [
        {b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]},  # wrong row length
        {b"data": np.zeros((3, 3072), np.float32), b"labels": [0, 1, 2]},  # wrong dtype
        {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]},  # label count
        {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 10]},  # label out of range
        {b"data": np.zeros((3, 3072), np.uint8)},  # no labels
        [1, 2, 3],  # not a dict
    ],
)
def test_cifar_malformed_file(tmp_path: Path, bad_dict: object) -> None:
    root = make_cifar10(tmp_path / "c10")
    _dump(root / "test_batch", bad_dict, 4)
    with pytest.raises(DataError) as e:
        load_dataset(f"cifar:{root}", 32)
    assert str(root / "test_batch") in str(e.value)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    root = make_cifar10(tmp_path / "c10")
    marker = tmp_path / "pwned"
    _dump(root / "data_batch_1", {b"data": _Exploit(marker), b"labels": []}, 2)
    # The payload works with the plain unpickler, so the refusal below is what prevents it.
    pickle.loads(pickle.dumps(_Exploit(tmp_path / "control")))
    assert (tmp_path / "control").exists()
    with pytest.raises(DataError, match="system") as e:
        load_dataset(f"cifar:{root}", 32)
    assert str(root / "data_batch_1") in str(e.value)
    assert not marker.exists()


def test_cifar_refuses_other_codecs(tmp_path: Path) -> None:
    root = make_cifar10(tmp_path / "c10")
    # A protocol-0 pickle calling _codecs.encode with a codec other than latin-1.
    payload = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    assert pickle.loads(payload) == "nop"  # the plain unpickler runs it
    (root / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match="rot13"):
        load_dataset(f"cifar:{root}", 32)


# ---------------------------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------------------------


def make_imagefolder(root: Path, classes: dict[str, tuple[int, int]] | None = None) -> Path:
    classes = classes or {"ant": (4, 2), "bee": (3, 2), "cat": (5, 1)}
    rng = np.random.default_rng(0)
    for split, k in (("train", 0), ("val", 1)):
        for c, counts in classes.items():
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(counts[k]):
                h, w = rng.integers(20, 48, 2)
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_imagefolder_layout(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "tree")
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    b = load_dataset(f"imagefolder:{root}", 32)
    assert (b.num_classes, b.in_chans, b.input_size, b.name) == (3, 3, 32, f"imagefolder:{root}")
    assert len(b.train) == 12 and len(b.val) == 5 and len(b.calib) == 12
    for ds in (b.train, b.val, b.calib):
        labels = [ds[i][1] for i in range(len(ds))]
        assert set(labels) == {0, 1, 2}
        x, _ = ds[0]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert [b.val[i][1] for i in range(5)] == [0, 0, 1, 1, 2]
    assert torch.equal(b.val[2][0], b.val[2][0]) and torch.equal(b.calib[2][0], b.calib[2][0])


def test_imagefolder_missing_root_and_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory") as e:
        load_dataset(f"imagefolder:{tmp_path / 'absent'}", 32)
    assert str(tmp_path / "absent") in str(e.value)
    root = make_imagefolder(tmp_path / "tree")
    for f in (root / "val").rglob("*.*"):
        f.unlink()
    for d in sorted((root / "val").rglob("*"), reverse=True):
        d.rmdir()
    (root / "val").rmdir()
    with pytest.raises(DataError) as e:
        load_dataset(f"imagefolder:{root}", 32)
    assert str(root / "val") in str(e.value)


def test_imagefolder_class_mismatch(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "tree")
    (root / "val" / "bee").rename(root / "val" / "bea")
    with pytest.raises(DataError) as e:
        load_dataset(f"imagefolder:{root}", 32)
    msg = str(e.value)
    assert "only in train: bee" in msg and "only in val: bea" in msg and str(root) in msg


def test_imagefolder_empty_class(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "tree", {"ant": (2, 1), "bee": (0, 1)})
    (root / "train" / "bee" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as e:
        load_dataset(f"imagefolder:{root}", 32)
    assert str(root / "train" / "bee") in str(e.value)
    assert str(root / "val" / "bee") not in str(e.value)


def test_imagefolder_no_classes(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="no class folders") as e:
        load_dataset(f"imagefolder:{tmp_path}", 32)
    assert str(tmp_path / "train") in str(e.value)


def test_imagefolder_corrupt_image_names_file(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "tree", {"ant": (1, 1), "bee": (1, 1)})
    bad = root / "val" / "bee" / "0.jpg"
    bad.write_bytes(b"not a jpeg")
    b = load_dataset(f"imagefolder:{root}", 32)
    with pytest.raises(DataError) as e:
        b.val[1]
    assert str(bad) in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["mnist", "cifar:", "imagefolder:", "folder:/data", "digits:7", ""])
def test_unknown_spec(spec: str) -> None:
    with pytest.raises(DataError) as e:
        load_dataset(spec, 32)
    msg = str(e.value)
    assert "'digits', 'cifar:PATH' or 'imagefolder:PATH'" in msg
    if spec:
        assert spec in msg


def test_bad_input_size_and_seed() -> None:
    with pytest.raises(DataError, match="input_size"):
        load_dataset("digits", 4)
    with pytest.raises(DataError, match="seed"):
        load_dataset("digits", 32, seed=-1)


# ---------------------------------------------------------------------------------------------------------
# make_loader
# ---------------------------------------------------------------------------------------------------------


def _order(loader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def test_loader_order_is_fixed_by_seed() -> None:
    ds = TensorDataset(torch.arange(50))
    a, b = make_loader(ds, 8, shuffle=True, seed=3), make_loader(ds, 8, shuffle=True, seed=3)
    state = torch.get_rng_state()
    first_a, first_b = _order(a), _order(b)
    assert torch.equal(state, torch.get_rng_state())  # shuffling does not touch the global RNG
    assert first_a == first_b and sorted(first_a) == list(range(50)) and first_a != list(range(50))
    second_a, second_b = _order(a), _order(b)
    assert second_a == second_b and second_a != first_a  # reshuffled every pass, identically
    assert _order(make_loader(ds, 8, shuffle=True, seed=4)) != first_a
    assert _order(make_loader(ds, 8, shuffle=False)) == list(range(50))


def test_loader_drop_last_sampler_and_workers() -> None:
    ds = TensorDataset(torch.arange(50))
    assert len(make_loader(ds, 8, shuffle=True, drop_last=True)) == 6
    with pytest.raises(ValueError):
        make_loader(ds, 8, shuffle=True, sampler=range(10))
    assert _order(make_loader(ds, 8, shuffle=False, sampler=range(0, 50, 5))) == list(range(0, 50, 5))
    workers = make_loader(ds, 8, shuffle=True, seed=3, num_workers=2)
    assert _order(workers) == _order(make_loader(ds, 8, shuffle=True, seed=3))
    assert workers.persistent_workers is False


class _DeclaresHugeArray:
    """Pickles as ``numpy.ndarray(shape, uint8)``: a constructor call that allocates whatever it declares."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __reduce__(self):
        return (np.ndarray, (self.shape, "u1"))


def test_a_cifar_file_that_declares_more_than_it_holds_is_refused(tmp_path: Path) -> None:
    """A few kilobytes declaring 100,000 images (300 MB; the reported case declared 1.2 million): refused
    with one line naming the file, before anything is allocated or trained on."""
    import pickle

    from mixnas.data import load_dataset
    from mixnas.errors import DataError

    root = tmp_path / "cifar"
    root.mkdir()
    bomb = {b"data": _DeclaresHugeArray((100_000, 3072)), b"labels": [0] * 10}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps(bomb, protocol=2))
    assert (root / "data_batch_1").stat().st_size < 10_000
    with pytest.raises(DataError, match=r"data_batch_1: declares an array of shape \(100000, 3072\)") as info:
        load_dataset(f"cifar:{root}", 32)
    assert "\n" not in str(info.value)


def test_imagefolder_links_loops_fifos_count_each_image_once(tmp_path: Path) -> None:
    """A symlink loop inside a class folder (the reported case counted 4 images 40 times), a second link to
    the same folder, and a FIFO named like an image (it would block a loader forever)."""
    import os

    root = make_imagefolder(tmp_path / "tree")
    ant = root / "train" / "ant"
    (ant / "loop").symlink_to(ant)  # ant/loop/loop/loop/... is ant again
    (ant / "again").symlink_to(ant)
    (ant / "sub").mkdir()
    (ant / "sub" / "up").symlink_to(ant)
    os.mkfifo(ant / "pipe.png")
    b = load_dataset(f"imagefolder:{root}", 32)
    assert len(b.train) == 12  # 4 + 3 + 5, each once
    assert not any(p.endswith("pipe.png") for p, _ in b.train.samples)


def test_a_decompression_bomb_is_refused_with_one_line(tmp_path: Path) -> None:
    from mixnas.data.folders import load_rgb
    from mixnas.errors import DataError

    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(path)  # 400 M pixels in a small file: over twice PIL's limit
    assert path.stat().st_size < 1_000_000
    with pytest.raises(DataError, match="decompression bomb") as info:
        load_rgb(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
