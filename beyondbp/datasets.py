"""Data sets: MNIST, Fashion-MNIST, the bundled subset ``mnist_small``, and any IDX data set.

``load(name, split)`` reads the four IDX files by MNIST's official names::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

(each may also be stored uncompressed, without ``.gz``).

Lookup order for ``"mnist"``, ``"fashion_mnist"`` and ``"idx"``: the ``data_dir`` argument,
then ``$BEYONDBP_DATA`` (a directory holding the four files, or a ``<name>/`` folder of them),
then, for the named sets, the user cache (``$XDG_CACHE_HOME/beyondbp/<name>``, by default
``~/.cache/beyondbp/<name>``). A missing file of a named set is downloaded from the official
mirrors into the cache, checked against the published SHA-256 of the *compressed* file, and only
then renamed into place, so a failed or corrupt download never replaces a good file. Offline, the
error names the files, the directories searched and how to provide them.

Verification of a file already on disk uses the SHA-256 of its *decompressed* IDX content
(:data:`CONTENT_SHA256`): that digest does not depend on how the file was compressed, so the
official data re-compressed by a Linux distribution (or stored uncompressed) is accepted as
what it is, while any change to the images or labels is refused.

``"idx"`` is any data set in MNIST's layout (EMNIST, KMNIST, a user's own): the number of
classes comes from the training labels (which must use every class ``0..C-1``), the image shape
from the IDX header (``(N, H, W)`` or ``(N, H, W, C)``, any size), and both splits must agree on
it. It is validated as strictly as MNIST, but there is no published digest to check.

``"mnist_small"`` ships inside the package (10,000 training and 2,000 test images: the first
ones of the official files; CC BY-SA 3.0, see ``beyondbp/data/mnist_small/README.md``) and is
the offline default.

:func:`batches` iterates over shuffled, fixed-size batches without copying the whole set per
epoch (one permutation of indices per epoch, one gather per batch).
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
from collections.abc import Iterator

import numpy as np

__all__ = [
    "Dataset",
    "load",
    "batches",
    "DatasetError",
    "NAMES",
    "FILES",
    "SHA256",
    "CONTENT_SHA256",
    "num_batches",
    "write_idx",
]

#: The data sets :func:`load` knows.
NAMES = ("mnist", "fashion_mnist", "mnist_small", "idx")
SPLITS = ("train", "test")
#: The official IDX file names of each split: (images, labels).
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: SHA-256 of the compressed files as the official mirrors serve them: checked on download.
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
}
#: SHA-256 of the decompressed IDX content (``zcat FILE | sha256sum``): checked on every load, so a
#: re-compressed or uncompressed copy of the official data passes and altered data does not.
CONTENT_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    "mnist_small": {
        "train-images-idx3-ubyte.gz": "2889698e6bc3614913e76901316712919d1998fc2b44512451bfe65bc1e668b1",
        "train-labels-idx1-ubyte.gz": "651e38e2ac0632f5113ec18f1df4977117f953197819034009971a6675a0df78",
        "t10k-images-idx3-ubyte.gz": "3f6bd66dee48df299584c67669bceee490faa25f931496bd7473b42106d7daed",
        "t10k-labels-idx1-ubyte.gz": "7b098e5f6a3065807cebeabf36fb1724a8aff19f2673ac08b4923e0e8c715bce",
    },
}
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
_BUNDLED = pathlib.Path(__file__).resolve().parent / "data" / "mnist_small"
_IMAGE_MAGIC = {0x0803: 3, 0x0804: 4}  # unsigned bytes: (N, H, W) or (N, H, W, C)
_LABEL_MAGIC = 0x0801


class DatasetError(ValueError):
    """A data set could not be found, downloaded or parsed (a ``ValueError``)."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One split: ``images`` uint8 ``(N, H, W)`` or ``(N, H, W, C)``, ``labels`` uint8 ``(N,)``."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int = 10

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example as the models see it: ``(H, W, C)`` (C = 1 for IDX3 images)."""
        return (
            tuple(self.images.shape[1:]) if self.images.ndim == 4 else (*self.images.shape[1:], 1)
        )


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
    if name in MIRRORS:
        dirs.append(_cache_dir(name))
    return dirs


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(path: pathlib.Path, size: int = -1) -> bytes:
    """The decompressed bytes of an IDX file (gzip by content, not by suffix); the first
    ``size`` of them when ``size`` >= 0."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rb") as f:
            return f.read(size)
    except (OSError, EOFError) as e:  # gzip raises these on truncated/corrupt streams
        raise DatasetError(
            f"{path}: cannot be read ({e}); the file is truncated or corrupt: "
            "replace it with a good copy"
        ) from None


