"""Loading real data the way users have it: re-compressed named sets, any IDX set, strict errors."""

from __future__ import annotations

import gzip
import pathlib
import shutil

import _synthetic
import numpy as np
import pytest

from beyondbp import datasets
from beyondbp.datasets import DatasetError

SHARED_FASHION = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion_mnist"


@pytest.fixture
def shapes_dir(tmp_path) -> pathlib.Path:
    return _synthetic.write_shapes(tmp_path / "shapes", train=600, test=200)


def _snapshot(d: pathlib.Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_fashion_mnist_recompressed_copies_load_without_a_flag():
    if not all((SHARED_FASHION / f).is_file() for s in datasets.FILES.values() for f in s):
        pytest.skip(f"Fashion-MNIST not found at {SHARED_FASHION} (the shared data folder)")
    # these copies' .gz bytes differ from the official mirror's; their content does not
    for f in datasets.FILES["test"]:
        assert datasets._sha256(SHARED_FASHION / f) != datasets.SHA256["fashion_mnist"][f]
    ds = datasets.load("fashion_mnist", "test", data_dir=SHARED_FASHION, download=False)
    assert len(ds) == 10000 and ds.images.shape == (10000, 28, 28) and ds.num_classes == 10
    assert np.bincount(ds.labels).tolist() == [1000] * 10


def test_uncompressed_official_content_verifies(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    bundled = pathlib.Path(datasets.__file__).parent / "data" / "mnist_small"
    for f in datasets.FILES["test"]:
        (d / f.removesuffix(".gz")).write_bytes(gzip.decompress((bundled / f).read_bytes()))
    # the named set's content digest is independent of compression: verify it as "mnist_small"
    got = datasets._read_verified(
        "mnist_small",
        datasets.FILES["test"][0],
        d / datasets.FILES["test"][0].removesuffix(".gz"),
        True,
    )
    assert len(got) == 16 + 2000 * 28 * 28


def test_idx_reads_any_shape_and_class_count(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    rng = np.random.default_rng(0)
    tr_y = (np.arange(140) % 7).astype(np.uint8)  # 7 classes, all present
    te_y = (np.arange(30) % 5).astype(np.uint8)  # test lacks two classes: fine
    datasets.write_idx(
        d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (140, 20, 24), np.uint8)
    )
    datasets.write_idx(d / "train-labels-idx1-ubyte.gz", tr_y)
    datasets.write_idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (30, 20, 24), np.uint8))
    datasets.write_idx(d / "t10k-labels-idx1-ubyte", te_y)  # uncompressed works too
    tr = datasets.load("idx", "train", data_dir=d)
    te = datasets.load("idx", "test", data_dir=d)
    assert tr.num_classes == te.num_classes == 7
    assert tr.input_shape == te.input_shape == (20, 24, 1)
    x, y, _ = next(datasets.batches(te, 10))
    assert x.shape == (10, 20, 24, 1) and x.dtype == np.float32 and y.max() < 7


def test_idx_with_channels(tmp_path):
    d = tmp_path / "rgb"
    d.mkdir()
    rng = np.random.default_rng(1)
    for split, n in (("train", 20), ("test", 10)):
        img, lab = datasets.FILES[split]
        datasets.write_idx(d / img, rng.integers(0, 256, (n, 8, 8, 3), np.uint8))
        datasets.write_idx(d / lab, (np.arange(n) % 2).astype(np.uint8))
    ds = datasets.load("idx", "train", data_dir=d)
    assert ds.input_shape == (8, 8, 3)
    assert next(datasets.batches(ds, 4))[0].shape == (4, 8, 8, 3)


def test_idx_from_env(shapes_dir, monkeypatch):
    monkeypatch.setenv("BEYONDBP_DATA", str(shapes_dir))
    assert len(datasets.load("idx", "train")) == 600


