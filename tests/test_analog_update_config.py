"""analog.UpdateConfig: the update knobs as one frozen, validated value (aihwkit's
UpdateParameters), and pulse_update taking it beside the loose keywords it replaces."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import analog
from analog import _update as U


def rkey(seed):
    return jax.random.key(seed, impl="rbg")


def _setup(device=None):
    dev = device or analog.ConstantStep(dw_min=0.01, dw_min_dtod=0.2, dw_min_std=0.2)
    w = jax.random.uniform(rkey(0), (12, 7), jnp.float32, -0.2, 0.2)
    t = analog.init_tiles(rkey(1), w, dev, (8, 4), w_max=1.0)
    x = jax.random.uniform(rkey(2), (5, 12), jnp.float32, -1, 1)
    d = jax.random.uniform(rkey(3), (5, 7), jnp.float32, -1, 1)
    return t, x, d


def test_default_config_is_the_old_default_behaviour():
    cfg = analog.UpdateConfig()
    assert (
        cfg.mode,
        cfg.bl,
        cfg.update_management,
        cfg.bl_management,
        cfg.prob_bits,
        cfg.impl,
    ) == ("stochastic", 31, True, False, 8, "fast")
    t, x, d = _setup()
    a, na = analog.pulse_update(t, x, d, 0.05, rkey(4))
    b, nb = analog.pulse_update(t, x, d, 0.05, rkey(4), update=cfg)
    np.testing.assert_array_equal(a.g_plus, b.g_plus)
    np.testing.assert_array_equal(a.g_minus, b.g_minus)
    assert float(na) == float(nb)


@pytest.mark.parametrize(
    "knobs",
    [
        dict(bl=8, bl_management=True),
        dict(mode="deterministic"),
        dict(impl="reference", bl=4),
        dict(prob_bits=12),
    ],
)
def test_config_and_old_keywords_give_identical_updates(knobs):
    t, x, d = _setup()
    a, na = analog.pulse_update(t, x, d, 0.05, rkey(5), **knobs)
    b, nb = analog.pulse_update(t, x, d, 0.05, rkey(5), update=analog.UpdateConfig(**knobs))
    np.testing.assert_array_equal(analog.read_weights(a), analog.read_weights(b))
    assert float(na) == float(nb)


def test_keywords_override_the_config():
    t, x, d = _setup()
    cfg = analog.UpdateConfig(bl=8)
    a, _ = analog.pulse_update(t, x, d, 0.05, rkey(6), update=cfg, bl=16)
    b, _ = analog.pulse_update(t, x, d, 0.05, rkey(6), update=analog.UpdateConfig(bl=16))
    np.testing.assert_array_equal(a.g_plus, b.g_plus)


def test_config_is_frozen_hashable_and_keyword_only():
    cfg = analog.UpdateConfig(bl=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bl = 3
    assert hash(cfg) == hash(analog.UpdateConfig(bl=10))
    with pytest.raises(TypeError):
        analog.UpdateConfig("stochastic")  # kw-only


@pytest.mark.parametrize(
    "kwargs,err,words",
    [
        (dict(mode="x"), ValueError, ("mode='x'", "stochastic", "deterministic")),
        (dict(bl=0), ValueError, ("bl=0", "[1, 1024]")),
        (dict(bl=True), ValueError, ("bl=True",)),
        (dict(prob_bits=3), ValueError, ("prob_bits=3", "[4, 16]")),
        (dict(impl="gpu"), ValueError, ("impl='gpu'", "fast", "reference")),
        (dict(update_management=1), TypeError, ("update_management=1", "True", "False")),
        (dict(bl_management="yes"), TypeError, ("bl_management='yes'", "True", "False")),
    ],
)
def test_bad_config_says_what_to_do(kwargs, err, words):
    with pytest.raises(err) as info:
        analog.UpdateConfig(**kwargs)
    for w in words:
        assert w in str(info.value)


def test_pulse_update_rejects_a_non_config():
    t, x, d = _setup()
    with pytest.raises(TypeError, match="UpdateConfig"):
        analog.pulse_update(t, x, d, 0.05, rkey(0), update={"bl": 8})


def test_unbalanced_probabilities_are_equal_factors():
    x = jnp.asarray([[0.5, -1.0, 0.0]], jnp.float32)
    d = jnp.asarray([[2.0, -0.25]], jnp.float32)
    lr, dw, bl = 0.01, 0.002, 10
    px, pd = U._probabilities(x, d, jnp.float32(lr), dw, bl, False)
    root = np.sqrt(lr / (bl * dw))  # 0.7071...
    np.testing.assert_allclose(px, np.minimum(np.abs(np.asarray(x)) * root, 1.0), rtol=1e-6)
    np.testing.assert_allclose(pd, np.minimum(np.abs(np.asarray(d)) * root, 1.0), rtol=1e-6)
    bx, bd = U._probabilities(x, d, jnp.float32(lr), dw, bl, True)
    # balanced: the largest row and column probabilities are equal, and the products agree
    assert np.isclose(float(bx.max()), float(bd.max()), rtol=1e-6)
    # where no factor is truncated both give the pair probability lr |x_i d_j| / (bl dw)
    free = np.outer(np.asarray(px)[0] < 1, np.asarray(pd)[0] < 1)
    np.testing.assert_allclose(np.outer(px, pd)[free], np.outer(bx, bd)[free], rtol=1e-5)
    assert free.sum() == 3  # d = 2 saturates the unbalanced column factor


def test_update_management_beyond_bl_truncates_only_d_as_aihwkit():
    """k = lr max|x| max|d| / dw above BL: aihwkit 1.1.0 (performUpdateManagement, "avoid
    clipping of x") gives x's largest probability exactly 1 and d's k / BL, so that only d's
    are truncated; below BL both maxima are sqrt(k / BL) as before."""
    x = jnp.asarray([[0.5, -2.0, 0.0], [0.1, 0.05, -0.2]], jnp.float32)
    d = jnp.asarray([[1.5, -0.25], [0.1, 0.2]], jnp.float32)
    lr, dw, bl = 0.5, 0.01, 10  # k = 150 (sample 0), 2 (sample 1)
    px, pd = (np.asarray(a, np.float64) for a in U._probabilities(x, d, lr, dw, bl, True))
    # sample 0: C_x = 1 / 2, C_d = sqrt(lr / (bl dw)) ** 2 / C_x = 10 (k / BL = 15 at |d| 1.5)
    np.testing.assert_allclose(px[0], [0.25, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(pd[0], [1.0, 1.0], rtol=1e-6)  # 15 and 2.5, truncated
    # sample 1, k = 2 <= BL: balanced, C_x max|x| = C_d max|d| = sqrt(k / BL)
    root = np.sqrt(2.0 / bl)
    np.testing.assert_allclose(px[1].max(), root, rtol=1e-6)
    np.testing.assert_allclose(pd[1].max(), root, rtol=1e-6)
    np.testing.assert_allclose(
        np.outer(px[1], pd[1]), np.abs(np.outer(x[1], d[1])) * lr / (bl * dw), rtol=1e-5
    )


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_without_update_management_the_update_is_still_unbiased(impl):
    """An ideal constant-step device, probabilities below 1: the mean change over 400 keys is
    lr x^T d within 5 standard errors per weight."""
    dev = analog.ConstantStep(dw_min=0.002)
    t, x, d = _setup(dev)
    bl = 16
    dw = float(analog.weight_step(t))
    lr = 0.5 * bl * dw  # sqrt(lr / (bl dw)) = 0.71: no truncation
    cfg = analog.UpdateConfig(bl=bl, update_management=False, impl=impl, prob_bits=16)
    keys = jax.random.split(rkey(7), 400)
    w0 = np.asarray(analog.read_weights(t))
    got = (
        np.asarray(
            jax.vmap(
                lambda k: analog.read_weights(analog.pulse_update(t, x, d, lr, k, update=cfg)[0])
            )(keys)
        )
        - w0
    )
    want = lr * np.asarray(x.T @ d)
    se = got.std(0) / np.sqrt(len(keys)) + 1e-9
    assert np.all(np.abs(got.mean(0) - want) < 5 * se + 1e-6 * np.abs(want).max())
