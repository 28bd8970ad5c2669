"""Property tests (hypothesis) for the data iterator: every example once per epoch."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from beyondbp import datasets


def _ds(n):
    # distinct images: example i carries its index in its first pixels
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    images[:, 0, 1] = np.arange(n) // 256
    return datasets.Dataset("synthetic", "train", images, (np.arange(n) % 10).astype(np.uint8))


def _ids(x):
    px = np.rint(x[:, 0, :2, 0] * 255).astype(np.int64)
    return px[:, 0] + 256 * px[:, 1]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 700), bs=st.integers(1, 128), seed=st.integers(0, 2**31 - 1))
def test_pad_epoch_yields_every_example_exactly_once(n, bs, seed):
    seen = np.concatenate(
        [_ids(x)[m] for x, _, m in datasets.batches(_ds(n), bs, seed=seed, remainder="pad")]
    )
    assert sorted(seen.tolist()) == list(range(n))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 700),
    bs=st.integers(1, 128),
    seed=st.integers(0, 2**31 - 1),
    epochs=st.integers(1, 3),
)
def test_drop_epochs_yield_distinct_examples_and_fixed_shapes(n, bs, seed, epochs):
    if bs > n:
        return
    per_epoch = n // bs
    out = list(datasets.batches(_ds(n), bs, seed=seed, epochs=epochs))
    assert len(out) == per_epoch * epochs
    for e in range(epochs):
        ids = np.concatenate([_ids(x) for x, _, _ in out[e * per_epoch : (e + 1) * per_epoch]])
        assert len(set(ids.tolist())) == per_epoch * bs  # no example twice within an epoch
    assert all(x.shape == (bs, 28, 28, 1) and m.all() for x, _, m in out)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 500),
    bs=st.integers(1, 64),
    start=st.integers(0, 40),
    seed=st.integers(0, 1000),
)
def test_start_resumes_the_same_stream(n, bs, start, seed):
    if bs > n:
        return
    full = datasets.batches(_ds(n), bs, seed=seed, epochs=None)
    for _ in range(start):
        next(full)
    resumed = datasets.batches(_ds(n), bs, seed=seed, epochs=None, start=start)
    for _ in range(5):
        np.testing.assert_array_equal(next(full)[0], next(resumed)[0])
