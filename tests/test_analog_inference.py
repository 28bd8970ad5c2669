"""The PCM inference model (analog._inference, analog._inference_params, beyondbp.drift) against
independent references: closed-form drift, the programming-noise polynomial, the 1/f read-noise
law, exact compensation without noise; vmap, jit, dtypes and bad inputs.

References are computed here in float64 numpy from aihwkit's published constants
(``aihwkit/inference/noise/pcm.py``), not from the code under test. Statistical checks use a
fixed seed and a tolerance of several standard errors, stated at each check.
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
from beyondbp import drift as bdrift

M = analog.PCMNoiseModel()
# aihwkit pcm.py constants, restated so the test does not read them from the code under test
C_PROG = (0.26348, 1.9650, -1.1731)
G_MAX = 25.0
T0 = 20.0
T_READ = 250e-9
YEAR = 365 * 86400.0


def _noiseless(nu: float = 0.06) -> analog.PCMNoiseModel:
    """No programming or read noise; every device drifts with the same exponent ``nu``."""
    return dataclasses.replace(
        M,
        prog_noise_scale=0.0,
        read_noise_scale=0.0,
        nu_mean_coeff=(nu, 0.0),
        nu_mean_range=(0.0, 1.0),
        nu_std_range=(0.0, 0.0),
    )


def _w(shape=(16, 8), seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32) * 0.1


# ---------------------------------------------------------------------------- drift (eq. D)


@pytest.mark.parametrize("t", [1.0, 3600.0, 86400.0, YEAR])
def test_drift_closed_form_for_given_exponents(t):
    g = np.linspace(0.5, 25.0, 64, dtype=np.float32)
    nu = np.linspace(0.0, 0.1, 64, dtype=np.float32)
    got = np.asarray(analog.drift(jnp.asarray(nu), jnp.asarray(g), t, M))
    want = g.astype(np.float64) * ((t + T0) / T0) ** (-nu.astype(np.float64))
    # exp and log1p are each within a few ulps; 16 ulps of the conductance covers both
    assert_close_ulps(got, want, ulps=16, magnitude=np.abs(want))
    assert got.dtype == np.float32


def test_no_drift_at_time_zero_exactly():
    g = jnp.linspace(0.0, 25.0, 32, dtype=jnp.float32)
    nu = jnp.full((32,), 0.08, jnp.float32)
    np.testing.assert_array_equal(np.asarray(analog.drift(nu, g, 0.0, M)), np.asarray(g))
    np.testing.assert_array_equal(
        np.asarray(analog.drift(jax.random.key(0), g, 0, M)), np.asarray(g)
    )


def test_drift_with_constant_exponent_from_key():
    m = _noiseless(0.05)
    g = jnp.full((1000,), 10.0, jnp.float32)
    got = np.asarray(analog.drift(jax.random.key(1), g, 3600.0, m))
    want = 10.0 * (3620.0 / 20.0) ** -0.05
    assert_close_ulps(got, np.full(1000, want), ulps=16, magnitude=want)


def test_mean_drift_with_exponent_spread_matches_lognormal_mean():
    # At G = g_max aihwkit's fit gives mu_nu = clip(0.0244, 0.049, 0.1) = 0.049 and
    # sigma_nu = clip(-0.0059, 0.008, 0.045) = 0.008; |mu + sigma xi| folds with probability
    # Phi(-6.1) ~ 5e-10, so nu is Gaussian and E[(t_total/t0)^-nu] = exp(-mu L + sigma^2 L^2/2).
    n, t = 200_000, YEAR
    g = jnp.full((n,), G_MAX, jnp.float32)
    factor = np.asarray(analog.drift(jax.random.key(2), g, t, M), np.float64) / G_MAX
    L = math.log((t + T0) / T0)
    mu, sd = 0.049, 0.008
    want = math.exp(-mu * L + 0.5 * (sd * L) ** 2)
    sd_factor = want * math.sqrt(math.exp((sd * L) ** 2) - 1)
    # 5 standard errors of the sample mean
    assert abs(factor.mean() - want) < 5 * sd_factor / math.sqrt(n)
    assert abs(factor.std() / sd_factor - 1) < 0.02  # std of a std estimate ~ 1/sqrt(2n)


def test_drift_exponent_statistics_follow_the_fit():
    n = 100_000
    g_rel = 0.3
    nu = np.asarray(
        analog.drift_exponents(jax.random.key(3), jnp.full((n,), g_rel * G_MAX, jnp.float32), M)
    )
    mu = min(max(-0.0155 * math.log(g_rel) + 0.0244, 0.049), 0.1)
    sd = min(max(-0.0125 * math.log(g_rel) - 0.0059, 0.008), 0.045)
    assert abs(nu.mean() - mu) < 5 * sd / math.sqrt(n)
    assert abs(nu.std() / sd - 1) < 0.03
    assert nu.min() >= 0.0


# ---------------------------------------------------------------- programming noise (eq. P)


def test_programming_noise_std_matches_polynomial():
    levels = np.array([0.1, 0.25, 0.5, 0.75, 1.0])
    n = 20_000
    w = jnp.asarray(np.repeat(levels[None, :], n, axis=0), jnp.float32)  # max|w| = 1 -> g_max
    p = analog.program_conductances(jax.random.key(4), w, M)
    g = np.asarray(p.g_plus, np.float64)
    for j, x in enumerate(levels):
        sigma = C_PROG[0] + C_PROG[1] * x + C_PROG[2] * x**2  # uS, g_max = g_ref = 25 uS
        target = x * G_MAX
        # the 0 uS clip is > 5 sigma away at every level: the draw is Gaussian
        assert target > 5 * sigma
        assert abs(g[:, j].mean() - target) < 5 * sigma / math.sqrt(n), x
        assert abs(g[:, j].std() / sigma - 1) < 0.03, x  # ~6 standard errors of 1/sqrt(2n)
    # the unused device of each pair targets 0 uS: max(sigma_0 xi, 0) has mean sigma_0/sqrt(2 pi)
    gm = np.asarray(p.g_minus, np.float64)
    half = C_PROG[0] / math.sqrt(2 * math.pi)
    assert abs(gm.mean() - half) < 0.02 * half
    assert gm.min() >= 0.0


def test_programming_noise_scales_with_g_max_and_scale():
    n = 40_000
    w = jnp.ones((n, 1), jnp.float32)
    m = dataclasses.replace(M, g_max=50.0, prog_noise_scale=0.5)
    g = np.asarray(analog.program_conductances(jax.random.key(5), w, m).g_plus, np.float64)
    sigma = 0.5 * (50.0 / 25.0) * sum(C_PROG)
    assert abs(g.std() / sigma - 1) < 0.03


# ---------------------------------------------------------------------- read noise (eq. R)


@pytest.mark.parametrize(("g_rel", "t"), [(1.0, 0.0), (1.0, 3600.0), (0.2, YEAR)])
def test_read_noise_std_follows_one_over_f_law(g_rel, t):
    n = 100_000
    g = jnp.full((n,), g_rel * G_MAX, jnp.float32)
    out = np.asarray(analog.read_noise(jax.random.key(6), g, t, M), np.float64)
    q_s = min(0.0088 / max(g_rel**0.65, 1e-3), 0.2)
    sigma = g_rel * G_MAX * q_s * math.sqrt(math.log((t + T0 + T_READ) / (2 * T_READ)))
    assert abs(out.mean() - g_rel * G_MAX) < 5 * sigma / math.sqrt(n)
    assert abs(out.std() / sigma - 1) < 0.03


# ------------------------------------------------------------------------- compensation


@pytest.mark.parametrize("x_ref", [None, "ones", "batch"])
def test_compensation_restores_output_scale_exactly_without_noise(x_ref):
    m = _noiseless(0.07)
    w = _w((32, 12))
    xr = {
        None: None,
        "ones": jnp.ones((1, 32), jnp.float32),
        "batch": jax.random.normal(jax.random.key(9), (5, 32), jnp.float32),
    }[x_ref]
    p = analog.program_conductances(jax.random.key(7), w, m)
    w_t = analog.weights_at(jax.random.key(8), p, YEAR, m)
    factor = (YEAR + T0) / T0
    # uncompensated: every weight shrank by the same power law
    assert_close_ulps(np.asarray(w_t), np.asarray(w) * factor**-0.07, ulps=16)
    alpha = analog.global_drift_compensation(p.weights(), w_t, x_ref=xr)
    assert alpha.dtype == jnp.float32 and alpha.shape == ()
    assert_close_ulps(float(alpha), factor**0.07, ulps=16)
    # compensated weights are the programmed ones (a few roundings: map, drift, alpha)
    w_c = analog.inference_weights(jax.random.key(7), w, YEAR, m, x_ref=xr)
    assert_close_ulps(np.asarray(w_c), np.asarray(w), ulps=32)
    ref = np.abs(np.asarray(w) if xr is None else np.asarray(xr) @ np.asarray(w)).mean()
    now = np.abs(np.asarray(w_c) if xr is None else np.asarray(xr) @ np.asarray(w_c)).mean()
    assert_close_ulps(now, ref, ulps=64)


def test_noiseless_time_zero_reads_the_weights_back():
    m = _noiseless()
    w = _w()
    got = analog.inference_weights(jax.random.key(0), w, 0.0, m, compensate=False)
    assert_close_ulps(np.asarray(got), np.asarray(w), ulps=4)


def test_compensation_reduces_error_with_full_model():
    w = _w((64, 32))
    errs = {}
    for comp in (True, False):
        w_t = analog.inference_weights(jax.random.key(11), w, YEAR, M, compensate=comp)
        errs[comp] = float(jnp.linalg.norm(w_t - w) / jnp.linalg.norm(w))
    # one year of drift shrinks weights by about (1.6e6)^-0.06 ~ 0.4: uncompensated error is
    # dominated by it, compensated error by programming and read noise
    assert errs[True] < 0.5 * errs[False]


# ------------------------------------------------------------------- crossbar tiles (mapping)


def _blocks(rows, cols, r, c):
    return [
        (slice(i, min(i + r, rows)), slice(j, min(j + c, cols)))
        for i in range(0, rows, r)
        for j in range(0, cols, c)
    ]


def test_each_tile_maps_its_own_max_to_g_max():
    # a 600 x 700 matrix on 512 x 512 crossbars: a 2 x 2 grid, each tile with its own max|W|
    w = np.array(_w((600, 700), seed=4))
    w[:512, :512] *= 3.0  # make the four maxima differ
    m = dataclasses.replace(M, prog_noise_scale=0.0)
    p = analog.program_conductances(jax.random.key(0), jnp.asarray(w), m)
    scale = np.asarray(p.scale)
    for rs, cs in _blocks(600, 700, 512, 512):
        want = G_MAX / np.abs(w[rs, cs]).max()
        assert_close_ulps(scale[rs, cs], np.full(scale[rs, cs].shape, want), ulps=2)
        g_top = max(np.asarray(p.g_plus)[rs, cs].max(), np.asarray(p.g_minus)[rs, cs].max())
        assert_close_ulps(g_top, G_MAX, ulps=2)
    one = dataclasses.replace(m, max_input_size=None, max_output_size=None)
    s1 = np.asarray(analog.program_conductances(jax.random.key(0), jnp.asarray(w), one).scale)
    assert np.unique(s1).size == 1


@pytest.mark.parametrize("x_ref", [None, "batch"])
def test_compensation_per_tile_undoes_each_tiles_own_factor(x_ref):
    rows, cols, r, c = 70, 50, 32, 20
    m = dataclasses.replace(M, max_input_size=r, max_output_size=c)
    w = np.array(_w((rows, cols), seed=5))
    factors = np.linspace(0.3, 0.9, len(_blocks(rows, cols, r, c)))
    w_now = w.copy()
    for f, (rs, cs) in zip(factors, _blocks(rows, cols, r, c)):
        w_now[rs, cs] *= f
    xr = None if x_ref is None else jax.random.normal(jax.random.key(6), (4, rows), jnp.float32)
    alpha = np.asarray(
        analog.global_drift_compensation(jnp.asarray(w), jnp.asarray(w_now), x_ref=xr, model=m)
    )
    assert alpha.shape == (rows, cols)
    for f, (rs, cs) in zip(factors, _blocks(rows, cols, r, c)):
        # a few roundings in each tile's mean of |x W| (at most 70 terms)
        assert_close_ulps(alpha[rs, cs], np.full(alpha[rs, cs].shape, 1 / f), ulps=64)
    # one crossbar: one scalar
    one = analog.global_drift_compensation(jnp.asarray(w), jnp.asarray(w_now), x_ref=xr)
    assert np.shape(one) == ()


# --------------------------------------------------------------- transforms: vmap, jit, dtype


def test_vmap_over_chips_matches_one_chip_at_a_time():
    w = _w()
    keys = jax.random.split(jax.random.key(12), 3)
    many = jax.vmap(analog.inference_weights, (0, None, None, None))(keys, w, 3600.0, M)
    assert many.shape == (3, *w.shape) and many.dtype == jnp.float32
    for i in range(3):
        one = analog.inference_weights(keys[i], w, 3600.0, M)
        assert_close_ulps(np.asarray(many[i]), np.asarray(one), ulps=8)
    assert not np.allclose(np.asarray(many[0]), np.asarray(many[1]))


def test_jit_with_traced_time_matches_eager_and_nan_for_negative():
    w = _w()
    f = jax.jit(analog.inference_weights, static_argnames=("model", "compensate"))
    for t in (1.0, 86400.0):
        assert_close_ulps(
            np.asarray(f(jax.random.key(1), w, jnp.float32(t), model=M)),
            np.asarray(analog.inference_weights(jax.random.key(1), w, t, M)),
            ulps=8,
        )
    # a traced time cannot raise: a negative one gives NaN instead of a silent wrong answer
    assert np.isnan(np.asarray(f(jax.random.key(1), w, jnp.float32(-1.0), model=M))).all()


def test_float32_kept_and_programmed_is_a_pytree():
    w16 = _w().astype(jnp.bfloat16)
    p = analog.program_conductances(jax.random.key(0), w16, M)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
    assert analog.weights_at(jax.random.key(1), p, 1.0, M).dtype == jnp.float32
    ps = jax.vmap(analog.program_conductances, (0, None, None))(
        jax.random.split(jax.random.key(0), 2), _w(), M
    )
    assert ps.g_plus.shape == ps.scale.shape == (2, 16, 8)


# ------------------------------------------------------------------- params and HWA training


def test_program_params_keeps_biases_digital_and_params_at_keeps_structure():
    params = {"l0": {"kernel": _w((8, 4)), "bias": jnp.ones((4,), jnp.float32)}}
    prog = analog.program_params(jax.random.key(0), params, M)
    assert isinstance(prog["l0"]["kernel"], analog.ProgrammedWeights)
    read = analog.params_at(jax.random.key(1), prog, 60.0, M)
    assert jax.tree.structure(read) == jax.tree.structure(params)
    np.testing.assert_array_equal(np.asarray(read["l0"]["bias"]), np.ones(4, np.float32))
    assert read["l0"]["kernel"].dtype == jnp.float32


def test_noisy_params_forward_noise_straight_through_gradient():
    params = {"kernel": _w((64, 32)), "bias": jnp.zeros((32,), jnp.float32)}
    c = jax.random.normal(jax.random.key(3), (64, 32), jnp.float32)
    noisy = analog.noisy_params(jax.random.key(2), params, M)
    assert noisy["kernel"].dtype == jnp.float32
    rel = float(
        jnp.linalg.norm(noisy["kernel"] - params["kernel"]) / jnp.linalg.norm(params["kernel"])
    )
    assert 0.01 < rel < 0.5  # the programming noise is there, and of the model's size
    np.testing.assert_array_equal(np.asarray(noisy["bias"]), np.zeros(32, np.float32))
    grad = jax.grad(lambda p: jnp.sum(analog.noisy_params(jax.random.key(2), p, M)["kernel"] * c))(
        params
    )
    np.testing.assert_array_equal(np.asarray(grad["kernel"]), np.asarray(c))
    at_t = analog.noisy_params(jax.random.key(2), params, M, t=YEAR, compensate=False)
    # uncompensated one-year weights are much smaller than the trained ones
    assert float(jnp.abs(at_t["kernel"]).mean()) < 0.7 * float(jnp.abs(params["kernel"]).mean())


def test_accuracy_vs_time_noiseless_equals_digital():
    apply = lambda p, x: x @ p["w"] + p["b"]
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (300, 8), jnp.float32)
    params = {"w": jax.random.normal(kw, (8, 3), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    y = jnp.argmax(apply(params, x) + 0.5 * jax.random.normal(kw, (300, 3), jnp.float32), -1)
    out = bdrift.accuracy_vs_time(
        apply, params, x, y, model=_noiseless(), times=(0.0, YEAR), seeds=(0, 1), batch_size=128
    )
    assert np.asarray(out["accuracy"]).shape == (2, 2)
    # a zero bias keeps argmax invariant to the global drift factor, compensated or not;
    # a prediction can only flip on a near-tie within the mapping's roundings
    np.testing.assert_allclose(out["accuracy"], out["digital"], atol=1 / 300)
    noisy = bdrift.accuracy_vs_time(apply, params, x, y, times=(YEAR,), seeds=(0, 1, 2))
    assert len(noisy["mean"]) == 1 and 0.0 <= noisy["mean"][0] <= 1.0


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"t0": -1.0}, "t0"),
        ({"t0": 0.0}, "t0"),
        ({"t_read": float("nan")}, "t_read"),
        ({"g_max": 0.0}, "g_max"),
        ({"prog_noise_scale": -0.1}, "prog_noise_scale"),
        ({"read_noise_scale": -1.0}, "read_noise_scale"),
        ({"drift_scale": True}, "drift_scale"),
        ({"nu_std_range": (-0.01, 0.045)}, "nu_std_range"),
        ({"nu_mean_range": (0.1, 0.05)}, "nu_mean_range"),
        ({"nu_std_coeff": (0.0,)}, "nu_std_coeff"),
        ({"prog_coeff": ()}, "prog_coeff"),
        ({"prog_coeff": [0.1, 0.2]}, "prog_coeff"),
        ({"prog_coeff": (0.1, -1.0)}, "negative programming noise"),
        ({"max_input_size": 0}, "max_input_size"),
        ({"max_output_size": 2.5}, "max_output_size"),
    ],
)
def test_bad_model_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        analog.PCMNoiseModel(**kwargs)


@pytest.mark.parametrize("t", [-1.0, float("nan"), float("inf"), (1.0, 2.0), True])
def test_bad_time_refused(t):
    w = _w()
    p = analog.program_conductances(jax.random.key(0), w, M)
    g = jnp.ones((4,), jnp.float32)
    calls = [
        lambda: analog.drift(jax.random.key(0), g, t, M),
        lambda: analog.read_noise(jax.random.key(0), g, t, M),
        lambda: analog.weights_at(jax.random.key(0), p, t, M),
        lambda: analog.inference_weights(jax.random.key(0), w, t, M),
        lambda: analog.params_at(jax.random.key(0), {"w": p}, t, M),
        lambda: analog.noisy_params(jax.random.key(0), {"w": w}, M, t=t),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="t="):
            call()
    with pytest.raises(ValueError, match="t="):
        bdrift.accuracy_vs_time(lambda p, x: x, {}, jnp.ones((2, 2)), jnp.zeros(2), times=(t,))


def test_other_bad_inputs_refused():
    g = jnp.ones((4,), jnp.float32)
    with pytest.raises(ValueError, match="typed key"):
        analog.drift(jax.random.PRNGKey(0), g, 1.0, M)  # a legacy uint32 key
    with pytest.raises(ValueError, match="float array"):
        analog.program_conductances(jax.random.key(0), jnp.ones((3, 3), jnp.int32), M)
    with pytest.raises(ValueError, match="x_ref"):
        analog.inference_weights(jax.random.key(0), _w(), 1.0, M, x_ref=jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="same matrix"):
        analog.global_drift_compensation(jnp.ones((3, 2)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="compensate"):
        analog.inference_weights(jax.random.key(0), _w(), 1.0, M, compensate="yes")
    with pytest.raises(ValueError, match="PCMNoiseModel"):
        bdrift.accuracy_vs_time(lambda p, x: x, {}, jnp.ones((2, 2)), jnp.zeros(2), model="pcm")
