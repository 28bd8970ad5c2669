"""beyondbp.datasets: loading, lookup order, integrity checks, the batch iterator."""

from __future__ import annotations

import gzip
import io
import shutil
import urllib.error

import numpy as np
import pytest

from beyondbp import datasets
from beyondbp.datasets import DatasetError


def _raw_idx(path):
    """Independent reference parser: header fields read by hand, no shared code."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data[4 + 4 * ndim :], np.uint8).reshape(dims)


def test_full_mnist_matches_files(mnist_dir):
    tr = datasets.load("mnist", "train", data_dir=mnist_dir)
    te = datasets.load("mnist", "test", data_dir=mnist_dir)
    assert tr.images.shape == (60000, 28, 28) and tr.images.dtype == np.uint8
    assert te.images.shape == (10000, 28, 28) and te.labels.shape == (10000,)
    assert set(np.unique(tr.labels)) == set(range(10))
    np.testing.assert_array_equal(tr.labels, _raw_idx(mnist_dir / "train-labels-idx1-ubyte.gz"))
    np.testing.assert_array_equal(te.images, _raw_idx(mnist_dir / "t10k-images-idx3-ubyte.gz"))


def test_bundled_subset_is_offline_default_and_a_prefix_of_mnist(mnist_dir):
    tr, te = datasets.load(), datasets.load(split="test")
    assert (tr.name, tr.images.shape, te.images.shape) == (
        "mnist_small",
        (10000, 28, 28),
        (2000, 28, 28),
    )
    full = datasets.load("mnist", "train", data_dir=mnist_dir)
    np.testing.assert_array_equal(tr.images, full.images[:10000])
    np.testing.assert_array_equal(tr.labels, full.labels[:10000])


def test_bundled_subset_has_all_classes():
    tr = datasets.load("mnist_small", "train")
    counts = np.bincount(tr.labels, minlength=10)
    assert counts.min() > 800 and counts.sum() == 10000


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "cifar10"}, "unknown data set name='cifar10'"),
        ({"name": "mnist", "split": "validation"}, "unknown split='validation'"),
    ],
)
def test_bad_names(kwargs, match):
    with pytest.raises(DatasetError, match=match):
        datasets.load(**kwargs)


def test_env_var_lookup(mnist_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("BEYONDBP_DATA", str(mnist_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert len(datasets.load("mnist", "test", download=False)) == 10000


def test_argument_wins_over_env(mnist_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("BEYONDBP_DATA", str(tmp_path / "nothing-here"))
    assert len(datasets.load("mnist", "test", data_dir=mnist_dir, download=False)) == 10000


def test_missing_files_offline_error_names_files_and_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BEYONDBP_DATA", raising=False)
    with pytest.raises(DatasetError) as e:
        datasets.load("fashion_mnist", "train", data_dir=tmp_path / "mine", download=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "mine") in msg
    assert "data_dir" in msg and "BEYONDBP_DATA" in msg


def _fake_urlopen(payload_by_name):
    def urlopen(url, timeout=None):
        name = url.rsplit("/", 1)[-1]
        if name not in payload_by_name:
            raise urllib.error.URLError("offline (test)")
        return io.BytesIO(payload_by_name[name])

    return urlopen


def test_download_verifies_checksum_and_installs_atomically(mnist_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("BEYONDBP_DATA", raising=False)
    payload = {n: (mnist_dir / n).read_bytes() for n in datasets.FILES["test"]}
    monkeypatch.setattr(datasets.urllib.request, "urlopen", _fake_urlopen(payload))
    ds = datasets.load("mnist", "test")
    assert len(ds) == 10000
    cache = tmp_path / "beyondbp" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(datasets.FILES["test"])


def test_corrupt_download_is_rejected_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("BEYONDBP_DATA", raising=False)
    payload = {n: b"not the real file" for n in datasets.FILES["test"]}
    monkeypatch.setattr(datasets.urllib.request, "urlopen", _fake_urlopen(payload))
    with pytest.raises(DatasetError, match="SHA-256"):
        datasets.load("mnist", "test")
    assert list((tmp_path / "beyondbp" / "mnist").iterdir()) == []


def test_offline_download_failure_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("BEYONDBP_DATA", raising=False)
    monkeypatch.setattr(datasets.urllib.request, "urlopen", _fake_urlopen({}))
    with pytest.raises(DatasetError, match=r"not found in .* and not downloaded"):
        datasets.load("mnist", "train")


def _copy_set(src, dst, split="test"):
    dst.mkdir()
    for n in datasets.FILES[split]:
        shutil.copy(src / n, dst / n)
    return dst


def test_checksum_mismatch_is_an_error_and_file_is_kept(mnist_dir, tmp_path):
    d = _copy_set(mnist_dir, tmp_path / "d")
    img = d / "t10k-images-idx3-ubyte.gz"
    data = bytearray(gzip.decompress(img.read_bytes()))
    data[1000] ^= 0xFF  # valid gzip and IDX, wrong content
    img.write_bytes(gzip.compress(bytes(data)))
    before = img.read_bytes()
    with pytest.raises(DatasetError, match="does not match the official"):
        datasets.load("mnist", "test", data_dir=d, download=False)
    assert img.read_bytes() == before
    # a user's own re-packed copy is accepted on request
    assert len(datasets.load("mnist", "test", data_dir=d, verify=False)) == 10000


def test_truncated_file(mnist_dir, tmp_path):
    d = _copy_set(mnist_dir, tmp_path / "d")
    img = d / "t10k-images-idx3-ubyte.gz"
    img.write_bytes(img.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        datasets.load("mnist", "test", data_dir=d, verify=False)


def test_truncated_payload_with_valid_gzip(mnist_dir, tmp_path):
    d = _copy_set(mnist_dir, tmp_path / "d")
    img = d / "t10k-images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(gzip.decompress(img.read_bytes())[:100000]))
    with pytest.raises(DatasetError, match="truncated"):
        datasets.load("mnist", "test", data_dir=d, verify=False)


def test_wrong_magic(mnist_dir, tmp_path):
    d = _copy_set(mnist_dir, tmp_path / "d")
    # labels where images should be: magic 0x801 instead of 0x803
    shutil.copy(d / "t10k-labels-idx1-ubyte.gz", d / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DatasetError, match="wrong magic number 0x00000801"):
        datasets.load("mnist", "test", data_dir=d, verify=False)


def test_batches_drop_and_pad():
    ds = datasets.load("mnist_small", "test")  # 2000 examples
    b = list(datasets.batches(ds, 300, seed=1))
    assert len(b) == 6 and all(x.shape == (300, 28, 28, 1) for x, _, _ in b)
    x, y, _m = b[0]
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.min() >= 0.0 and x.max() <= 1.0
    p = list(datasets.batches(ds, 300, seed=1, remainder="pad"))
    assert len(p) == 7 and p[-1][2].sum() == 2000 - 6 * 300 and p[-1][0].shape[0] == 300


def test_pad_epoch_sees_every_example_once():
    ds = datasets.load("mnist_small", "test")
    seen = []
    for x, _, m in datasets.batches(ds, 333, seed=3, remainder="pad"):
        seen.append(x[m].reshape(len(x[m]), -1))
    seen = np.rint(np.concatenate(seen) * 255).astype(np.uint8)
    assert len(seen) == len(ds)
    ref = ds.images.reshape(len(ds), -1)
    assert sorted(r.tobytes() for r in seen) == sorted(r.tobytes() for r in ref)


def test_batches_deterministic_by_seed_and_epoch():
    ds = datasets.load("mnist_small", "test")
    a = [y for _, y, _ in datasets.batches(ds, 100, seed=5, epochs=2)]
    b = [y for _, y, _ in datasets.batches(ds, 100, seed=5, epochs=2)]
    c = [y for _, y, _ in datasets.batches(ds, 100, seed=6, epochs=2)]
    assert all((u == v).all() for u, v in zip(a, b))
    assert not all((u == v).all() for u, v in zip(a, c))
    assert not all((u == v).all() for u, v in zip(a[:20], a[20:]))  # epochs reshuffle


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 5000}, "larger than the 2000 examples"),
        ({"batch_size": 10, "remainder": "wrap"}, "remainder='wrap'"),
        ({"batch_size": 10, "epochs": 0}, "epochs=0"),
    ],
)
def test_batches_bad_args(kwargs, match):
    ds = datasets.load("mnist_small", "test")
    with pytest.raises(ValueError, match=match):
        next(datasets.batches(ds, **kwargs))
