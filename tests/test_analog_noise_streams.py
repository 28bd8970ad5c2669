"""The counter-hash noise of the periphery, the relaxation and ``analog.program``, against the
distributions they replace (``jax.random.normal`` / ``uniform`` and ``Device.step``'s own draws).

Fixed seeds; each tolerance is stated beside it as a multiple of the statistic's standard
error, so a wrong variance, a bias, a correlated stream or a changed device response fails.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tolerance import assert_close_ulps

import analog
from analog import _counter_rng as R
from analog import _programming as P
from analog import _relaxation as X
from analog._mvm import _periphery_mvm, noisy_mvm, read_noise_shapes
from analog._tiles import _to_tiles

N = 400_000


def test_hash_normal_has_the_moments_and_tails_of_a_gaussian():
    z = np.asarray(R.normal(jax.random.key(0), 1, (N,)), np.float64)
    se = 1 / math.sqrt(N)
    assert abs(z.mean()) < 5 * se
    assert abs(z.std() - 1) < 5 * se / math.sqrt(2)  # SE of a Gaussian sample std: 1/sqrt(2N)
    # kurtosis 3 (SE sqrt(24/N)); Irwin-Hall(4) noise would give 2.7 and fail here
    assert abs(np.mean(z**4) - 3) < 5 * math.sqrt(96 / N)
    assert abs(np.mean(z**3)) < 5 * math.sqrt(15 / N)  # skewness 0
    # tail mass beyond 1.5 and 3 sigma, where an ADC step of ~3 sigma rounds
    for t, p in ((1.5, 0.133614), (3.0, 0.0026998)):
        got = np.mean(np.abs(z) > t)
        assert abs(got - p) < 5 * math.sqrt(p * (1 - p) / N), (t, got, p)
    # the same distribution as jax.random.normal (two-sample: quantiles within 5 SE)
    ref = np.asarray(jax.random.normal(jax.random.key(1), (N,)), np.float64)
    q = [0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999]
    dens = np.exp(-0.5 * np.quantile(ref, q) ** 2) / math.sqrt(2 * math.pi)
    se_q = np.sqrt(np.array(q) * (1 - np.array(q)) / N) / dens
    assert np.all(np.abs(np.quantile(z, q) - np.quantile(ref, q)) < 5 * math.sqrt(2) * se_q)
    # neighbouring words of one stream and two streams of one key are uncorrelated
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 * se
    z2 = np.asarray(R.normal(jax.random.key(0), 2, (N,)), np.float64)
    assert abs(np.corrcoef(z, z2)[0, 1]) < 5 * se


def test_hash_uniform_is_jax_uniforms_grid():
    u = np.asarray(R.uniform(jax.random.key(2), 0, (N,)), np.float64)
    assert u.min() >= 0 and u.max() < 1
    assert np.all(u * 2**23 == np.round(u * 2**23))  # multiples of 2^-23, as jax.random.uniform
    assert abs(u.mean() - 0.5) < 5 / math.sqrt(12 * N)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / N)  # Var of U^2-ish: 1/180
    hist = np.histogram(u, bins=16, range=(0, 1))[0]
    p = 1 / 16
    assert np.all(np.abs(hist / N - p) < 5 * math.sqrt(p * (1 - p) / N))


def test_traced_stream_gives_the_words_of_the_int_stream():
    seeds = R._key_seeds(jax.random.key(3))
    want = np.asarray(R._hash_bits(seeds, 7, (1000,)))
    got = jax.jit(lambda s: R._hash_bits(seeds, s, (1000,)))(jnp.int32(7))
    np.testing.assert_array_equal(np.asarray(got), want)


def test_relaxation_read_noise_has_the_configured_variance():
    """The sweep's reads (noise given to noisy_mvm): variance R sigma^2 through R row tiles."""
    io = analog.IOConfig(read_noise=0.05)
    wt = _to_tiles(jnp.zeros((130, 20), jnp.float32), (64, 64))  # 3 row tiles
    x = jnp.ones((4000, 130), jnp.float32)
    shapes = [
        read_noise_shapes(wt.shape, 4000, io, False),
        read_noise_shapes(wt.shape, 4000, io, True),
    ]
    (zf, zb) = X._read_noise(R._key_seeds(jax.random.key(4)), 0, shapes)
    y = np.asarray(noisy_mvm(wt, x, io, *zf, transpose=False))  # (4000, 64)
    n = y.size
    assert abs(y.var() / (3 * 0.05**2) - 1) < 5 * math.sqrt(2 / n)
    assert abs(y.mean()) < 5 * math.sqrt(3 * 0.05**2 / n)
    yt = np.asarray(noisy_mvm(wt, jnp.ones((4000, 20)), io, *zb, transpose=True))  # 1 col tile
    assert abs(yt.var() / 0.05**2 - 1) < 5 * math.sqrt(2 / yt.size)
    # the two reads of a sweep draw unrelated noise
    assert (
        abs(np.corrcoef(np.asarray(zf[1]).ravel()[:50000], np.asarray(zb[1]).ravel()[:50000])[0, 1])
        < 0.03
    )


