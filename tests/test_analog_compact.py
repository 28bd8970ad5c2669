"""The compact device state (16-bit conductances, 8-bit device codes) against the float32 state.

What the compact state keeps (analog/_compact.py), each checked here with fixed seeds:

* device-to-device spread: the codes are the float32 state's own draws to 1/64 of a standard
  deviation (tails past 3.94 standard deviations clipped); means and spreads within 1%;
* bounds: every device's bound on the conductance grid, within ``range bounds_dtod / 64 +
  lsb / 2`` of the float32 bound; pulses never cross it; stuck devices never move;
* mean step and step-to-step noise: one update of the compact state equals the float32 pass
  run on the state the codes stand for (same counts, same noise words) to one conductance
  code, with a rounding error of mean zero (5 standard errors) uncorrelated with the noise;
* closed forms: ``n`` up pulses on ConstantStep reach ``min(g0 + n dw, g_max)``; SoftBounds and
  ExpStep reach their closed-form curves, to one code.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import analog
from analog import _compact as CS
from analog import _counter_rng as R
from analog import _pulse_kernels as K
from analog import presets
from analog._tiles import _from_tiles

#: aihwkit 1.1.0's ConstantStepDevice defaults on a differential pair (the throughput workload)
AIHWKIT_CS = analog.ConstantStep(
    dw_min=0.001 / 1.2, dw_min_dtod=0.3, dw_min_std=0.3, up_down_dtod=0.01, bounds_dtod=0.3
)


def rkey(seed):
    return jax.random.key(seed, impl="rbg")


def _tiles(device, seed=0, n=256, scale=0.1):
    w = jax.random.uniform(rkey(seed), (n, n), jnp.float32, -scale, scale)
    full = analog.init_tiles(rkey(seed + 1), w, device, w_max=1.0)
    comp = analog.init_tiles(rkey(seed + 1), w, device, w_max=1.0, compact=True)
    return full, comp


def _pass(tiles, up, down, seed):
    """The update's device pass alone: ``up`` and ``down`` pulse counts per device pair."""
    return K._apply_counts(tiles, up, down, R._key_seeds(rkey(seed)), 3)


def _codes(g, comp):
    return (np.asarray(g, np.float64) - comp.device.g_min) / comp.lsb


def test_codes_are_the_float32_draws():
    dev = presets.TAOX_RERAM  # every spread and both stuck kinds
    full, comp = _tiles(dev)
    exp = analog.expand_tiles(comp)
    for vf, vc in ((full.var_plus, exp.var_plus), (full.var_minus, exp.var_minus)):
        np.testing.assert_array_equal(vf.stuck_on, vc.stuck_on)
        np.testing.assert_array_equal(vf.stuck_off, vc.stuck_off)
        live = ~np.asarray(vf.stuck_on | vf.stuck_off)
        for name, spread, nominal in (
            ("dw_scale", dev.dw_min_dtod, 1.0),
            ("up_down", dev.up_down_dtod, dev.up_down),
            ("g_max", dev.bounds_dtod * dev.range, dev.g_max),
        ):
            a, b = np.asarray(getattr(vf, name)), np.asarray(getattr(vc, name))
            inner = live & (np.abs(a - nominal) < 3.9 * spread)  # the clipped tails excepted
            # half a code step of z, plus a conductance code for the bound (rounded down)
            tol = spread * CS._Z_STEP / 2 + (comp.lsb if name == "g_max" else 0) + 1e-6
            assert np.max(np.abs(a - b)[inner]) <= tol, name
            assert abs(a[live].mean() - b[live].mean()) <= 0.01 * spread, name
            assert abs(a[live].std() / b[live].std() - 1) <= 0.01, name
        top = _codes(vc.g_max, comp)
        np.testing.assert_allclose(top, np.round(top), atol=1e-3)  # bounds on the grid
    assert comp.code_plus.dtype == jnp.uint16 and comp.par_plus.dw.dtype == jnp.int8
    # 2 bytes of conductance and 3 codes per device, against 26 in the float32 state
    per_device = sum(a.nbytes for a in jax.tree.leaves((comp.code_plus, comp.par_plus)))
    assert per_device == CS.bytes_per_device(dev) * comp.code_plus.size == 5 * comp.code_plus.size


