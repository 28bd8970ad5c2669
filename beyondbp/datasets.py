"""Data sets: MNIST, Fashion-MNIST and the bundled offline subset ``mnist_small``.

``load(name, split)`` reads the official IDX gzip files by their official names::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

Lookup order for ``"mnist"`` and ``"fashion_mnist"``: the ``data_dir`` argument,
then ``$BEYONDBP_DATA`` (a directory holding the four files, or a ``mnist/`` /
``fashion_mnist/`` folder of them), then the user cache
(``$XDG_CACHE_HOME/beyondbp/<name>``, by default ``~/.cache/beyondbp/<name>``).
A missing file is downloaded from the official mirrors into the cache, checked
against its published SHA-256, and only then renamed into place, so a failed or
corrupt download never replaces a good file. Offline, the error names the
files, the directories searched and how to provide them.

``"mnist_small"`` ships inside the package (10,000 training and 2,000 test
images: the first ones of the official files; CC BY-SA 3.0, see
``beyondbp/data/mnist_small/README.md``) and is the offline default.

:func:`batches` iterates over shuffled, fixed-size batches without copying the
whole set per epoch (one permutation of indices per epoch, one gather per batch).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib
import struct
import tempfile
import urllib.error
import urllib.request
from typing import Iterator

import numpy as np

__all__ = ["Dataset", "load", "batches", "DatasetError", "NAMES", "FILES", "SHA256",
           "num_batches"]

NAMES = ("mnist", "fashion_mnist", "mnist_small")
SPLITS = ("train", "test")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "71524e2cd1ad2968737f7f2f2ff69cbfc32df8ccddff51593f7cb2d4e0eb5b64",
        "train-labels-idx1-ubyte.gz": "fe03b8bd7915f70bf5aa08be480aa413fbd85afcaa58b35d230d335f284fd88e",
        "t10k-images-idx3-ubyte.gz": "5634745efa576a17e7d4cf5cd9d09123c75e6538e5114267c2d156edaf519341",
        "t10k-labels-idx1-ubyte.gz": "ae18e77e031ccde52407f794d123116439864147d33ac992975f85dd4dc42af6",
    },
    # Published with Keras' / Fashion-MNIST's loaders (the repository itself lists MD5s).
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
        "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
        "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
        "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
    },
    "mnist_small": {
        "train-images-idx3-ubyte.gz": "3ef602e995727b0a9aa7f5ddd860650f6d281e99ba21a746d1bfa6fea4a7f4d8",
        "train-labels-idx1-ubyte.gz": "dccde8b3c99723584f8090cef581b2e49d6be36b682abadf5a414714b48cf7ea",
        "t10k-images-idx3-ubyte.gz": "6b9d26425f202be9fb6f8c8e3e1c18ef12aaad9d9cf07dceb5642e92b606dcff",
        "t10k-labels-idx1-ubyte.gz": "fbda3910d72fe5a4b4a64d203dce35d20a17db3f85f193ba7fc7d1d91d441986",
    },
}
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
_COUNTS = {"mnist": {"train": 60000, "test": 10000},
           "fashion_mnist": {"train": 60000, "test": 10000},
           "mnist_small": {"train": 10000, "test": 2000}}
_BUNDLED = pathlib.Path(__file__).resolve().parent / "data" / "mnist_small"


class DatasetError(ValueError):
    """A data set could not be found, downloaded or parsed (a ``ValueError``)."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One split: ``images`` uint8 ``(N, 28, 28)``, ``labels`` uint8 ``(N,)``."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int = 10

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (*self.images.shape[1:], 1)


def _cache_dir(name: str) -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "beyondbp" / name


def _candidate_dirs(name: str, data_dir) -> list[pathlib.Path]:
    dirs = []
    if data_dir is not None:
        dirs.append(pathlib.Path(data_dir).expanduser())
    env = os.environ.get("BEYONDBP_DATA")
    if env:
        dirs += [pathlib.Path(env).expanduser() / name, pathlib.Path(env).expanduser()]
    dirs.append(_cache_dir(name))
    return dirs


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_idx(path: pathlib.Path, expect_ndim: int) -> np.ndarray:
    """Parse an IDX file (gzip or raw): magic 0x00000803 images, 0x00000801 labels."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises these on truncated/corrupt streams
        raise DatasetError(f"{path}: cannot be read as gzip ({e}); the file is truncated or "
                           "corrupt: delete it and download it again") from None
    if len(data) < 8:
        raise DatasetError(f"{path}: only {len(data)} bytes, too short for an IDX header; "
                           "the file is truncated: delete it and download it again")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expect_ndim:
        raise DatasetError(
            f"{path}: wrong magic number 0x{int.from_bytes(data[:4], 'big'):08x} (expected "
            f"0x{0x0800 + expect_ndim:08x}: unsigned bytes, {expect_ndim} dimension(s)); "
            "this is not the right IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says shape {dims} ({int(np.prod(dims))} bytes) but "
                           f"{body.size} bytes follow; the file is truncated: delete it and "
                           "download it again")
    return body.reshape(dims)


def _download(name: str, fname: str, dest_dir: pathlib.Path) -> pathlib.Path:
    """Download ``fname`` into ``dest_dir`` via a temporary file; verify SHA-256 first."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in MIRRORS[name]:
        url = mirror + fname
        fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", dir=dest_dir)
        os.close(fd)
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
            got = _sha256(pathlib.Path(tmp))
            if got != SHA256[name][fname]:
                errors.append(f"{url}: SHA-256 {got} != expected {SHA256[name][fname]}")
                continue
            final = dest_dir / fname
            os.replace(tmp, final)  # atomic: a good file is never half-overwritten
            return final
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            errors.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DatasetError("could not download " + fname + ": " + "; ".join(errors))


