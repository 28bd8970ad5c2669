"""Crossbar tiles and periphery: exact ideal MVMs, converter levels, noise statistics, updates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tolerance import assert_close_ulps, dot_ulps

import analog
from analog import presets


def rkey(seed):
    """rbg keys: their kernels compile ~10x faster than threefry's on XLA:CPU."""
    return jax.random.key(seed, impl="rbg")


IDEAL_IO = analog.IOConfig.ideal()


@pytest.mark.parametrize(
    "shape,tile",
    [
        ((128, 64), (64, 64)),  # divides the tile
        ((100, 70), (64, 64)),  # does not
        ((5, 3), (64, 64)),  # smaller than a tile
        ((37, 91), (8, 16)),
    ],
)  # many uneven tiles
def test_ideal_mvm_equals_matmul(shape, tile):
    w = jax.random.normal(rkey(0), shape, jnp.float32) * 0.3
    t = analog.init_tiles(rkey(1), w, presets.IDEAL, tile)
    x = jax.random.normal(rkey(2), (4, 3, shape[0]), jnp.float32)
    d = jax.random.normal(rkey(3), (6, shape[1]), jnp.float32)
    # a weight becomes a conductance pair on a scale set by max|w| and back: a few roundings,
    # each half an ulp of max|w| (measured: at most 0.9 ulp)
    assert_close_ulps(analog.read_weights(t), w, ulps=4)
    y = analog.mvm(t, x, IDEAL_IO)
    assert y.shape == (4, 3, shape[1]) and y.dtype == jnp.float32
    # against float64: Higham's reordered-sum bound over the contraction, in ulps of sum |x w|
    # plus sum|x| max|w| (the conductances' rounding enters every product at max|w|'s scale).
    # atol=1e-5 was 3 ulps of sum |x w| for (128, 64): a vector-width change away from failing.
    x64, w64, d64 = (np.asarray(v, np.float64) for v in (x, w, d))
    wmax = np.abs(w64).max()
    assert_close_ulps(
        y,
        x64 @ w64,
        ulps=dot_ulps(shape[0]),
        magnitude=np.abs(x64) @ np.abs(w64) + np.abs(x64).sum(-1, keepdims=True) * wmax,
    )
    assert_close_ulps(
        analog.mvm_transpose(t, d, IDEAL_IO),
        d64 @ w64.T,
        ulps=dot_ulps(shape[1]),
        magnitude=np.abs(d64) @ np.abs(w64.T) + np.abs(d64).sum(-1, keepdims=True) * wmax,
    )


def test_read_weights_within_one_step_for_every_preset():
    w = jax.random.normal(rkey(0), (70, 50), jnp.float32) * 0.1
    for name, dev in presets.DEVICES.items():
        # Stuck cells, and cells whose own (varied) range ends short of the target conductance,
        # cannot hold w: count only the pairs that can.
        t = analog.init_tiles(rkey(1), w, dev, (32, 32))
        wt = analog._tiles._to_tiles(w, (32, 32))
        gp, gm = 0.5 + wt / (2 * t.w_scale), 0.5 - wt / (2 * t.w_scale)
        ok = jnp.ones(wt.shape, bool)
        for g, v in ((gp, t.var_plus), (gm, t.var_minus)):
            ok &= ~(v.stuck_on | v.stuck_off) & (g >= v.g_min) & (g <= v.g_max)
        healthy = analog._tiles._from_tiles(ok, t.shape)
        assert float(jnp.mean(healthy)) > 0.5, name
        err = jnp.abs(analog.read_weights(t) - w)
        assert float(jnp.max(jnp.where(healthy, err, 0.0))) <= float(analog.weight_step(t)), name


def test_tile_layout_and_vmap_over_chips():
    w = jax.random.normal(rkey(0), (100, 70), jnp.float32)
    t = analog.init_tiles(rkey(1), w, presets.TAOX_RERAM, (64, 32))
    assert t.grid == (2, 3) and t.tile_shape == (64, 32) and t.g_plus.shape == (2, 3, 64, 32)
    keys = jax.random.split(rkey(5), 7)
    chips = jax.vmap(lambda k: analog.init_tiles(k, w, presets.TAOX_RERAM, (64, 32)))(keys)
    assert chips.g_plus.shape == (7, 2, 3, 64, 32)
    x = jnp.ones((2, 100), jnp.float32) * 0.1
    ys = jax.vmap(lambda c: analog.mvm(c, x))(chips)
    assert ys.shape == (7, 2, 70)
    # independent chips differ (stuck cells, bounds), each matches its own read-out
    assert float(jnp.std(ys[:, 0, 0])) > 0
    for i in range(2):
        one = jax.tree.map(lambda a: a[i], chips)
        np.testing.assert_allclose(ys[i], x @ analog.read_weights(one), rtol=1e-5, atol=1e-5)