def test_weights_and_mvm_read_the_codes():
    full, comp = _tiles(AIHWKIT_CS)
    wf, wc = np.asarray(analog.read_weights(full)), np.asarray(analog.read_weights(comp))
    # nearest code on each device: half a code each; a device at its bound moves with it
    below = lambda g, v: _from_tiles(g < v.g_max - 0.01, full.shape)
    inside = np.asarray(below(full.g_plus, full.var_plus) & below(full.g_minus, full.var_minus))
    assert inside.mean() > 0.8
    assert np.max(np.abs(wf - wc)[inside]) <= comp.lsb * float(comp.w_scale) * (1 + 1e-4)
    x = jax.random.uniform(rkey(9), (5, 256), jnp.float32)
    y = np.asarray(analog.mvm(comp, x), np.float64)
    ref = np.asarray(x, np.float64) @ wc.astype(np.float64)
    mag = np.abs(np.asarray(x, np.float64)) @ np.abs(wc.astype(np.float64))
    assert np.all(np.abs(y - ref) <= 4 * 256 * np.finfo(np.float32).eps * mag + 1e-30)
    yt = np.asarray(analog.mvm_transpose(comp, x[:, :256]), np.float64)
    np.testing.assert_allclose(yt, np.asarray(x, np.float64) @ wc.T, rtol=0, atol=1e-5)


def test_constant_step_closed_form():
    """n up pulses on G+ reach min(g0 + n dw_up, g_max), n down pulses on G- max(g0 - n dw_down,
    g_min), per device, to one code; the rounding has mean zero."""
    dev = dataclasses.replace(AIHWKIT_CS, dw_min_std=0.0)
    _, comp = _tiles(dev)
    exp = analog.expand_tiles(comp)
    n = jax.random.randint(rkey(5), comp.code_plus.shape, 0, 1600).astype(jnp.float32)
    new = analog.expand_tiles(_pass(comp, n, jnp.zeros_like(n), 7))
    v = exp.var_plus
    step = dev.dw_min * np.asarray(v.dw_scale, np.float64)
    want_p = np.minimum(
        np.asarray(exp.g_plus, np.float64) + np.asarray(n) * step * (1 + np.asarray(v.up_down)),
        np.asarray(v.g_max),
    )
    vm = exp.var_minus
    step_m = dev.dw_min * np.asarray(vm.dw_scale, np.float64) * (1 - np.asarray(vm.up_down))
    want_m = np.maximum(np.asarray(exp.g_minus, np.float64) - np.asarray(n) * step_m, dev.g_min)
    for got, want in ((new.g_plus, want_p), (new.g_minus, want_m)):
        err = _codes(got, comp) - _codes(want, comp)
        assert np.max(np.abs(err)) < 1.01  # stochastic rounding moves at most one code
        se = 0.5 / np.sqrt(err.size)  # a rounding error's std is at most half a code
        assert abs(err.mean()) < 5 * se, err.mean()
    assert bool(jnp.any(new.g_plus == exp.var_plus.g_max))  # some reached the bound


@pytest.mark.parametrize(
    "device",
    [
        analog.SoftBounds(dw_min=0.002, dw_min_dtod=0.3, up_down_dtod=0.05, bounds_dtod=0.15),
        dataclasses.replace(presets.TAOX_RERAM, dw_min_std=0.0),
    ],
    ids=["softbounds", "expstep"],
)
def test_curve_closed_forms(device):
    """The closed-form response (the float32 pass on the decoded state, which the device tests
    check against pulses applied one by one) to one code, in both directions at once."""
    _, comp = _tiles(device, seed=3)
    exp = analog.expand_tiles(comp)
    up = jax.random.randint(rkey(11), comp.code_plus.shape, 0, 80).astype(jnp.float32)
    down = jax.random.randint(rkey(12), comp.code_plus.shape, 0, 80).astype(jnp.float32)
    want = _pass(exp, up, down, 13)
    got = analog.expand_tiles(_pass(comp, up, down, 13))
    for a, b in ((got.g_plus, want.g_plus), (got.g_minus, want.g_minus)):
        err = _codes(a, comp) - _codes(b, comp)
        assert np.max(np.abs(err)) < 1.01
        assert abs(err.mean()) < 5 * 0.5 / np.sqrt(err.size)


