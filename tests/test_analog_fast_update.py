"""The fast pulsed-update path of analog.pulse_update against independent references.

* packed Bernoulli trains: slot frequencies against the quantised probabilities;
* fused coincidence counts: exact against a per-sample numpy popcount;
* the one-pass device update: exact (noise-free) against pulses applied one at a time, and the
  noise's mean and variance against per-pulse Gaussian noise;
* the whole update: statistically against a sequential per-pulse numpy simulation of
  Gokmen & Vlasov's scheme (each sample, slot and coincidence applied in order, with a Gaussian
  per pulse), with fixed seeds and stated tolerances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import analog
from analog import _counter_rng as R
from analog import _pulse_kernels as K
from analog import _tiles as T
from analog import _update as U


def rkey(seed):
    return jax.random.key(seed, impl="rbg")


def _popcount(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.uint64)
    return np.array([bin(int(v)).count("1") for v in a.ravel()]).reshape(a.shape)


@pytest.mark.parametrize("prob_bits", [8, 12])
def test_train_words_fire_with_the_quantised_probability(prob_bits):
    full = 2**prob_bits
    p = np.array([0.0, 0.4 / full, 1.0 / full, 0.1, 0.5, 0.77, 1 - 1.0 / full, 1.0], np.float32)
    n = 4000  # trains per probability
    bl = 45  # two words, 13 slots in the second
    seeds = R._key_seeds(rkey(0))
    w = np.asarray(K._train_words(seeds, 1, jnp.asarray(np.tile(p, (n, 1))), bl, prob_bits))
    assert w.shape == (n, 2, p.size) and w.dtype == np.uint32
    assert not (w[:, 1] >> 13).any()  # slots past bl never fire
    bits = (w[..., None] >> np.arange(32, dtype=np.uint32)) & 1  # (n, 2, P, 32)
    bits = np.concatenate([bits[:, 0], bits[:, 1, :, :13]], axis=-1)  # (n, P, bl)
    q = np.round(p * full) / full
    freq = bits.mean(axis=(0, 2))
    se = np.sqrt(q * (1 - q) / (n * bl)) + 1e-12
    assert np.all(np.abs(freq - q) <= 5 * se), (freq, q)
    assert freq[0] == 0 and freq[-1] == 1 and freq[1] == 0  # 0.4 / 2^k rounds to 0
    # slots of one train and the trains of neighbouring rows are uncorrelated
    b = bits[:, 4].astype(np.float64)  # p = 0.5
    assert abs(np.corrcoef(b[:, :-1].ravel(), b[:, 1:].ravel())[0, 1]) < 0.02
    assert abs(np.corrcoef(bits[:, 4].ravel(), bits[:, 5].ravel())[0, 1]) < 0.02


def test_different_keys_and_streams_give_unrelated_words():
    a = np.asarray(R._hash_bits(R._key_seeds(rkey(0)), 1, (4096,)))
    b = np.asarray(R._hash_bits(R._key_seeds(rkey(1)), 1, (4096,)))
    c = np.asarray(R._hash_bits(R._key_seeds(rkey(0)), 2, (4096,)))
    t = np.asarray(R._hash_bits(R._key_seeds(jax.random.key(0)), 1, (4096,)))  # threefry key
    for other in (b, c, t):
        assert np.mean(a == other) < 0.01
    bits = (a[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    np.testing.assert_allclose(bits.mean(0), 0.5, atol=0.04)  # every bit position fair


@pytest.mark.parametrize("b,bl", [(5, 31), (37, 31), (3, 70)])  # unrolled, scanned, 3 words
def test_coincidence_counts_match_a_per_sample_popcount(b, bl):
    rng = np.random.default_rng(b + bl)
    th, tw, r, c = 8, 4, 2, 3
    words = -(-bl // 32)
    wx = rng.integers(0, 2**32, (b, words, r * th), dtype=np.uint64).astype(np.uint32)
    wd = rng.integers(0, 2**32, (b, words, c * tw), dtype=np.uint64).astype(np.uint32)
    wx &= rng.integers(0, 2**32, wx.shape, dtype=np.uint64).astype(np.uint32)  # sparser
    sx = rng.random((b, r * th)) < 0.5
    sd = rng.random((b, c * tw)) < 0.5
    mask = lambda s: np.where(s, np.uint32(0xFFFFFFFF), np.uint32(0))
    up, tot = K._coincidence_counts(
        jnp.asarray(wx), jnp.asarray(mask(sx)), jnp.asarray(wd), jnp.asarray(mask(sd)), (th, tw)
    )
    want_up = np.zeros((r * th, c * tw), np.int64)
    want_tot = np.zeros_like(want_up)
    for i in range(b):
        cnt = _popcount(wx[i].T[:, None, :] & wd[i].T[None, :, :]).sum(-1)  # (in, out)
        want_tot += cnt
        want_up += np.where(sx[i][:, None] == sd[i][None, :], cnt, 0)
    to_tiles = lambda a: a.reshape(r, th, c, tw).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(np.asarray(up), to_tiles(want_up))
    np.testing.assert_array_equal(np.asarray(tot), to_tiles(want_tot))


DEVICES = {
    "ConstantStep": analog.ConstantStep(
        dw_min=0.02, up_down=0.1, dw_min_dtod=0.3, up_down_dtod=0.05, bounds_dtod=0.2
    ),
    "LinearStep": analog.LinearStep(
        dw_min=0.02, gamma_up=0.3, gamma_down=0.6, up_down=-0.1, dw_min_dtod=0.3, bounds_dtod=0.2
    ),
    "SoftBounds": analog.SoftBounds(dw_min=0.02, dw_min_dtod=0.3),
    "ExpStep": analog.ExpStep(dw_min=0.02, up_down=0.2, dw_min_dtod=0.2),
    "PowStep": analog.PowStep(dw_min=0.02, gamma_up=0.5, gamma_down=1.5, dw_min_dtod=0.2),
}


@pytest.mark.parametrize("name", list(DEVICES))
@pytest.mark.parametrize("pot_first", [True, False])
def test_step_two_equals_pulses_one_at_a_time(name, pot_first):
    """Noise-free: n1 pulses then n2 of the other polarity, as single pulses through step()."""
    dev = DEVICES[name]
    shape = (6, 50)
    var = dev.sample_variation(rkey(0), shape)
    rng = np.random.default_rng(1)
    g = jnp.asarray(rng.uniform(0, 1, shape), jnp.float32)
    n1 = rng.integers(0, 40, shape)  # up to 40 pulses: some reach a bound
    n2 = rng.integers(0, 40, shape)
    got = dev.step_two(
        g,
        jnp.asarray(n1, jnp.float32),
        jnp.asarray(n2, jnp.float32),
        None,
        var,
        pot_first=pot_first,
    )
    want = dev.clip(g, var)
    s1, s2 = (1.0, -1.0) if pot_first else (-1.0, 1.0)
    for k in range(40):
        want = dev.step(want, jnp.asarray(np.where(n1 > k, s1, 0.0), jnp.float32), variation=var)
    for k in range(40):
        want = dev.step(want, jnp.asarray(np.where(n2 > k, s2, 0.0), jnp.float32), variation=var)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_step_two_noise_has_the_per_pulse_mean_and_variance():
    """Constant steps: the one noise value per device has the variance of n Gaussian pulses."""
    dev = analog.ConstantStep(dw_min=0.001, up_down=0.2, dw_min_std=0.3)
    shape = (400, 500)
    var = dev.nominal_variation(shape)
    g = jnp.full(shape, 0.5, jnp.float32)
    n1, n2 = 5.0, 3.0
    z = R._normal_ih4(R._hash_bits(R._key_seeds(rkey(3)), 0, shape))
    got = (
        np.asarray(
            dev.step_two(g, jnp.full(shape, n1), jnp.full(shape, n2), z, var, pot_first=True)
        )
        - 0.5
    )
    # sequential reference: every pulse draws its own Gaussian step dw (1 + std N(0, 1))
    rng = np.random.default_rng(4)
    up, down = 0.001 * 1.2, 0.001 * 0.8
    ref = up * (n1 + 0.3 * rng.standard_normal((int(n1),) + shape).sum(0)) - down * (
        n2 + 0.3 * rng.standard_normal((int(n2),) + shape).sum(0)
    )
    want_std = 0.3 * np.sqrt(n1 * up**2 + n2 * down**2)
    se = want_std / np.sqrt(got.size)
    assert abs(got.mean() - (n1 * up - n2 * down)) < 5 * se
    assert abs(ref.mean() - got.mean()) < 7 * se
    assert abs(got.std() / want_std - 1) < 0.01  # 200,000 devices: SE of std ~0.2%
    assert abs(ref.std() / got.std() - 1) < 0.015
    zs = np.asarray(z)
    assert abs(zs.mean()) < 0.01 and abs(zs.std() - 1) < 0.01 and np.abs(zs).max() <= 3.47


def _sequential_reference(t, x, d, lr, bl, reps, seed):
    """Gokmen & Vlasov, one pulse at a time (numpy): for each sample and slot, every row and
    column fires independently; each coincidence moves G+ and G- one step in opposite
    directions with its own Gaussian cycle-to-cycle noise, clipped at every pulse."""
    dev = t.device
    rng = np.random.default_rng(seed)
    from_t = lambda a: np.asarray(T._from_tiles(jnp.asarray(a, jnp.float32), t.shape))
    vp = [
        from_t(a)
        for a in (t.var_plus.dw_scale, t.var_plus.up_down, t.var_plus.g_min, t.var_plus.g_max)
    ]
    vm = [
        from_t(a)
        for a in (t.var_minus.dw_scale, t.var_minus.up_down, t.var_minus.g_min, t.var_minus.g_max)
    ]
    gp = np.broadcast_to(from_t(t.g_plus), (reps, *t.shape)).copy()
    gm = np.broadcast_to(from_t(t.g_minus), (reps, *t.shape)).copy()
    dw = float(analog.weight_step(t))
    px, pd = (np.asarray(a) for a in U._probabilities(x, d, jnp.float32(lr), dw, bl))
    sgn = np.sign(np.asarray(x))[:, :, None] * np.sign(np.asarray(d))[:, None, :]

    def pulse(g, v, direction, fire):
        scale, ud, lo, hi = v
        step = dev.dw_min * scale * np.where(direction > 0, 1 + ud, 1 - ud)
        noise = 1 + dev.dw_min_std * rng.standard_normal(g.shape)
        return np.where(fire, np.clip(g + direction * step * noise, lo, hi), g)

    for b in range(x.shape[0]):
        for _ in range(bl):
            fx = rng.random((reps, x.shape[1], 1)) < px[b][None, :, None]
            fd = rng.random((reps, 1, d.shape[1])) < pd[b][None, None, :]
            fire = fx & fd & (sgn[b] != 0)
            gp = pulse(gp, vp, sgn[b], fire)
            gm = pulse(gm, vm, -sgn[b], fire)
    return (gp - gm) * float(t.w_scale)


def test_fast_update_matches_the_sequential_per_pulse_reference():
    """Mid-range weights (no bound reached): mean and spread of every weight's change over
    1500 repeats agree with the sequential simulation within 5 standard errors (mean) and
    15% (standard deviation); prob_bits=16 makes the probability quantisation negligible."""
    dev = analog.ConstantStep(
        dw_min=0.01, up_down=0.1, dw_min_dtod=0.3, up_down_dtod=0.05, dw_min_std=0.3
    )
    w = jax.random.uniform(rkey(0), (12, 7), jnp.float32, -0.2, 0.2)
    t = analog.init_tiles(rkey(1), w, dev, (8, 4), w_max=1.0)
    x = jax.random.uniform(rkey(2), (5, 12), jnp.float32, -1, 1)
    d = jax.random.uniform(rkey(3), (5, 7), jnp.float32, -1, 1)
    lr, bl, reps = 0.05, 31, 1500
    keys = jax.random.split(rkey(4), reps)
    fast = jax.vmap(
        lambda k: analog.read_weights(analog.pulse_update(t, x, d, lr, k, bl=bl, prob_bits=16)[0])
    )(keys)
    fast = np.asarray(fast) - np.asarray(analog.read_weights(t))
    ref = _sequential_reference(t, x, d, lr, bl, reps, seed=5) - np.asarray(analog.read_weights(t))
    se = np.sqrt(fast.var(0) / reps + ref.var(0) / reps) + 1e-9
    assert np.all(np.abs(fast.mean(0) - ref.mean(0)) < 5 * se)
    assert np.corrcoef(fast.mean(0).ravel(), ref.mean(0).ravel())[0, 1] > 0.99
    ratio = fast.std(0) / ref.std(0)
    assert np.all(np.abs(ratio - 1) < 0.15), ratio
    # the expectation of the scheme is lr x^T d up to each device's own step size (dtod)
    assert np.corrcoef(fast.mean(0).ravel(), lr * np.asarray(x.T @ d).ravel())[0, 1] > 0.95


def test_fast_and_reference_impls_agree_in_distribution():
    dev = analog.ConstantStep(dw_min=0.005, dw_min_dtod=0.2, dw_min_std=0.3)
    t = analog.init_tiles(rkey(0), jnp.zeros((20, 10), jnp.float32), dev, (8, 8), w_max=1.0)
    x = jax.random.uniform(rkey(1), (3, 20), jnp.float32, -1, 1)
    d = jax.random.uniform(rkey(2), (3, 10), jnp.float32, -1, 1)
    keys = jax.random.split(rkey(3), 1000)
    run = lambda impl: np.asarray(
        jax.vmap(
            lambda k: analog.read_weights(analog.pulse_update(t, x, d, 0.02, k, impl=impl)[0])
        )(keys)
    )
    fast, ref = run("fast"), run("reference")
    se = np.sqrt((fast.var(0) + ref.var(0)) / 1000) + 1e-9
    assert np.all(np.abs(fast.mean(0) - ref.mean(0)) < 5 * se + 2e-4)  # + 8-bit quantisation
    assert np.all(np.abs(fast.std(0) / ref.std(0) - 1) < 0.2)


def test_fast_pulse_count_is_the_number_of_coincidences():
    dev = analog.ConstantStep(dw_min=0.01)
    t = analog.init_tiles(rkey(0), jnp.zeros((9, 5), jnp.float32), dev, (4, 4), w_max=1.0)
    x = jax.random.uniform(rkey(1), (4, 9), jnp.float32, -1, 1)
    d = jax.random.uniform(rkey(2), (4, 5), jnp.float32, -1, 1)
    t2, pulses = analog.pulse_update(t, x, d, 0.1, rkey(3))
    # noise-free constant steps far from the bounds: every pulse pair moves 2 dw_min w_scale
    moved = np.abs(np.asarray(analog.read_weights(t2))).sum()
    net = float(pulses) / 2
    assert net > 0 and moved <= net * float(analog.weight_step(t)) + 1e-5


def test_fast_deterministic_mode_and_bad_options():
    dev = analog.ConstantStep(dw_min=0.01)
    t = analog.init_tiles(rkey(0), jnp.zeros((3, 2), jnp.float32), dev, (2, 2), w_max=1.0)
    x = jnp.asarray([[1.0, -0.5, 0.2]], jnp.float32)
    d = jnp.asarray([[0.3, -0.04]], jnp.float32)
    a, pa = analog.pulse_update(t, x, d, 1.0, None, mode="deterministic")
    b, pb = analog.pulse_update(t, x, d, 1.0, None, mode="deterministic", impl="reference")
    np.testing.assert_allclose(analog.read_weights(a), analog.read_weights(b), atol=1e-6)
    assert float(pa) == float(pb)
    with pytest.raises(ValueError, match="impl"):
        analog.pulse_update(t, x, d, 1.0, rkey(0), impl="turbo")
    with pytest.raises(ValueError, match="prob_bits"):
        analog.pulse_update(t, x, d, 1.0, rkey(0), prob_bits=3)


# ---------------------------------------------------------------------------------------------
# Update BL management (aihwkit's update_bl_management) and the matmul count path.
# ---------------------------------------------------------------------------------------------


def _random_trains(rng, b, words, n, slots):
    """Random packed trains whose slots >= ``slots`` are empty."""
    w = rng.integers(0, 2**32, (b, words, n), dtype=np.uint64).astype(np.uint32)
    w &= rng.integers(0, 2**32, w.shape, dtype=np.uint64).astype(np.uint32)  # sparser
    keep = np.zeros(words, np.uint64)
    for k in range(words):
        used = min(max(slots - 32 * k, 0), 32)
        keep[k] = (1 << used) - 1
    return w & keep.astype(np.uint32)[None, :, None]


@pytest.mark.parametrize(
    "b,slots,bl",
    [
        (1, 1, 31),
        (5, 1, 31),
        (20, 2, 31),
        (7, 4, 31),
        (20, 8, 31),
        (37, 8, 31),
        (3, 5, 70),
        (40, 8, 40),
    ],
)
def test_matmul_and_popcount_counts_agree_exactly(b, slots, bl):
    """The same trains give bit-identical up, down and total counts by both paths: one
    base-M product (b * slots < 256) and the two-product form (37 * 8, 40 * 8 >= 256)."""
    rng = np.random.default_rng(100 * b + slots)
    th, tw, r, c = 8, 4, 2, 3
    words = -(-bl // 32)
    wx = _random_trains(rng, b, words, r * th, slots)
    wd = _random_trains(rng, b, words, c * tw, slots)
    wx[:, :, -3:] = 0  # padded rows: zero trains, as in the update
    mask = lambda s: np.where(s, np.uint32(0xFFFFFFFF), np.uint32(0))
    nx = mask(rng.random((b, r * th)) < 0.5)
    nd = mask(rng.random((b, c * tw)) < 0.3)
    args = tuple(map(jnp.asarray, (wx, nx, wd, nd)))
    pop = K._popcount_counts(*args, (th, tw))
    mat = jax.jit(K._matmul_counts, static_argnums=(4, 5))(*args, (th, tw), slots)
    for a, m in zip(pop, mat):
        assert a.dtype == m.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(m))
    assert float(pop[0].sum() + pop[1].sum()) == int(pop[2]) > 0
    # and both equal an independent numpy count of the first word's slots
    bits = lambda w: (w[:, 0, None, :] >> np.arange(32, dtype=np.uint32)[None, :, None]) & 1
    coinc = np.einsum("bti,btj->bij", bits(wx).astype(np.int64), bits(wd).astype(np.int64))
    agree = (nx[:, :, None] != 0) == (nd[:, None, :] != 0)
    to_tiles = lambda m: m.reshape(r, th, c, tw).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(np.asarray(mat[0]), to_tiles((coinc * agree).sum(0)))
    np.testing.assert_array_equal(np.asarray(mat[1]), to_tiles((coinc * ~agree).sum(0)))


def test_train_words_with_lengths_are_prefixes_of_the_full_trains():
    n, bl = 300, 45
    p = jnp.asarray(np.random.default_rng(0).random((6, n)), jnp.float32)
    lengths = jnp.asarray([1, 3, 8, 31, 33, 45], jnp.int32)
    seeds = R._key_seeds(rkey(2))
    full = np.asarray(K._train_words(seeds, 1, p, bl, 8))
    short = np.asarray(K._train_words(seeds, 1, p, bl, 8, lengths))
    bits = lambda w: (
        ((w[..., None] >> np.arange(32, dtype=np.uint32)) & 1)
        .transpose(0, 2, 1, 3)
        .reshape(6, n, -1)[:, :, :bl]
    )
    fb, sb = bits(full), bits(short)
    for b, length in enumerate(np.asarray(lengths)):
        np.testing.assert_array_equal(sb[b, :, :length], fb[b, :, :length])
        assert not sb[b, :, length:].any()
        assert sb[b].any()


def test_train_lengths_follow_aihwkit():
    """BL_b = clip(ceil(lr max|x_b| max|d_b| / dw), 1, bl): 2.3 -> 3, 0 -> 1, 40 -> bl, NaN
    -> bl (the full train, whose probabilities are then NaN and fire nothing)."""
    x = jnp.asarray([[1.0, -0.5], [0.0, 0.0], [2.0, 1.0], [1.0, jnp.nan], [1.0, 1.0]])
    d = jnp.asarray([[0.5, -0.2], [1.0, 1.0], [-4.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    dw = 0.125
    lr = jnp.float32(2.3 * dw / 0.5)  # sample 0: lr * 1 * 0.5 / dw = 2.3
    got = np.asarray(U._train_lengths(x, d, lr, dw, 31))
    np.testing.assert_array_equal(got, [3, 1, 31, 31, 5])


def _noise_free_tiles(shape, tile_shape, dw_min=0.01):
    dev = analog.ConstantStep(dw_min=dw_min)
    return analog.init_tiles(rkey(0), jnp.zeros(shape, jnp.float32), dev, tile_shape, w_max=1.0)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_bl_management_limits_pulses_per_sample(impl):
    """lr max|x| max|d| / dw = 2.3: the trains have 3 slots, so a pair sees at most 3 pulses
    (and sees 3 often: per slot the largest pair fires with probability 2.3 / 3); without
    management 31 slots give more. Noise-free constant steps far from the bounds, so every
    weight moves by exactly (pulses) * dw."""
    t = _noise_free_tiles((4, 3), (4, 4))
    dw = float(analog.weight_step(t))
    x = jnp.asarray([[1.0, 1.0, 0.5, -1.0]], jnp.float32)
    d = jnp.asarray([[1.0, -1.0, 0.7]], jnp.float32)
    lr = 2.3 * dw
    assert int(U._train_lengths(x, d, jnp.float32(lr), dw, 31)[0]) == 3
    keys = jax.random.split(rkey(5), 400)

    def pulses(manage):
        run = jax.vmap(
            lambda k: analog.pulse_update(
                t, x, d, lr, k, impl=impl, prob_bits=16, bl_management=manage
            )
        )
        tiles, sent = run(keys)
        n = np.abs(np.asarray(jax.vmap(analog.read_weights)(tiles))) / dw
        np.testing.assert_allclose(n, np.round(n), atol=1e-3)  # whole pulses
        np.testing.assert_allclose(np.round(n).sum((1, 2)), np.asarray(sent) / 2)
        return np.round(n)

    managed = pulses(True)
    assert managed.max() == 3 and (managed[:, 0, 0] == 3).mean() > 0.3
    assert abs(managed[:, 0, 0].mean() - 2.3) < 0.1  # lr x d / dw, SE ~0.04
    assert pulses(False).max() > 3


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_bl_management_is_unbiased(impl):
    """The mean change over 2000 keys is lr x^T d for every weight within 5 standard errors,
    with train lengths from 1 to 17 slots across the batch (no probability truncated:
    every BL_b < bl); noise-free constant steps far from the bounds."""
    t = _noise_free_tiles((12, 7), (8, 4), dw_min=0.005)
    dw = float(analog.weight_step(t))
    x = jax.random.uniform(rkey(1), (5, 12), jnp.float32, -1, 1)
    d = jax.random.uniform(rkey(2), (5, 7), jnp.float32, -1, 1)
    d = d * jnp.asarray([0.02, 0.1, 0.3, 0.6, 1.0])[:, None]
    lr = 16.5 * dw / float(jnp.abs(x[4]).max() * jnp.abs(d[4]).max())
    lengths = np.asarray(U._train_lengths(x, d, jnp.float32(lr), dw, 31))
    assert lengths.min() == 1 and lengths.max() == 17 and len(set(lengths)) >= 4
    reps = 2000
    keys = jax.random.split(rkey(3), reps)
    ws = np.asarray(
        jax.vmap(
            lambda k: analog.read_weights(
                analog.pulse_update(t, x, d, lr, k, impl=impl, prob_bits=16, bl_management=True)[0]
            )
        )(keys)
    )
    want = lr * np.asarray(x.T @ d)
    se = ws.std(0) / np.sqrt(reps) + 1e-9
    assert np.all(np.abs(ws.mean(0) - want) < 5 * se), np.abs(ws.mean(0) - want) / se
    assert np.corrcoef(ws.mean(0).ravel(), want.ravel())[0, 1] > 0.99


def test_bl_managed_fast_update_equals_the_popcount_pipeline():
    """Whatever branch lax.switch takes (longest train 1, 2, 3, 5, 8, 9 or 31 slots), the fast
    update equals drawing the same trains, counting them by popcount and one device pass."""
    dev = analog.ConstantStep(dw_min=0.01, up_down=0.1, dw_min_dtod=0.3, dw_min_std=0.3)
    t = analog.init_tiles(rkey(0), jnp.zeros((20, 10), jnp.float32), dev, (8, 8), w_max=1.0)
    x = jax.random.uniform(rkey(1), (6, 20), jnp.float32, -1, 1)
    d = jax.random.uniform(rkey(2), (6, 10), jnp.float32, -1, 1)
    dw = analog.weight_step(t)
    scale = float(dw / (jnp.abs(x).max(1) * jnp.abs(d).max(1)).max())

    @jax.jit
    def popcount_pipeline(x, d, lr, key):
        lengths = U._train_lengths(x, d, lr, dw, 31)
        px, pd = U._probabilities(x, d, lr, dw, lengths[:, None].astype(jnp.float32))
        seeds = R._key_seeds(key)
        pad = lambda a, n: jnp.pad(a, ((0, 0), (0, n - a.shape[1])))
        neg = lambda a: jnp.where(a < 0, jnp.uint32(0xFFFFFFFF), jnp.uint32(0))
        wx = K._train_words(seeds, 1, pad(px, 24), 31, 8, lengths)
        wd = K._train_words(seeds, 2, pad(pd, 16), 31, 8, lengths)
        up, down, total = K._popcount_counts(wx, neg(pad(x, 24)), wd, neg(pad(d, 16)), (8, 8))
        new = K._apply_counts(t, up, down, seeds, 3)
        return analog.read_weights(new), 2.0 * total.astype(jnp.float32), lengths.max()

    seen = set()
    for i, need in enumerate([0.7, 1.6, 2.5, 4.2, 7.9, 8.6, 40.0]):
        lr = jnp.float32(need * scale)
        got, sent = analog.pulse_update(t, x, d, lr, rkey(10 + i), bl_management=True)
        want, want_sent, longest = popcount_pipeline(x, d, lr, rkey(10 + i))
        seen.add(int(longest))
        np.testing.assert_allclose(analog.read_weights(got), want, atol=1e-6)
        assert float(sent) == float(want_sent) > 0
    assert seen == {1, 2, 3, 5, 8, 9, 31}


def test_bl_management_does_not_recompile(monkeypatch):
    """Data that need trains of 1 to 31 slots run one compiled update: the branch is chosen
    inside it (a tile shape no other test uses, so the first call traces once)."""
    traces = []
    inner = K._count_and_apply

    def counting(*args, **kwargs):
        traces.append(1)
        return inner(*args, **kwargs)

    monkeypatch.setattr(U, "_count_and_apply", counting)  # the name _update calls
    t = analog.init_tiles(
        rkey(0),
        jnp.zeros((13, 9), jnp.float32),
        analog.ConstantStep(dw_min=0.01, dw_min_std=0.2),
        (5, 7),
        w_max=1.0,
    )
    x = jax.random.uniform(rkey(1), (4, 13), jnp.float32, -1, 1)
    d = jax.random.uniform(rkey(2), (4, 9), jnp.float32, -1, 1)
    dw = float(analog.weight_step(t))
    longest = set()
    for i, s in enumerate([0.01, 0.05, 0.1, 0.3, 1.0, 3.0]):
        lr = jnp.float32(0.3)
        longest.add(int(U._train_lengths(x, d * s, lr, dw, 31).max()))
        new, _ = analog.pulse_update(t, x, d * s, lr, rkey(5 + i), bl_management=True)
        jax.block_until_ready(new.g_plus)
    assert len(longest) >= 4 and min(longest) <= 2 and max(longest) > 8, longest
    assert len(traces) == 1


def test_bl_management_must_be_a_bool():
    t = _noise_free_tiles((3, 2), (2, 2))
    x, d = jnp.ones((1, 3)), jnp.ones((1, 2))
    for bad in ("yes", 1, None, np.bool_(True)):
        with pytest.raises(TypeError, match="bl_management"):
            analog.pulse_update(t, x, d, 0.1, rkey(0), bl_management=bad)
    for impl in ("fast", "reference"):  # deterministic pulses draw no trains
        a, _ = analog.pulse_update(
            t, x, d, 0.1, None, mode="deterministic", impl=impl, bl_management=True
        )
        b, _ = analog.pulse_update(t, x, d, 0.1, None, mode="deterministic", impl=impl)
        np.testing.assert_array_equal(analog.read_weights(a), analog.read_weights(b))