def _parse_idx(path: pathlib.Path, data: bytes, magics: dict[int, int]) -> np.ndarray:
    """Parse IDX bytes: a 4-byte magic (0x0000, type 0x08 = uint8, ndim), ndim big-endian sizes."""
    if len(data) < 8:
        raise DatasetError(
            f"{path}: only {len(data)} bytes, too short for an IDX header; "
            "the file is truncated: replace it with a good copy"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic not in magics:
        want = " or ".join(f"0x{m:08x}" for m in magics)
        raise DatasetError(
            f"{path}: wrong magic number 0x{magic:08x} (expected {want}: unsigned "
            "bytes); this is not the right IDX file (images and labels swapped?)"
        )
    ndim = magics[magic]
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: header cut short; the file is truncated")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(
            f"{path}: header says shape {dims} ({int(np.prod(dims))} bytes) but "
            f"{body.size} bytes follow; the file is truncated or padded: replace "
            "it with a good copy"
        )
    return body.reshape(dims)


def _image_header(path: pathlib.Path) -> tuple[int, ...]:
    """The per-image shape from an IDX image header, reading only the first bytes."""
    head = _read(path, 20)
    magic = int.from_bytes(head[:4], "big") if len(head) >= 4 else -1
    if magic not in _IMAGE_MAGIC or len(head) < 4 + 4 * _IMAGE_MAGIC[magic]:
        raise DatasetError(f"{path}: not an IDX image file (magic 0x{max(magic, 0):08x})")
    nd = _IMAGE_MAGIC[magic]
    return struct.unpack(">" + "I" * nd, head[4 : 4 + 4 * nd])[1:]


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
        for cand in (d / fname, d / fname.removesuffix(".gz")):
            if cand.is_file():
                return cand
    if name == "idx":
        where = (
            ", ".join(str(d) for d in dirs) or "nowhere (no data_dir given, BEYONDBP_DATA unset)"
        )
        raise DatasetError(
            f"idx: file {fname} (or {fname.removesuffix('.gz')}) not found in {where}. Put the "
            f"four IDX files ({', '.join(FILES['train'] + FILES['test'])}) in a directory and "
            "pass data_dir=... (CLI: --data-dir) or set BEYONDBP_DATA"
        )
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
        "name='mnist_small' (bundled, offline)"
    )


def _read_verified(name: str, fname: str, path: pathlib.Path, verify: bool) -> bytes:
    data = _read(path)
    want = CONTENT_SHA256.get(name, {}).get(fname)
    if verify and want is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise DatasetError(
                f"{path}: the SHA-256 of its decompressed content, {got}, does not match the "
                f"official {want}; the file is corrupt or not the official {name} data: replace it (or "
                "accept your own copy with verify=False, CLI --no-verify)"
            )
    return data


def _num_classes(labels: np.ndarray, path: pathlib.Path) -> int:
    """Classes ``0..C-1`` with ``C = max + 1``; every class must occur (else labels skip one)."""
    if labels.size == 0:
        raise DatasetError(f"{path}: holds no labels")
    c = int(labels.max()) + 1
    missing = np.setdiff1d(np.arange(c), labels)
    if missing.size:
        raise DatasetError(
            f"{path}: labels skip class(es) {missing[:10].tolist()} of 0..{c - 1}; labels must be "
            "0..C-1 with every class present in the training split (relabel your data)"
        )
    return c


def load(
    name: str = "mnist_small",
    split: str = "train",
    *,
    data_dir=None,
    download: bool = True,
    verify: bool = True,
) -> Dataset:
    """Load one split of a data set as uint8 numpy arrays.

    Args:
      name: ``"mnist"``, ``"fashion_mnist"``, ``"mnist_small"`` (bundled) or ``"idx"`` (any data
        set in MNIST's file layout, from ``data_dir`` or ``$BEYONDBP_DATA``; never downloaded).
      split: ``"train"`` or ``"test"``.
      data_dir: directory holding the four IDX files, ``.gz`` or not (searched first).
      download: fetch missing files of a named set from the official mirrors into the user cache.
      verify: check each named set's decompressed content against its official SHA-256
        (:data:`CONTENT_SHA256`); ``False`` accepts a user's own variant (still parsed strictly).

    Returns:
      :class:`Dataset` with ``images`` ``(N, H, W[, C])`` and ``labels`` ``(N,)``, uint8, and
      ``num_classes`` (10 for the named sets; from the training labels for ``"idx"``).

    Raises:
      DatasetError: a missing, truncated, corrupt or mismatched file, with the file's path and
        what to do. Nothing on disk is ever modified by loading.
    """
    if name not in NAMES:
        raise DatasetError(f"unknown data set name={name!r}; use one of {NAMES}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split={split!r}; use 'train' or 'test'")
    (img_name, lab_name) = FILES[split]
    img_path = _find(name, img_name, data_dir, download)
    lab_path = _find(name, lab_name, data_dir, download)
    images = _parse_idx(img_path, _read_verified(name, img_name, img_path, verify), _IMAGE_MAGIC)
    labels = _parse_idx(
        lab_path, _read_verified(name, lab_name, lab_path, verify), {_LABEL_MAGIC: 1}
    )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{name}/{split}: {img_path} holds {images.shape[0]} images but "
            f"{lab_path} holds {labels.shape[0]} labels; the two files must pair up"
        )
    if name != "idx":
        if labels.size and int(labels.max()) >= 10:
            raise DatasetError(f"{lab_path}: label {int(labels.max())} outside {name}'s 0..9")
        return Dataset(name, split, images, labels, num_classes=10)
    return Dataset(
        name,
        split,
        images,
        labels,
        num_classes=_check_idx_splits(split, images, labels, img_path, lab_path, data_dir),
    )


