"""Data sets as numpy arrays: Fashion-MNIST (IDX files), scikit-learn's 8x8 digits, NPZ.

Every loader returns ``(x, y)``: ``x`` float32 images shaped ``(N, C, H, W)`` with values in
[0, 1] (see ``NORMALISATION``), ``y`` int64 class labels. torch is not imported here except
inside ``to_tensor_dataset``, so the compiler and simulator can load data without torch.

>>> x, y = load_fashion_mnist(split="test")          # (10000, 1, 28, 28), (10000,)
>>> (xtr, ytr), (xte, yte) = load_splits("digits")     # 8x8 digits placed in 28x28
"""
import gzip
import importlib.util
import math
import numbers
import os
import zlib
from pathlib import Path

import numpy as np

from models.errors import DataError
from simulator.fileio import read_npz

#: Folder of Debian's ``dataset-fashion-mnist`` package.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: The one input normalisation used by loaders, training and the shipped model.
NORMALISATION = "x = pixel / 255 (float32 in [0, 1]); no mean or std shift"
_MISSING_HINT = "apt-get install dataset-fashion-mnist, or pass a folder of IDX files"
_IDX_PREFIX = {"train": "train", "test": "t10k"}
#: The names ``load`` takes for Fashion-MNIST.
FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist", "fmnist")


def _idx_stems(prefix: str) -> tuple[str, str]:
    """A split's image and label file names (before any ``.gz``)."""
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}


def normalise(images: np.ndarray, max_value: float = 255.0) -> np.ndarray:
    """Map raw pixels (0..``max_value``) to float32 in [0, 1]: the ``NORMALISATION``."""
    return (np.asarray(images, dtype=np.float32) / np.float32(max_value)).astype(np.float32)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip-compressed or raw) into an array of its stored shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing data file {path} ({_MISSING_HINT})")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"cannot read {path}: truncated or corrupt gzip ({e})") from e
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file: only {len(raw)} bytes")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file: wrong magic number {raw[:4].hex()}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header truncated or has {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = math.prod(dims) * dtype.itemsize     # Python ints: a crafted header cannot wrap
    if len(raw) - header != need:
        raise DataError(f"{path}: header says {dims} ({need} bytes of data), "
                        f"file holds {len(raw) - header} bytes (truncated?)")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    # Accept both the gzip files Debian ships and files a user has unpacked.
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"missing {folder / (stem + '.gz')} ({_MISSING_HINT})")