def test_dac_levels_and_saturation_exact():
    io = analog.IOConfig(inp_bits=4, inp_bound=1.0)  # 7 levels per sign, lsb 1/7
    x = jnp.asarray([-2.0, -1.0, -0.55, -1 / 14 + 1e-4, 0.0, 0.0714, 0.08, 3 / 7 + 0.01, 0.99, 5.0])
    want = np.round(np.clip(np.asarray(x, np.float64), -1, 1) * 7) / 7
    np.testing.assert_allclose(io.dac(x), want, atol=1e-7)
    assert len(np.unique(np.asarray(io.dac(jnp.linspace(-3, 3, 10001))))) == 15  # 2*7 + 1 codes


def test_adc_levels_and_saturation_exact():
    io = analog.IOConfig(out_bits=3, out_bound=6.0)  # 3 levels per sign: lsb 2
    y = jnp.asarray([-100.0, -6.0, -4.9, -3.1, -1.1, -0.99, 0.0, 0.99, 1.01, 2.9, 3.1, 5.1, 6.5])
    want = np.asarray([-6, -6, -4, -4, -2, 0, 0, 0, 2, 2, 4, 6, 6], np.float64)
    np.testing.assert_allclose(io.adc(y), want)


def test_mvm_quantizes_inputs_and_each_tile_output():
    w = jnp.eye(4, dtype=jnp.float32) * 0.9
    t = analog.init_tiles(rkey(0), w, presets.IDEAL, (2, 2))
    io = analog.IOConfig(inp_bits=3, inp_bound=1.0, out_bits=8, out_bound=0.5)
    x = jnp.asarray([[0.1, 0.4, 0.9, -0.7]], jnp.float32)
    xq = np.round(np.asarray(x) * 3) / 3
    yq = np.clip(xq * 0.9, -0.5, 0.5)
    lsb = 0.5 / 127
    np.testing.assert_allclose(analog.mvm(t, x, io), np.round(yq / lsb) * lsb, atol=1e-6)


def test_read_noise_has_the_configured_variance():
    # 130 inputs on 64-row tiles: 3 row tiles, so each output carries 3 independent draws.
    w = jnp.zeros((130, 64), jnp.float32)
    t = analog.init_tiles(rkey(0), w, presets.IDEAL, (64, 64))
    io = analog.IOConfig(read_noise=0.05)
    y = analog.mvm(t, jnp.ones((4000, 130), jnp.float32), io, rkey(1))
    var = float(jnp.var(y))
    # 256,000 samples: the sample variance is within 1% of 3 * 0.05^2 with overwhelming odds.
    assert var == pytest.approx(3 * 0.05**2, rel=0.02)
    assert abs(float(jnp.mean(y))) < 5e-4
    yt = analog.mvm_transpose(t, jnp.ones((4000, 64), jnp.float32), io, rkey(2))
    assert float(jnp.var(yt)) == pytest.approx(0.05**2, rel=0.02)  # 1 column tile


def test_weight_noise_is_multiplicative():
    w = jnp.full((1, 1), 0.5, jnp.float32)
    t = analog.init_tiles(rkey(0), w, presets.IDEAL, (4, 4))
    io = analog.IOConfig(w_noise=0.1)
    ys = jax.vmap(lambda k: analog.mvm(t, jnp.ones((1, 1), jnp.float32), io, k))(
        jax.random.split(rkey(3), 20000)
    )
    assert float(jnp.mean(ys)) == pytest.approx(0.5, abs=2e-3)
    assert float(jnp.std(ys)) == pytest.approx(0.05, rel=0.03)


def test_mvm_under_jit_does_not_recompile():
    w = jax.random.normal(rkey(0), (100, 70), jnp.float32)
    t = analog.init_tiles(rkey(1), w, presets.TAOX_RERAM)
    traces = []

    @jax.jit
    def f(t, x, k):
        traces.append(1)
        return analog.mvm(t, x, presets.TAOX_IO, k)

    for i in range(3):
        f(t, jnp.full((2, 100), 0.01 * i, jnp.float32), rkey(i))
    assert len(traces) == 1