def _check_idx_splits(split, images, labels, img_path, lab_path, data_dir) -> int:
    """An ``"idx"`` set's class count (from the training labels) after checking both splits agree."""
    if split == "train":
        num_classes = _num_classes(labels, lab_path)
    else:  # the class count is the training split's: a small test split may lack a rare class
        train_labels = _find("idx", FILES["train"][1], data_dir, False)
        num_classes = _num_classes(
            _parse_idx(train_labels, _read(train_labels), {_LABEL_MAGIC: 1}), train_labels
        )
        if labels.size and int(labels.max()) >= num_classes:
            raise DatasetError(
                f"{lab_path}: label {int(labels.max())} is outside the training "
                f"split's classes 0..{num_classes - 1}"
            )
    other = _find("idx", FILES["test" if split == "train" else "train"][0], data_dir, False)
    other_shape = _image_header(other)
    if other_shape != images.shape[1:]:
        raise DatasetError(
            f"idx: images in {img_path} are {images.shape[1:]} but in {other} "
            f"{other_shape}; both splits must have one image shape"
        )
    return num_classes


def write_idx(path, array: np.ndarray) -> pathlib.Path:
    """Write a uint8 array as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

    The file is written to a temporary name and renamed into place, and an existing file is
    never replaced: a user turning their own data into ``datasets.load("idx", ...)`` input cannot
    clobber a good copy by accident.

    Args:
      path: destination, e.g. ``DIR / "train-images-idx3-ubyte.gz"``.
      array: uint8, ``(N,)`` labels or ``(N, H, W)`` / ``(N, H, W, C)`` images.
    """
    path = pathlib.Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 4:
        raise DatasetError(
            f"write_idx: need a uint8 array of 1 to 4 dimensions, got {array.dtype} {array.shape}"
        )
    if path.exists():
        raise DatasetError(f"{path} exists; write_idx never overwrites a file: remove it first")
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
        os.link(tmp, path)  # fails if ``path`` appeared meanwhile: never replaces a file
    except FileExistsError:
        raise DatasetError(f"{path} exists; write_idx never overwrites a file") from None
    finally:
        os.remove(tmp)
    return path


def num_batches(n: int, batch_size: int, remainder: str = "drop") -> int:
    """Batches per epoch for ``n`` examples."""
    return n // batch_size if remainder == "drop" else -(-n // batch_size)


def batches(
    ds: Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    epochs: int | None = 1,
    shuffle: bool = True,
    remainder: str = "drop",
    start: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(x, y, mask)`` batches: x float32 ``(B, *ds.input_shape)`` in [0, 1], y int32 ``(B,)``.

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
        raise ValueError(
            f"batch_size={batch_size} is larger than the {n} examples of "
            f"{ds.name}/{ds.split}; use a smaller batch or remainder='pad'"
        )
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs={epochs!r}: need a positive integer or None")
    if not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start={start!r}: need a non-negative integer")
    per_epoch = num_batches(n, batch_size, remainder)
    epoch, first = divmod(int(start), per_epoch)
    while epochs is None or epoch < epochs:
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        for b in range(first, per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            mask = np.ones(batch_size, dtype=bool)
            if idx.size < batch_size:
                mask[idx.size :] = False
                idx = np.resize(idx, batch_size)
            x = ds.images[idx].astype(np.float32).reshape(-1, *ds.input_shape) * np.float32(1 / 255)
            yield x, ds.labels[idx].astype(np.int32), mask
        epoch, first = epoch + 1, 0
