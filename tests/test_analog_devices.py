"""Device models: closed-form pulse responses, bounds under any pulse sequence, variation, errors."""

from __future__ import annotations

import math
import pathlib

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import analog
from analog import presets


def rkey(seed):
    """rbg keys: their kernels compile ~10x faster than threefry's on XLA:CPU."""
    return jax.random.key(seed, impl="rbg")


DW = 0.01
A = DW  # range is 1, so a = dw_min in x units


def closed_form_up(dev, x0, n):
    """Independent transcription of each class docstring's closed form for n up pulses."""
    a = dev.dw_min * (1 + dev.up_down)
    if isinstance(dev, analog.ConstantStep):
        return np.clip(x0 + n * a, 0, 1)
    if isinstance(dev, analog.LinearStep):  # includes SoftBounds (gamma = 1)
        g = dev.gamma_up
        if g == 0:
            return np.clip(x0 + n * a, 0, 1)
        xs = (1 + g) / (2 * g)
        return np.clip(xs + (x0 - xs) * (1 - 2 * a * g) ** n, 0, 1)
    if isinstance(dev, analog.ExpStep):
        g = dev.gamma_up
        return np.clip(0.5 + np.log(np.exp(g * (x0 - 0.5)) + a * g * n) / g, 0, 1)
    if isinstance(dev, analog.PowStep):
        g = dev.gamma_up
        y0 = 1 - x0
        if g == 1:
            return 1 - y0 * np.exp(-2 * a * n)
        return 1 - np.maximum(y0 ** (1 - g) - (1 - g) * a * 2**g * n, 0) ** (1 / (1 - g))
    raise AssertionError(dev)


def closed_form_down(dev, x0, n):
    a = dev.dw_min * (1 - dev.up_down)
    if isinstance(dev, analog.ConstantStep):
        return np.clip(x0 - n * a, 0, 1)
    if isinstance(dev, analog.LinearStep):
        g = dev.gamma_down
        y0 = 1 - x0
        if g == 0:
            return np.clip(x0 - n * a, 0, 1)
        ys = (1 + g) / (2 * g)
        return np.clip(1 - (ys + (y0 - ys) * (1 - 2 * a * g) ** n), 0, 1)
    if isinstance(dev, analog.ExpStep):
        g = dev.gamma_down
        y = 0.5 + np.log(np.exp(g * (1 - x0 - 0.5)) + a * g * n) / g
        return np.clip(1 - y, 0, 1)
    if isinstance(dev, analog.PowStep):
        g = dev.gamma_down
        return np.maximum(x0 ** (1 - g) - (1 - g) * a * 2**g * n, 0) ** (1 / (1 - g))
    raise AssertionError(dev)


MODELS = [
    analog.ConstantStep(dw_min=DW, up_down=0.2),
    analog.LinearStep(dw_min=DW, up_down=-0.1, gamma_up=0.5, gamma_down=0.8),
    analog.SoftBounds(dw_min=DW, up_down=0.1),
    analog.ExpStep(dw_min=DW, up_down=0.1, gamma_up=3.0, gamma_down=2.0),
    analog.PowStep(dw_min=DW, up_down=0.1, gamma_up=0.5, gamma_down=0.7),
    analog.PowStep(dw_min=DW, gamma_up=2.0, gamma_down=2.0),
]


@pytest.mark.parametrize("dev", MODELS, ids=lambda d: f"{type(d).__name__}")
def test_pulse_train_matches_closed_form(dev):
    x0 = np.linspace(0.05, 0.95, 7).astype(np.float32)
    n = np.arange(0, 121, dtype=np.float32)
    g = jnp.asarray(x0)[None, :] * jnp.ones((len(n), 1), jnp.float32)
    nn = jnp.asarray(n)[:, None] * jnp.ones((1, len(x0)), jnp.float32)
    up = np.asarray(dev.step(g, nn))
    down = np.asarray(dev.step(g, -nn))
    want_up = closed_form_up(dev, x0[None, :].astype(np.float64), n[:, None].astype(np.float64))
    want_down = closed_form_down(dev, x0[None, :].astype(np.float64), n[:, None].astype(np.float64))
    np.testing.assert_allclose(up, want_up, atol=2e-5)
    np.testing.assert_allclose(down, want_down, atol=2e-5)
    # Up moves up, down moves down, monotonically in n.
    assert np.all(np.diff(up, axis=0) >= -1e-6) and np.all(np.diff(down, axis=0) <= 1e-6)


@pytest.mark.parametrize("dev", MODELS, ids=lambda d: f"{type(d).__name__}")
def test_single_pulses_compose_to_a_train(dev):
    """n pulses one at a time == n pulses at once (the response is a curve in pulse number)."""
    g0 = jnp.asarray([0.1, 0.5, 0.8], jnp.float32)
    g = g0
    for _ in range(40):
        g = dev.step(g, jnp.ones_like(g0))
    for _ in range(15):
        g = dev.step(g, -jnp.ones_like(g0))
    once = dev.step(dev.step(g0, jnp.full_like(g0, 40.0)), jnp.full_like(g0, -15.0))
    np.testing.assert_allclose(np.asarray(g), np.asarray(once), atol=5e-6)