def test_a_small_matrix_is_read_on_the_used_part_of_its_tile():
    """DAC, products and ADC are the same on 8 x 5 tiles as on 8 x 8 ones (no noise drawn)."""
    io = analog.IOConfig(inp_bits=6, inp_bound=1.0, out_bits=6, out_bound=2.0)
    w = jax.random.uniform(jax.random.key(5), (20, 5), jnp.float32, -0.5, 0.5)
    ops = X._ops([w], io, (8, 8))
    full = _to_tiles(w, (8, 8))
    s = jax.random.uniform(jax.random.key(6), (7, 20), jnp.float32)
    d = jax.random.uniform(jax.random.key(7), (7, 5), jnp.float32)
    # the ADC rounds each tile's partial sum; a reordered sum of 8 terms may cross a rounding
    # boundary only by float rounding, so the outputs agree to float32 ulps of the bound
    assert_close_ulps(
        ops.fwd(0, s, (None, None)), _periphery_mvm(full, s, io, None, False)[:, :5],
        ulps=64, magnitude=2.0,
    )  # fmt: skip
    assert_close_ulps(
        ops.bwd(0, d, (None, None)), _periphery_mvm(full, d, io, None, True)[:, :20],
        ulps=64, magnitude=2.0,
    )  # fmt: skip
    assert X._used_tile_shape((500, 10), (64, 64)) == (64, 10)
    assert X._used_tile_shape((784, 500), (64, 64)) == (64, 64)


@pytest.mark.parametrize("device", ["constant", "taox"])
def test_program_device_response_matches_device_step_statistics(device):
    """program_many (hash noise, one given draw per array) against Device.step (threefry):
    the same closed-form mean and the same cycle-to-cycle spread, cell for cell in law."""
    dev = (
        analog.ConstantStep(dw_min=0.01, up_down=0.1, dw_min_std=0.5)
        if device == "constant"
        else analog.presets.TAOX_RERAM
    )
    w = jnp.zeros((256, 256), jnp.float32)
    t = analog.init_tiles(jax.random.key(8), w, dev, (64, 64), w_max=1.0)
    step = float(analog.weight_step(t))
    delta = jnp.full(w.shape, 3.0 * step, jnp.float32)  # exactly three pulses per cell
    (new,), pulses = P.program_many([t], [delta], jax.random.key(9), rounding="deterministic")
    assert float(pulses) == 2 * 3 * w.size
    got = np.asarray(new.g_plus, np.float64)
    # reference: the device's own step with its own threefry draws, same cells
    ref = np.asarray(
        dev.step(t.g_plus, jnp.full(t.g_plus.shape, 3.0), jax.random.key(10), variation=t.var_plus),
        np.float64,
    )
    quiet = dataclasses.replace(dev, dw_min_std=0.0)
    mean = np.asarray(quiet.step(t.g_plus, jnp.full(t.g_plus.shape, 3.0), variation=t.var_plus))
    live = ~np.asarray(t.var_plus.stuck_on | t.var_plus.stuck_off)
    # noise-free response: the closed form; the noise is zero-mean around it
    res_got, res_ref = (got - mean)[live], (ref - mean)[live]
    n = res_got.size
    sd = res_ref.std()
    assert sd > 0
    assert abs(res_got.mean()) < 5 * sd / math.sqrt(n)
    assert abs(res_got.std() / sd - 1) < 5 * math.sqrt(1 / n)  # two sample stds, SE ~ 1/sqrt(n)
    np.testing.assert_array_equal(got[~live], ref[~live])  # stuck cells stay put
    # G- was depressed by the same three pulses, with its own (independent) noise
    res_m = (np.asarray(new.g_minus, np.float64) - np.asarray(
        quiet.step(t.g_minus, jnp.full(t.g_minus.shape, -3.0), variation=t.var_minus)
    ))[live]  # fmt: skip
    assert abs(np.corrcoef(res_got, res_m)[0, 1]) < 5 / math.sqrt(n)


def test_program_stochastic_rounding_is_unbiased():
    dev = analog.ConstantStep(dw_min=0.01)
    w = jnp.zeros((256, 256), jnp.float32)
    t = analog.init_tiles(jax.random.key(11), w, dev, (64, 64), w_max=1.0)
    step = float(analog.weight_step(t))
    (new,), pulses = P.program_many(
        [t], [jnp.full(w.shape, 0.3 * step, jnp.float32)], jax.random.key(12)
    )
    frac = float(pulses) / (2 * w.size)  # fraction of cells that got their one pulse
    assert abs(frac - 0.3) < 5 * math.sqrt(0.3 * 0.7 / w.size)
    realized = np.asarray(analog.read_weights(new))
    assert abs(realized.mean() / (0.3 * step) - 1) < 5 * math.sqrt(0.7 / 0.3 / w.size)


def test_noise_drawn_before_the_loop_equals_noise_drawn_per_sweep(monkeypatch):
    """_sweep_normals only moves the draws out of the loop: the same values, the same states."""
    params = analog.init_energy_network(jax.random.key(13), (30, 20, 5))
    x = jax.random.uniform(jax.random.key(14), (6, 30), jnp.float32)
    y = jax.nn.one_hot(jnp.arange(6) % 5, 5, dtype=jnp.float32)
    states = (jnp.zeros((6, 20), jnp.float32), jnp.zeros((6, 5), jnp.float32))
    io = analog.presets.TAOX_IO

    def run():
        return analog.relax(
            params, x, states, y, 0.5, 5, io=io, key=jax.random.key(15), tile_shape=(8, 8)
        )

    before = run()
    monkeypatch.setattr(X, "_PREDRAW_BYTES", 0)
    after = run()
    for a, b in zip(before[0], after[0]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(before[1]) == float(after[1])