def _break(d, name, how):
    p = d / name
    if how == "missing":
        p.unlink()
    elif how == "truncated-stream":
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    elif how == "truncated-payload":
        p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-50]))
    elif how == "magic":
        raw = bytearray(gzip.decompress(p.read_bytes()))
        raw[3] = 0x02
        p.write_bytes(gzip.compress(bytes(raw)))
    elif how == "count":
        labels = np.frombuffer(gzip.decompress(p.read_bytes()), np.uint8, offset=8)[:-1]
        p.unlink()
        datasets.write_idx(p, labels.copy())
    elif how == "skip-class":
        labels = np.frombuffer(gzip.decompress(p.read_bytes()), np.uint8, offset=8).copy()
        labels[labels == 3] = 4
        p.unlink()
        datasets.write_idx(p, labels)
    elif how == "shape":
        p.unlink()
        datasets.write_idx(p, np.zeros((200, 27, 28), np.uint8))


@pytest.mark.parametrize(
    "split,name,how,match",
    [
        ("train", "train-images-idx3-ubyte.gz", "missing", "not found in"),
        ("train", "train-images-idx3-ubyte.gz", "truncated-stream", "truncated or corrupt"),
        ("train", "train-images-idx3-ubyte.gz", "truncated-payload", "truncated"),
        ("train", "train-labels-idx1-ubyte.gz", "magic", "wrong magic number 0x00000802"),
        ("train", "train-labels-idx1-ubyte.gz", "count", "600 images but .* 599 labels"),
        ("train", "train-labels-idx1-ubyte.gz", "skip-class", r"skip class\(es\) \[3\]"),
        ("train", "t10k-images-idx3-ubyte.gz", "shape", "both splits must have one image shape"),
        ("test", "train-labels-idx1-ubyte.gz", "skip-class", r"skip class\(es\) \[3\]"),
    ],
)
def test_idx_bad_files_name_the_file_and_are_never_modified(shapes_dir, split, name, how, match):
    _break(shapes_dir, name, how)
    before = _snapshot(shapes_dir)
    with pytest.raises(DatasetError, match=match) as e:
        datasets.load("idx", split, data_dir=shapes_dir)
    assert name.removesuffix(".gz") in str(e.value) or how == "shape"
    assert "\n" not in str(e.value)  # one line, fit for `beyondbp: error: ...`
    assert _snapshot(shapes_dir) == before


def test_idx_without_a_directory_says_how(monkeypatch, tmp_path):
    monkeypatch.delenv("BEYONDBP_DATA", raising=False)
    with pytest.raises(DatasetError, match=r"pass data_dir=.*BEYONDBP_DATA"):
        datasets.load("idx", "train")


def test_write_idx_never_overwrites(tmp_path):
    p = datasets.write_idx(tmp_path / "a.gz", np.zeros(3, np.uint8))
    before = p.read_bytes()
    with pytest.raises(DatasetError, match="never overwrites"):
        datasets.write_idx(p, np.ones(3, np.uint8))
    assert p.read_bytes() == before and sorted(x.name for x in tmp_path.iterdir()) == ["a.gz"]
    with pytest.raises(DatasetError, match="uint8"):
        datasets.write_idx(tmp_path / "b", np.zeros(3, np.float32))


def test_named_set_rejects_altered_content_even_uncompressed(tmp_path):
    bundled = pathlib.Path(datasets.__file__).parent / "data" / "mnist_small"
    d = tmp_path / "d"
    shutil.copytree(bundled, d)
    p = d / datasets.FILES["test"][1]
    raw = bytearray(gzip.decompress(p.read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (d / p.name.removesuffix(".gz")).write_bytes(bytes(raw))
    p.unlink()
    with pytest.raises(DatasetError, match="does not match the official"):
        datasets._read_verified("mnist_small", p.name, d / p.name.removesuffix(".gz"), True)


def test_synthetic_command_writes_a_loadable_set_and_never_overwrites(tmp_path, capsys):
    from beyondbp import synthetic

    assert (
        synthetic.main([str(tmp_path / "s"), "--train", "50", "--test", "20", "--size", "12"]) == 0
    )
    ds = datasets.load("idx", "test", data_dir=tmp_path / "s")
    assert len(ds) == 20 and ds.input_shape == (12, 12, 1) and ds.num_classes == 10
    before = _snapshot(tmp_path / "s")
    with pytest.raises(SystemExit) as e:
        synthetic.main([str(tmp_path / "s"), "--train", "50", "--test", "20"])
    assert e.value.code == 2 and "never overwrites" in capsys.readouterr().err
    assert _snapshot(tmp_path / "s") == before