@pytest.mark.parametrize("dev", MODELS, ids=lambda d: f"{type(d).__name__}")
def test_dw_min_is_the_step_at_mid_range(dev):
    mid = jnp.full((1,), 0.5, jnp.float32)
    up = float(dev.step(mid, jnp.ones(1))[0]) - 0.5
    down = 0.5 - float(dev.step(mid, -jnp.ones(1))[0])
    assert up == pytest.approx(dev.dw_min * (1 + dev.up_down), rel=0.05)
    assert down == pytest.approx(dev.dw_min * (1 - dev.up_down), rel=0.05)


PRESETS = list(presets.DEVICES.items())


@settings(max_examples=25, deadline=None)
@given(
    seq=st.lists(st.integers(-300, 300), min_size=1, max_size=12),
    which=st.integers(0, len(PRESETS) - 1),
    seed=st.integers(0, 2**16),
)
def test_conductance_stays_in_bounds_for_any_pulse_sequence(seq, which, seed):
    _, dev = PRESETS[which]
    key = rkey(seed)
    var = dev.sample_variation(key, (64,))
    g = dev.clip(jnp.full((64,), 0.5, jnp.float32), var)
    for i, n in enumerate(seq):
        counts = jnp.asarray(n, jnp.float32) * (jnp.arange(64) % 3).astype(jnp.float32)
        g = dev.step(g, counts, jax.random.fold_in(key, i), variation=var)
        assert bool(jnp.all(g >= var.g_min)) and bool(jnp.all(g <= var.g_max)), (seq, dev)
        assert bool(jnp.all(jnp.isfinite(g)))
        assert bool(jnp.all(jnp.where(var.stuck_on, g == var.g_max, True)))
        assert bool(jnp.all(jnp.where(var.stuck_off, g == var.g_min, True)))


def test_cycle_to_cycle_noise_has_the_configured_spread():
    dev = analog.ConstantStep(dw_min=0.001, dw_min_std=0.3)
    g0 = jnp.full((200_000,), 0.5, jnp.float32)
    n = 16.0
    g = dev.step(g0, jnp.full_like(g0, n), rkey(3))
    delta = np.asarray(g - g0, np.float64)
    # n pulses of step a(1 + 0.3 xi): mean n a, std 0.3 a sqrt(n).
    assert delta.mean() == pytest.approx(n * 0.001, rel=0.01)
    assert delta.std() == pytest.approx(0.3 * 0.001 * math.sqrt(n), rel=0.02)


def test_device_to_device_variation_and_stuck_fractions():
    dev = analog.ConstantStep(
        dw_min=0.01,
        dw_min_dtod=0.2,
        up_down_dtod=0.05,
        bounds_dtod=0.1,
        stuck_on=0.02,
        stuck_off=0.03,
    )
    var = dev.sample_variation(rkey(0), (100_000,))
    assert float(jnp.std(var.dw_scale)) == pytest.approx(0.2, rel=0.03)
    assert float(jnp.std(var.up_down)) == pytest.approx(0.05, rel=0.03)
    assert float(jnp.std(var.g_max)) == pytest.approx(0.1, rel=0.03)
    assert float(jnp.mean(var.stuck_on)) == pytest.approx(0.02, abs=0.002)
    assert float(jnp.mean(var.stuck_off)) == pytest.approx(0.03, abs=0.002)
    assert not bool(jnp.any(var.stuck_on & var.stuck_off))
    # Sampled once: the same key gives the same devices.
    again = dev.sample_variation(rkey(0), (100_000,))
    assert bool(jnp.all(again.dw_scale == var.dw_scale))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dw_min=0.0), "dw_min"),
        (dict(dw_min=2.0), "dw_min"),
        (dict(up_down=1.0), "up_down"),
        (dict(g_min=1.0, g_max=0.5), "g_max > g_min"),
        (dict(dw_min_std=-0.1), "dw_min_std"),
        (dict(stuck_on=0.7, stuck_off=0.5), "stuck_on"),
        (dict(stuck_off=1.5), "stuck_off"),
    ],
)
def test_bad_device_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        analog.ConstantStep(**kwargs)


def test_bad_model_parameters_raise():
    with pytest.raises(ValueError, match="gamma_up"):
        analog.LinearStep(dw_min=0.6, gamma_up=1.0)
    with pytest.raises(ValueError, match="gamma_down"):
        analog.LinearStep(gamma_down=1.5)
    with pytest.raises(ValueError, match="ConstantStep"):
        analog.ExpStep(gamma_up=0.0)
    with pytest.raises(TypeError, match="dw_min"):
        analog.ConstantStep(dw_min="big")
    with pytest.raises(ValueError, match="key"):
        presets.TAOX_RERAM.step(jnp.zeros(3), jnp.ones(3))


def test_presets_are_valid_devices_with_sources():
    import analog._presets as src

    text = pathlib.Path(src.__file__).read_text()
    for name, dev in presets.DEVICES.items():
        assert isinstance(dev, analog.Device)
        # every preset's comment block names a publication (a year in parentheses or after a comma)
        block = text[: text.index(f"\n{name} =")].rsplit("\n\n", 1)[-1]
        assert any(str(y) in block for y in range(2014, 2025)), name