@pytest.mark.parametrize("device", [AIHWKIT_CS, presets.TAOX_RERAM], ids=["constant", "taox"])
def test_mean_step_and_noise(device):
    """One noisy update: per device within one code of the float32 pass with the same noise
    words; mean step and step-to-step spread as the model states; rounding uncorrelated with
    the noise (its word is reused for the rounding)."""
    _, comp = _tiles(device, seed=20)
    exp = analog.expand_tiles(comp)
    n = jax.random.randint(rkey(21), comp.code_plus.shape, 1, 5).astype(jnp.float32)
    zero = jnp.zeros_like(n)
    want = _pass(exp, n, zero, 22)
    got = analog.expand_tiles(_pass(comp, n, zero, 22))
    err = _codes(got.g_plus, comp) - _codes(want.g_plus, comp)
    assert np.max(np.abs(err)) < 1.01
    assert abs(err.mean()) < 5 * 0.5 / np.sqrt(err.size)
    z = np.asarray(R._normal_ih4(R._hash_bits(R._key_seeds(rkey(22)), 3, (2, *n.shape)))[0])
    assert abs(np.corrcoef(err.ravel(), z.ravel())[0, 1]) < 0.01
    # the step statistics of the compact state, where no bound or stuck device interferes
    v = exp.var_plus
    g0, g1 = np.asarray(exp.g_plus, np.float64), np.asarray(got.g_plus, np.float64)
    # away from the bounds, and steps of at least 12 codes (a step scale of 0.5 or more), where
    # the rounding's variance (at most a quarter of a code) is under 2% of the noise's
    free = ~np.asarray(v.stuck_on | v.stuck_off) & (g0 > 0.3) & (g0 < 0.7)
    free &= (np.asarray(v.dw_scale) > 0.5) & (g0 < np.asarray(v.g_max) - 0.05)
    x0, nn = (g0 - device.g_min) / np.asarray(v.g_max - v.g_min), np.asarray(n)
    rng = np.asarray(v.g_max - v.g_min, np.float64)
    a = device.dw_min * np.asarray(v.dw_scale) * (1 + np.asarray(v.up_down)) / rng
    mean = rng * (np.asarray(device._up(x0, nn, a)) - x0)  # noise-free change
    r = ((g1 - g0) / mean)[free]  # relative change: 1 + dw_min_std / sqrt(n) * z
    k = np.sqrt(nn[free])
    assert abs(r.mean() - 1) < 5 * device.dw_min_std / np.sqrt(r.size)
    assert abs(np.std((r - 1) * k) / device.dw_min_std - 1) < 0.03