@pytest.mark.parametrize("bad", [(0, 64), (64,), (64, 64, 1), "64x64", (64.0, 64), (True, 4)])
def test_bad_tile_shape_raises(bad):
    with pytest.raises(ValueError, match="tile_shape"):
        analog.init_tiles(rkey(0), jnp.ones((3, 3)), presets.IDEAL, bad)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(inp_bits=1, inp_bound=1.0), "inp_bits"),
        (dict(inp_bits=40, inp_bound=1.0), "inp_bits"),
        (dict(out_bits=8.0, out_bound=1.0), "out_bits"),
        (dict(out_bits=8), "out_bound"),
        (dict(inp_bits=8), "inp_bound"),
        (dict(read_noise=-1.0), "read_noise"),
        (dict(out_bound=0.0), "out_bound"),
    ],
)
def test_bad_io_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        analog.IOConfig(**kwargs)


def test_noisy_mvm_without_key_raises():
    t = analog.init_tiles(rkey(0), jnp.ones((3, 3)), presets.IDEAL)
    with pytest.raises(ValueError, match="key"):
        analog.mvm(t, jnp.ones((1, 3)), analog.IOConfig(read_noise=0.1))
    with pytest.raises(ValueError, match="last axis"):
        analog.mvm(t, jnp.ones((1, 4)))


def test_deterministic_pulse_update_sends_rounded_counts():
    dev = analog.ConstantStep(dw_min=0.01)
    w = jnp.zeros((3, 2), jnp.float32)
    t = analog.init_tiles(rkey(0), w, dev, (2, 2), w_max=1.0)
    step = float(analog.weight_step(t))  # 2 * 0.01 * 1.0
    x = jnp.asarray([[1.0, -0.5, 0.2]], jnp.float32)
    d = jnp.asarray([[0.3, -0.04]], jnp.float32)
    t2, pulses = analog.pulse_update(t, x, d, 1.0, None, mode="deterministic")
    want = np.round(np.asarray(x.T @ d) / step) * step
    np.testing.assert_allclose(analog.read_weights(t2), want, atol=1e-6)
    assert float(pulses) == 2 * np.abs(np.round(np.asarray(x.T @ d) / step)).sum()


def test_stochastic_pulse_update_is_unbiased_below_saturation():
    """Gokmen & Vlasov: E[coincidences] = BL p_i q_j, so the mean change is lr x^T d."""
    dev = analog.ConstantStep(dw_min=0.001)
    w = jnp.zeros((20, 10), jnp.float32)
    t = analog.init_tiles(rkey(0), w, dev, (8, 8), w_max=1.0)
    x = jax.random.uniform(rkey(1), (3, 20), jnp.float32, -1, 1)
    d = jax.random.uniform(rkey(2), (3, 10), jnp.float32, -1, 1)
    lr = 0.01  # max probability ~0.36 < 1
    keys = jax.random.split(rkey(3), 4000)
    ws = jax.vmap(lambda k: analog.read_weights(analog.pulse_update(t, x, d, lr, k)[0]))(keys)
    mean = np.asarray(ws.mean(0))
    want = lr * np.asarray(x.T @ d)
    # per-entry standard error <= sqrt(BL p q * 3) * step / sqrt(4000) ~ 2e-4
    np.testing.assert_allclose(mean, want, atol=1e-3)
    assert np.corrcoef(mean.ravel(), want.ravel())[0, 1] > 0.99


def test_pulse_update_bad_arguments():
    t = analog.init_tiles(rkey(0), jnp.ones((3, 2)), presets.IDEAL)
    with pytest.raises(ValueError, match="mode"):
        analog.pulse_update(t, jnp.ones((1, 3)), jnp.ones((1, 2)), 0.1, rkey(0), mode="magic")
    with pytest.raises(ValueError, match="bl"):
        analog.pulse_update(t, jnp.ones((1, 3)), jnp.ones((1, 2)), 0.1, rkey(0), bl=0)
    with pytest.raises(ValueError, match=r"\(B, in\)"):
        analog.pulse_update(t, jnp.ones((1, 2)), jnp.ones((1, 2)), 0.1, rkey(0))


def test_stuck_devices_ignore_programming():
    dev = analog.ConstantStep(dw_min=0.01, stuck_on=0.3, stuck_off=0.3)
    t = analog.init_tiles(rkey(0), jnp.zeros((16, 16)), dev, (8, 8), w_max=1.0)
    t2, _ = analog.program_weights(t, jnp.full((16, 16), 0.3), rkey(1))
    stuck = t.var_plus.stuck_on | t.var_plus.stuck_off
    assert bool(jnp.all(jnp.where(stuck, t2.g_plus == t.g_plus, True)))
    assert bool(jnp.any(jnp.where(~stuck, t2.g_plus != t.g_plus, False)))