def _find(name: str, fname: str, data_dir, download: bool) -> pathlib.Path:
    if name == "mnist_small":
        return _BUNDLED / fname
    dirs = _candidate_dirs(name, data_dir)
    for d in dirs:
        p = d / fname
        if p.is_file():
            return p
    if download:
        try:
            return _download(name, fname, _cache_dir(name))
        except DatasetError as e:
            reason = str(e)
    else:
        reason = "download=False"
    raise DatasetError(
        f"{name}: file {fname} not found in {', '.join(str(d) for d in dirs)} and not "
        f"downloaded ({reason}). Put the official IDX files ({', '.join(SHA256[name])}) in a "
        "directory and pass data_dir=... (CLI: --data-dir) or set BEYONDBP_DATA, or use "
        "name='mnist_small' (bundled, offline)")


def load(name: str = "mnist_small", split: str = "train", *, data_dir=None,
         download: bool = True, verify: bool = True) -> Dataset:
    """Load one split of a data set as uint8 numpy arrays.

    Args:
      name: ``"mnist"``, ``"fashion_mnist"`` or ``"mnist_small"`` (bundled).
      split: ``"train"`` or ``"test"``.
      data_dir: directory holding the official ``*.gz`` IDX files (searched first).
      download: fetch missing files from the official mirrors into the user cache.
      verify: check each file's SHA-256 against the published value. Files in a
        user's own directory that are valid IDX but differ (e.g. decompressed or
        re-packed) pass with ``verify=False``.

    Returns:
      :class:`Dataset` with ``images`` ``(N, 28, 28)`` and ``labels`` ``(N,)``, uint8.
    """
    if name not in NAMES:
        raise DatasetError(f"unknown data set name={name!r}; use one of {NAMES}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split={split!r}; use 'train' or 'test'")
    arrays = []
    for fname, ndim in zip(FILES[split], (3, 1)):
        path = _find(name, fname, data_dir, download)
        if verify:
            got = _sha256(path)
            if got != SHA256[name][fname]:
                raise DatasetError(
                    f"{path}: SHA-256 {got} does not match the official {SHA256[name][fname]}; "
                    "the file is corrupt or not the official one: replace it (or pass "
                    "verify=False to accept your own copy)")
        arrays.append(_parse_idx(path, ndim))
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{name}/{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{name}/{split}: label {int(labels.max())} outside 0..9")
    return Dataset(name, split, images, labels)


def num_batches(n: int, batch_size: int, remainder: str = "drop") -> int:
    """Batches per epoch for ``n`` examples."""
    return n // batch_size if remainder == "drop" else -(-n // batch_size)


def batches(ds: Dataset, batch_size: int, *, seed: int = 0, epochs: int | None = 1,
            shuffle: bool = True, remainder: str = "drop", start: int = 0
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(x, y, mask)`` batches: x float32 ``(B, 28, 28, 1)`` in [0, 1], y int32 ``(B,)``.

    Every batch has exactly ``batch_size`` rows so a jitted step compiles once.
    Each epoch draws one permutation from ``seed`` and the epoch number
    (reproducible, independent of how many epochs ran before); only the indices
    are permuted, each batch gathers its own rows.

    Args:
      remainder: ``"drop"`` (default: the last ``N % batch_size`` examples of each
        shuffled epoch are skipped; they differ from epoch to epoch) or ``"pad"``
        (the last batch is filled by repeating its first rows; ``mask`` marks the
        real ones, so an evaluation counts every example exactly once).
      epochs: number of passes, or ``None`` for an endless stream.
      start: skip this many batches first (resuming a run at step ``start``
        yields exactly the batches the uninterrupted run would have seen).
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: need a positive integer")
    if remainder not in ("drop", "pad"):
        raise ValueError(f"remainder={remainder!r}: use 'drop' or 'pad'")
    n = len(ds)
    if n == 0:
        raise ValueError(f"data set {ds.name}/{ds.split} is empty")
    if remainder == "drop" and batch_size > n:
        raise ValueError(f"batch_size={batch_size} is larger than the {n} examples of "
                         f"{ds.name}/{ds.split}; use a smaller batch or remainder='pad'")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs={epochs!r}: need a positive integer or None")
    if not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start={start!r}: need a non-negative integer")
    per_epoch = num_batches(n, batch_size, remainder)
    epoch, first = divmod(int(start), per_epoch)
    while epochs is None or epoch < epochs:
        order = (np.random.default_rng([seed, epoch]).permutation(n) if shuffle
                 else np.arange(n))
        for b in range(first, per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            mask = np.ones(batch_size, dtype=bool)
            if idx.size < batch_size:
                mask[idx.size:] = False
                idx = np.resize(idx, batch_size)
            x = ds.images[idx].astype(np.float32)[..., None] * np.float32(1 / 255)
            yield x, ds.labels[idx].astype(np.int32), mask
        epoch, first = epoch + 1, 0