def test_bounds_and_stuck_devices_are_exact():
    dev = dataclasses.replace(presets.TAOX_RERAM, dw_min_std=0.0)  # noise would leave the bound
    _, comp = _tiles(dev, seed=30)
    big = jnp.full(comp.code_plus.shape, 5000.0)
    new = _pass(comp, big, jnp.zeros_like(big), 31)
    top = CS.bound_codes(dev, new.par_plus, big.shape)
    on, off = CS._stuck(new.par_plus)
    cp = np.asarray(new.code_plus, np.int64)
    np.testing.assert_array_equal(cp[~np.asarray(off)], np.asarray(top)[~np.asarray(off)])
    assert np.all(cp[np.asarray(off)] == 0) and np.asarray(off).any() and np.asarray(on).any()
    # G- got the same pulses depressing: at its lower bound (code 1 only where the float32
    # model itself lands a hair above it: exp and log of the ExpStep curve round)
    low = np.asarray(new.code_minus)[~np.asarray(CS._stuck(new.par_minus)[0])]
    assert np.all(low <= 1) and np.mean(low == 0) > 0.99
    # stuck devices hold their code through any update
    again = _pass(new, jnp.zeros_like(big), big, 32)
    for a, b, cv in ((new, again, new.par_plus), (new, again, new.par_minus)):
        stuck = np.asarray(CS._stuck(cv)[0] | CS._stuck(cv)[1])
        c_a = np.asarray(a.code_plus if cv is new.par_plus else a.code_minus)
        c_b = np.asarray(b.code_plus if cv is new.par_plus else b.code_minus)
        np.testing.assert_array_equal(c_a[stuck], c_b[stuck])
    # and a device that receives no pulse keeps its code exactly, even with noise on
    zero = jnp.zeros_like(big)
    same = _pass(comp, zero, zero, 33)
    np.testing.assert_array_equal(same.code_plus, comp.code_plus)
    np.testing.assert_array_equal(same.code_minus, comp.code_minus)


@pytest.mark.parametrize("bl_management", [False, True])
def test_pulse_update_matches_the_float32_state(bl_management):
    """The whole update, same key: the same trains, counts and noise words as the float32
    state the codes stand for; conductances within one code, pulses sent identical."""
    _, comp = _tiles(AIHWKIT_CS, seed=40, n=100)
    exp = analog.expand_tiles(comp)
    x = jax.random.uniform(rkey(41), (20, 100), jnp.float32)
    d = jax.random.normal(rkey(42), (20, 100), jnp.float32) * 0.5
    cfg = analog.UpdateConfig(bl_management=bl_management)
    new_c, sent_c = analog.pulse_update(comp, x, d, 0.05, rkey(43), update=cfg)
    new_f, sent_f = analog.pulse_update(exp, x, d, 0.05, rkey(43), update=cfg)
    assert isinstance(new_c, analog.CompactTiles) and float(sent_c) == float(sent_f) > 0
    got = analog.expand_tiles(new_c)
    for a, b in ((got.g_plus, new_f.g_plus), (got.g_minus, new_f.g_minus)):
        assert np.max(np.abs(_codes(a, comp) - _codes(b, comp))) < 1.01
    dw = np.asarray(analog.read_weights(new_c)) - np.asarray(analog.read_weights(comp))
    want = 0.05 * np.asarray(x).T @ np.asarray(d)
    assert np.corrcoef(dw.ravel(), want.ravel())[0, 1] > 0.5
    det, _ = analog.pulse_update(comp, x, d, 0.05, rkey(44), mode="deterministic")
    assert isinstance(det, analog.CompactTiles)


def test_compact_state_refusals():
    w = jnp.zeros((8, 8), jnp.float32)
    with pytest.raises(ValueError, match="at least 16"):
        analog.init_tiles(rkey(0), w, presets.IDEAL, compact=True)  # dw_min 1e-6
    with pytest.raises(TypeError, match="compact=1"):
        analog.init_tiles(rkey(0), w, AIHWKIT_CS, compact=1)
    comp = analog.init_tiles(rkey(0), w, AIHWKIT_CS, compact=True)
    x = jnp.ones((2, 8), jnp.float32)
    with pytest.raises(ValueError, match="fast path only"):
        analog.pulse_update(comp, x, x, 0.1, rkey(1), impl="reference")
    dev = analog.ConstantStep(dw_min=0.01)
    comp = analog.init_tiles(rkey(0), w, dev, compact=True)
    with pytest.raises(ValueError, match="round each change stochastically"):
        analog.pulse_update(comp, x, x, 0.1, None, mode="deterministic")
    with pytest.raises(TypeError, match=r"pass analog\.Tiles"):
        analog.compact_tiles(comp)