def load_idx_pair(folder: str | os.PathLike, split: str = "train",
                  limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` from an MNIST-style folder."""
    if split not in _IDX_PREFIX:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    check_limit(limit)
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"missing data folder {folder} ({_MISSING_HINT})")
    prefix = _IDX_PREFIX[split]
    images, labels = (read_idx(_idx_file(folder, stem)) for stem in _idx_stems(prefix))
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{folder}: expected 3-d images and 1-d labels, got "
                        f"{images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels ({split})")
    images, labels = images[:limit], labels[:limit]
    # the NPZ rules (uint8 pixels scaled by 1/255, other types already in [0, 1]); the
    # channel axis then added as a view, as this loader always has: torch picks its conv
    # kernels by strides, so the trained benchmark numbers depend on this layout
    images = _as_images(images[:, None], str(folder))[:, 0]
    return images[:, None], _as_labels(labels, str(folder))


def load_fashion_mnist(folder: str | os.PathLike | None = None, split: str = "train",
                       limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (Xiao et al. 2017, MIT licence): 60000 train / 10000 test 1x28x28.

    ``folder`` defaults to ``FASHION_MNIST_DIR``; ``limit`` keeps the first N examples.
    """
    return load_idx_pair(FASHION_MNIST_DIR if folder is None else folder, split, limit)


def digits_to_28(images: np.ndarray) -> np.ndarray:
    """Place 8x8 digit images in a 28x28 frame: each pixel becomes 3x3 (24x24), padded by 2.

    The frame is MNIST's size, so 28x28 models (LeNet-5) take them as is; the digit is
    larger than MNIST's (a 20x20 box with a 4-pixel margin).
    """
    big = images.repeat(3, axis=-1).repeat(3, axis=-2)
    pad = [(0, 0)] * (big.ndim - 2) + [(2, 2), (2, 2)]
    return np.pad(big, pad)


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits' 8x8 images (float64, 0..16) and labels, as scikit-learn loads them.

    Read straight from the CSV scikit-learn ships: importing it takes seconds, reading the
    file milliseconds.
    """
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec and spec.submodule_search_locations) or ():
        csv = Path(folder, "datasets", "data", "digits.csv.gz")
        if csv.is_file():   # scikit-learn's own parse: the last column is the label
            table = np.loadtxt(csv, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    try:  # a scikit-learn that keeps its data elsewhere
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:
        raise DataError("the digits data set comes with scikit-learn: pip install "
                        "scikit-learn (or 'xbarsim[torch]')") from e
    bunch = sk_digits()
    return bunch.images, bunch.target


def load_digits(split: str = "train", size: int = 28, test_fraction: float = 0.25,
                seed: int = 0, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images, pixel values 0..16).

    ``size`` 28 (default) upsamples to 28x28 with ``digits_to_28``; 8 keeps them 8x8. The
    train/test split is a fixed permutation from ``seed`` (test = ``test_fraction``).
    """
    if split not in _IDX_PREFIX:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    if size not in (8, 28):
        raise DataError(f"digits size must be 8 or 28, got {size}")
    # outside (0, 1) one split is empty, or (negative) train and test swap places
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) \
            or not 0 < test_fraction < 1:
        raise DataError(f"test_fraction = {test_fraction!r}: must be a number > 0 and < 1 "
                        f"(the share of the images held out for testing)")
    check_limit(limit)
    raw, target = _read_digits()
    images = normalise(raw, 16.0)
    if size == 28:
        images = digits_to_28(images)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = round(len(images) * test_fraction)
    if n_test in (0, len(images)):   # inside (0, 1) but it rounds to an empty split
        raise DataError(f"test_fraction = {test_fraction!r}: holds out {n_test} of the "
                        f"{len(images)} images, so the {'test' if n_test == 0 else 'train'} "
                        f"split is empty; allowed: at least one image in each split")
    idx = order[:n_test] if split == "test" else order[n_test:]
    idx = idx[:limit]
    return images[idx][:, None].astype(np.float32), target[idx].astype(np.int64)


def _as_images(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{where}: images must be (N,H,W) or (N,C,H,W), got shape {x.shape}")
    if 0 in x.shape[1:]:   # else a model option the user never gave was blamed (in_features)
        raise DataError(f"{where}: images have a zero-size dimension, shape {x.shape}")
    if x.dtype == np.uint8:
        return normalise(x)
    if np.issubdtype(x.dtype, np.integer) and x.size and (x.min() < 0 or x.max() > 1):
        # 0..255 in int64 was blamed as floats outside [0, 1]
        raise DataError(f"{where}: integer images must be uint8 0..255 (got {x.dtype}, range "
                        f"[{x.min()}, {x.max()}]), or 0/1, or floats in [0, 1]")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{where}: images have dtype {x.dtype}; need uint8, 0/1 integers or "
                        f"floats")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: {int((~np.isfinite(x)).sum())} image values are NaN/inf")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise DataError(f"{where}: float images must lie in [0, 1] ({NORMALISATION}), "
                        f"got range [{x.min():.3g}, {x.max():.3g}]")
    return x


def _as_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Class indices: one integer >= 0 per image (integral floats are accepted)."""
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be one class index per image, shape (N,); got "
                        f"{y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{where}: labels have dtype {y.dtype}; need integer class indices")
    # compared as Python numbers: 2**31 overflows a float16 label array's own type
    if y.size and (not np.isfinite(y).all() or (y != np.round(y)).any() or y.min() < 0
                   or float(y.max()) >= 2 ** 31):   # what int64 holds (uint64 2**64-1 wrapped)
        raise DataError(f"{where}: labels must be integer class indices in 0..2**31-1")
    return y.astype(np.int64)


def load_npz(path: str | os.PathLike, limit: int | None = None,
             keys: tuple[str, str] = ("x", "y")) -> tuple[np.ndarray, np.ndarray]:
    """Load images and labels from an ``.npz`` (arrays under ``keys``, default ``x``, ``y``).

    Images may be uint8 (scaled by 1/255) or float in [0, 1], shaped (N,H,W) or (N,C,H,W).
    """
    check_limit(limit)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    z = read_npz(path, DataError, keys)
    missing = [k for k in keys if k not in z]
    if missing:
        with np.load(path, allow_pickle=False) as names:   # read fine above: list them
            has = ", ".join(names.files) or "none"
        raise DataError(f"{path} lacks array(s) {', '.join(missing)}; it has {has}")
    x, y = z[keys[0]], z[keys[1]]
    if x.ndim == 0 or y.ndim == 0:
        raise DataError(f"{path}: images and labels must be arrays with one entry per image")
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    return _as_images(x[:limit], str(path)), _as_labels(y[:limit], str(path))


def check_limit(limit, name: str = "limit") -> None:
    """``limit`` (the caller's argument ``name``) is None (everything) or a count >= 1: a
    slice ``[:limit]`` with 0 or a negative number would silently drop examples from the end
    instead."""
    if limit is not None and (isinstance(limit, bool)
                              or not isinstance(limit, numbers.Integral) or limit < 1):
        raise DataError(f"{name} = {limit!r}: must be an integer >= 1 (or None: all)")


def load(spec: str | os.PathLike, split: str = "train",
         limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a data set named by ``spec``.

    ``spec`` is ``"fashion-mnist"`` (alias ``"fmnist"``), ``"digits"``, a folder of IDX
    files (MNIST naming), a folder with ``train.npz`` / ``test.npz``, or an ``.npz`` file
    with ``x_train, y_train, x_test, y_test``.
    """
    if split not in _IDX_PREFIX:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    check_limit(limit)
    name = str(spec)
    if name.lower() in FASHION_MNIST_NAMES:
        return load_fashion_mnist(split=split, limit=limit)
    if name.lower() == "digits":
        return load_digits(split, limit=limit)
    path = Path(spec)
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path, limit, keys=(f"x_{split}", f"y_{split}"))
    if path.is_dir() and (path / f"{split}.npz").is_file():
        return load_npz(path / f"{split}.npz", limit)
    other = "test" if split == "train" else "train"
    if path.is_dir() and (path / f"{other}.npz").is_file():
        raise DataError(f"{name}: holds {other}.npz but no {split}.npz; a folder of .npz "
                        f"data needs both")
    if path.is_dir():
        return load_idx_pair(path, split, limit)
    # a path-like name is a folder or file the user meant: say what is wrong with it
    if path.exists():
        what = f"{name!r}: not a data set"
    elif os.sep in str(name) or "." in str(name):
        what = f"{name!r}: no such file or folder"
    else:
        what = f"unknown data set {name!r}"
    raise DataError(f"{what}; use fashion-mnist, digits, a folder of IDX or train/test .npz "
                    f"files, or an .npz file")


def data_files(spec: str | os.PathLike) -> list[Path]:
    """Every file :func:`load` may read for ``spec`` (whether or not it exists): what an
    output path must not overwrite."""
    name = str(spec)
    if name.lower() in FASHION_MNIST_NAMES:
        path = FASHION_MNIST_DIR
    elif name.lower() == "digits":
        return []
    else:
        path = Path(spec)
    if path.suffix == ".npz" or not path.is_dir():
        return [path]
    stems = [stem for prefix in _IDX_PREFIX.values() for stem in _idx_stems(prefix)]
    return ([path / f"{split}.npz" for split in _IDX_PREFIX]
            + [path / n for stem in stems for n in (stem, f"{stem}.gz")])


#: Classes of the built-in data sets, whatever subset ``limit`` takes.
BUILTIN_CLASSES = {**dict.fromkeys(FASHION_MNIST_NAMES, 10), "digits": 10}


def num_classes(spec, *labels: np.ndarray) -> int:
    """Classes a model for ``spec`` needs: a built-in set's own count (a ``--limit`` subset
    may lack its last class), else one more than the largest label of ``labels``."""
    known = BUILTIN_CLASSES.get(str(spec).lower()) if isinstance(spec, (str, os.PathLike)) \
        else None
    seen = max((int(y.max()) + 1 for y in labels if len(y)), default=1)
    return max(known or 0, seen)


def load_splits(spec: str | os.PathLike, limit: int | None = None):
    """``((x_train, y_train), (x_test, y_test))`` for ``spec`` (see ``load``)."""
    train, test = load(spec, "train", limit), load(spec, "test", limit)
    check_same_image_size(train[0], test[0], str(spec))
    return train, test


def check_same_image_size(x_train: np.ndarray, x_test: np.ndarray, where: str) -> None:
    """Refuse splits whose images differ in size: a model fits only one."""
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{where}: training images are {x_train.shape[1:]} but test images "
                        f"{x_test.shape[1:]}; both splits need the same image size")


def to_tensor_dataset(x: np.ndarray, y: np.ndarray):
    """A ``torch.utils.data.TensorDataset`` over (float32 images, int64 labels)."""
    import torch
    from torch.utils.data import TensorDataset

    return TensorDataset(torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                         torch.from_numpy(np.ascontiguousarray(y, np.int64)))
