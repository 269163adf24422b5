"""Data loaders: real Fashion-MNIST files, clear one-line errors for broken files, NPZ, digits."""
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import data
from models.errors import DataError, ModelError

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def write_idx(path: Path, array: np.ndarray, gz: bool = True, magic: bytes | None = None):
    """Write ``array`` (uint8) as an IDX file, optionally gzip-compressed."""
    header = magic or bytes([0, 0, 0x08, array.ndim])
    raw = header + np.asarray(array.shape, ">u4").tobytes() + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def make_folder(folder: Path, n_images=5, n_labels=5, gz=True, split="t10k"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{split}-images-idx3-ubyte{suffix}",
              rng.integers(0, 256, (n_images, 28, 28)), gz)
    write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n_labels), gz)
    return folder


@needs_fmnist
@pytest.mark.parametrize(("split", "n"), [("train", 60000), ("test", 10000)])
def test_fashion_mnist_real_files(split, n):
    x, y = data.load_fashion_mnist(split=split)
    assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


@needs_fmnist
def test_fashion_mnist_limit_and_spec():
    x, y = data.load("fmnist", "test", limit=7)
    assert x.shape == (7, 1, 28, 28) and len(y) == 7


def test_missing_folder_and_file_say_how_to_get_the_data(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as e:
        data.load_fashion_mnist(tmp_path / "nowhere")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*apt-get install"):
        data.load_idx_pair(tmp_path, "test")


def test_truncated_gzip(tmp_path):
    make_folder(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="truncated"):
        data.load_idx_pair(tmp_path, "test")


def test_truncated_raw_data(tmp_path):
    make_folder(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        data.load_idx_pair(tmp_path, "test")


def test_wrong_magic_number(tmp_path):
    make_folder(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5), magic=b"\x1f\x8b\x08\x01")
    with pytest.raises(DataError, match="wrong magic number 1f8b0801"):
        data.load_idx_pair(tmp_path, "test")


def test_empty_file(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DataError, match="only 0 bytes"):
        data.read_idx(tmp_path / "empty")


def test_count_mismatch(tmp_path):
    make_folder(tmp_path, n_images=5, n_labels=4)
    with pytest.raises(DataError, match="5 images but 4 labels"):
        data.load_idx_pair(tmp_path, "test")


def test_raw_idx_equals_gzip(tmp_path):
    gz = make_folder(tmp_path / "gz")
    raw = make_folder(tmp_path / "raw", gz=False)
    for a, b in zip(data.load(gz, "test"), data.load(raw, "test"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_npz_loaders(tmp_path):
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(tmp_path / "train.npz", x=x, y=np.array([1, 2]))
    np.savez(tmp_path / "test.npz", x=x[:1].astype(np.float32) / 255, y=np.array([3]))
    xs, ys = data.load(tmp_path, "train")
    assert xs.shape == (2, 1, 4, 4) and xs.dtype == np.float32 and ys.dtype == np.int64
    np.testing.assert_allclose(xs[0, 0], x[0] / 255)
    (_, _), (xt, yt) = data.load_splits(tmp_path)
    assert xt.shape == (1, 1, 4, 4) and yt.tolist() == [3]

    np.savez(tmp_path / "all.npz", x_train=x, y_train=[0, 1], x_test=x, y_test=[1, 0])
    assert data.load(tmp_path / "all.npz", "test")[1].tolist() == [1, 0]
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(DataError, match="lacks array"):
        data.load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "range.npz", x=x.astype(np.float32), y=[0, 1])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        data.load_npz(tmp_path / "range.npz")


def test_integer_images_of_zeros_and_ones_are_read(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.eye(4, dtype=np.int64)[None].repeat(2, 0),
             y=np.array([0, 1]))
    x, _ = data.load_npz(tmp_path / "d.npz")
    assert x.dtype == np.float32 and x.max() == 1.0


@pytest.mark.parametrize("x,y,match", [
    (np.zeros((2, 4, 4), np.uint8), np.array([0, -1]), "class indices in 0..2"),
    (np.zeros((2, 4, 4), np.uint8), np.array([0, 1e30]), "class indices in 0..2"),
    (np.zeros((2, 4, 4), np.uint8), np.array([0, 2 ** 64 - 1], np.uint64), "class indices in 0..2"),
    (np.zeros((2, 4, 4), np.uint8), np.array([0.5, 1.0]), "class indices in 0..2"),
    (np.zeros((2, 4, 4), np.uint8), np.zeros((2, 1), np.int64), r"shape \(N,\)"),
    (np.zeros((2, 4, 4), np.uint8), np.array(["a", "b"]), "dtype <U1"),
    (np.full((2, 4, 4), np.nan, np.float32), np.array([0, 1]), "32 image values are NaN"),
    (np.zeros((2, 4, 4), np.uint8), np.array(3), "one entry per image"),
    # a model option the user never gave was blamed; integer pixels as floats outside [0, 1]
    (np.zeros((2, 0, 4), np.uint8), np.array([0, 1]), "zero-size dimension"),
    (np.full((2, 4, 4), 255, np.int64), np.array([0, 1]),
     r"integer images must be uint8 0..255 \(got int64, range \[255, 255\]\)"),
])
def test_unusable_labels_and_images_are_named(tmp_path, x, y, match):
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=match):
        data.load_npz(tmp_path / "d.npz")


def test_splits_of_different_image_sizes_are_refused(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros((2, 4, 4), np.uint8), y=[0, 1])
    np.savez(tmp_path / "test.npz", x=np.zeros((2, 5, 5), np.uint8), y=[0, 1])
    with pytest.raises(DataError, match=r"training images are \(1, 4, 4\) but test"):
        data.load_splits(tmp_path)
    (tmp_path / "test.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="test.npz: not a readable .npz"):
        data.load_splits(tmp_path)

def test_unknown_spec_and_split(tmp_path):
    with pytest.raises(DataError, match="nothing-here': no such file or folder; use"):
        data.load(tmp_path / "nothing-here")
    with pytest.raises(DataError, match="unknown data set 'mnist'; use fashion-mnist"):
        data.load("mnist")
    (tmp_path / "d.csv").write_text("1,2\n")       # there, but not a data set
    with pytest.raises(DataError, match="d.csv': not a data set; use"):
        data.load(tmp_path / "d.csv")
    with pytest.raises(DataError, match="split"):
        data.load("digits", "validation")


def test_digits():
    (xtr, ytr), (xte, _) = data.load_splits("digits")
    assert xtr.shape[1:] == (1, 28, 28) and xtr.dtype == np.float32
    assert len(xtr) + len(xte) == 1797 and ytr.dtype == np.int64
    assert 0.0 <= xtr.min() and xtr.max() <= 1.0
    assert xtr[:, :, :2].max() == 0 and xtr[:, :, -2:].max() == 0  # 2-pixel frame
    x8, _ = data.load_digits("test", size=8)
    np.testing.assert_array_equal(data.digits_to_28(x8), xte)


def test_exception_family():
    assert issubclass(DataError, ModelError) and issubclass(DataError, ValueError)


def test_numpy_paths_do_not_import_torch():
    code = ("import sys, models, models.data, models.cli; models.data.load_digits(); "
            "models.pretrained_path(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_tensor_dataset():
    pytest.importorskip("torch")
    ds = data.to_tensor_dataset(*data.load_digits("test", limit=3))
    x, y = ds[0]
    assert tuple(x.shape) == (1, 28, 28) and str(y.dtype) == "torch.int64"


def test_idx_of_floats_is_not_divided_by_255_and_labels_are_checked(tmp_path):
    """Only uint8 pixels are scaled by 1/255 (the NPZ rules): float IDX images must already
    lie in [0, 1], and IDX labels must be class indices."""
    def idx(path, array, code):
        a = np.asarray(array)
        header = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
        path.write_bytes(header + a.astype({0x0D: ">f4", 0x08: np.uint8}[code]).tobytes())
    folder = tmp_path / "f"
    folder.mkdir()
    idx(folder / "t10k-images-idx3-ubyte", np.full((3, 4, 4), 0.5), 0x0D)
    idx(folder / "t10k-labels-idx1-ubyte", [0, 1, 2], 0x08)
    x, y = data.load_idx_pair(folder, "test")
    assert np.all(x == 0.5) and list(y) == [0, 1, 2]
    # the channel axis is a view (stride 0), as before: torch's conv kernels, and so the
    # benchmarks' trained numbers, depend on the strides
    assert x.shape == (3, 1, 4, 4) and x.strides[1] == 0
    idx(folder / "t10k-labels-idx1-ubyte", [0.0, 3.7, 1.0], 0x0D)
    with pytest.raises(DataError, match="labels must be integer class indices"):
        data.load_idx_pair(folder, "test")
    idx(folder / "t10k-images-idx3-ubyte", np.full((3, 4, 4), 7.0), 0x0D)
    with pytest.raises(DataError, match=r"float images must lie in \[0, 1\]"):
        data.load_idx_pair(folder, "test")


def test_idx_header_whose_size_overflows_int64_is_a_data_error(tmp_path):
    p = tmp_path / "big"
    p.write_bytes(bytes([0, 0, 0x08, 4]) + np.full(4, 65536, ">u4").tobytes())
    with pytest.raises(DataError, match="header says"):
        data.read_idx(p)


def test_class_count_of_a_limited_builtin_set_is_the_sets():
    """--limit 4 on digits saw labels 0..6 and built 7-output models (a 10-class state dict
    then failed to load with advice to pass --arch)."""
    import numpy as np

    from models.data import num_classes
    few = np.array([0, 6, 3, 1])
    assert num_classes("digits", few) == num_classes("Fashion-MNIST", few) == 10
    assert num_classes("my_data.npz", few, np.array([2])) == 7   # other data: its labels
    assert num_classes("digits", np.array([12])) == 13            # never fewer than seen


def test_float16_labels_load_without_an_overflow_warning(tmp_path):
    """Integral float16 labels are valid; checking them against 2**31 in their own type
    overflowed and printed a RuntimeWarning."""
    import warnings
    np.savez(tmp_path / "f16.npz", x=np.zeros((4, 8, 8), np.uint8),
             y=np.array([0, 1, 2, 3], np.float16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, y = data.load_npz(tmp_path / "f16.npz")
    assert y.tolist() == [0, 1, 2, 3] and y.dtype == np.int64


@pytest.mark.parametrize("limit", [0, -1])
def test_every_public_loader_refuses_a_limit_below_one(tmp_path, limit):
    """Each loader sliced ``[:limit]``: 0 gave no images, -1 silently dropped the last."""
    from models.demo import load_demo_images
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4, 4), np.uint8), y=[0, 1, 2])
    make_folder(tmp_path / "idx", split="train")
    loaders = [(lambda: data.load_npz(tmp_path / "d.npz", limit), "limit"),
               (lambda: data.load_digits(limit=limit), "limit"),
               (lambda: data.load_idx_pair(tmp_path / "idx", "train", limit), "limit"),
               (lambda: data.load_fashion_mnist(tmp_path / "idx", "train", limit), "limit"),
               (lambda: load_demo_images(limit), "n")]    # named as its own argument
    for load, name in loaders:
        with pytest.raises(DataError, match=f"^{name} = {limit}: must be an integer >= 1"):
            load()


@pytest.mark.parametrize("fraction", [-0.2, 0, 1, 1.5, True, "0.2"])
def test_a_digits_test_fraction_outside_zero_to_one_is_refused(fraction):
    """-0.2 swapped the splits, 0 left the test split empty and 1.5 the train split."""
    with pytest.raises(DataError, match=r"^test_fraction = .*: must be a number > 0 and < 1"):
        data.load_digits("test", size=8, test_fraction=fraction)


@pytest.mark.parametrize("fraction,empty", [(0.0002, r"holds out 0 of the 1797 images, so "
                                                     r"the test split is empty"),
                                            (0.9998, r"holds out 1797 of the 1797 images, "
                                                     r"so the train split is empty")])
def test_a_digits_test_fraction_that_rounds_to_an_empty_split_is_refused(fraction, empty):
    with pytest.raises(DataError, match=rf"^test_fraction = {fraction}: {empty}; allowed: "):
        data.load_digits("train", size=8, test_fraction=fraction)


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch):
    # only the [test]/[all] extras installed it; a bare import failed with a traceback
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match=r"digits data set comes with scikit-learn: pip install"):
        data.load("digits", "test")


def test_digits_are_read_without_importing_scikit_learn():
    """Importing scikit-learn to read its one small CSV took seconds of every digits run."""
    code = ("import sys, models.data; models.data.load_digits(); "
            "assert 'sklearn' not in sys.modules, 'sklearn imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_digits_read_from_the_csv_equal_scikit_learns_bit_for_bit(monkeypatch):
    """The trained numbers depend on the exact arrays, their dtype and strides included."""
    sk_datasets = pytest.importorskip("sklearn.datasets")
    images, target = data._read_digits()
    bunch = sk_datasets.load_digits()
    for ours, theirs in ((images, bunch.images), (target, bunch.target)):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
    fast = [data.load_digits(split, size) for split in ("train", "test") for size in (8, 28)]
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)  # no CSV found
    slow = [data.load_digits(split, size) for split in ("train", "test") for size in (8, 28)]
    for ours, theirs in zip(sum(fast, ()), sum(slow, ())):
        assert (ours.dtype, ours.shape, ours.strides) == (theirs.dtype, theirs.shape,
                                                          theirs.strides)
        assert ours.tobytes() == theirs.tobytes()
