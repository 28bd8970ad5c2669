"""analog.nnx.Linear / Conv and analog.pulsed_sgd: in-situ training through the crossbar.

Independent references: ``x @ W`` and ``lax.conv_general_dilated`` in float64 for the reads,
``jax.grad`` of the digital product for the backward read, and ``-lr x^T d`` for the
expectation of the pulsed update (Gokmen & Vlasov 2016, Eq. 2-3).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _tolerance import assert_close_ulps, dot_ulps
from flax import nnx

import analog
from analog import presets
from analog._insitu import crossbar_tiles

IDEAL_IO = analog.IOConfig.ideal()
#: A symmetric constant-step device without variation or noise: every coincidence moves a
#: weight by exactly one step, so the update's expectation is the model's.
CLEAN = analog.ConstantStep(dw_min=0.001)


def _linear(n_in=10, n_out=6, batch=4, **kw):
    kw = {"device": presets.IDEAL, "tile_shape": (4, 4), "w_max": 1.0, **kw}
    return analog.nnx.Linear(n_in, n_out, batch_size=batch, rngs=nnx.Rngs(0), **kw)


def _weights(layer) -> np.ndarray:
    return np.asarray(analog.read_weights(layer.crossbar.get_value().tiles), np.float64)


def _tap_grads(layer, x):
    """``(params, grads)`` of ``sum(layer(x))``: the tap's gradient holds ``x`` and ``d = 1``."""
    graphdef, params = nnx.split(layer)
    return params, jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x)))(params)


def test_mvm_with_ideal_io_is_x_at_w():
    w = jax.random.normal(jax.random.key(0), (37, 19), jnp.float32) * 0.3
    t = analog.init_tiles(jax.random.key(1), w, presets.IDEAL, (8, 8))
    x = jax.random.normal(jax.random.key(2), (5, 37), jnp.float32)
    x64, w64 = np.asarray(x, np.float64), np.asarray(analog.read_weights(t), np.float64)
    # the tiles' partial sums are one reordering of the float32 dot product
    assert_close_ulps(
        analog.mvm(t, x, IDEAL_IO), x64 @ w64, ulps=dot_ulps(37), magnitude=abs(x64) @ abs(w64)
    )


@pytest.mark.parametrize("nm", [True, False])
def test_linear_with_ideal_io_reads_x_at_w_plus_bias(nm):
    layer = _linear(noise_management=nm)
    x = jax.random.normal(jax.random.key(3), (7, 10), jnp.float32)  # not the tap's batch
    w, x64 = _weights(layer), np.asarray(x, np.float64)
    # abs-max scaling divides and multiplies by max|x_b|: two more roundings than the dot
    assert_close_ulps(layer(x), x64 @ w, ulps=dot_ulps(10) + 4, magnitude=abs(x64) @ abs(w))


def test_input_gradient_is_the_transposed_read_and_the_tap_records_x_and_d():
    layer = _linear()
    graphdef, params = nnx.split(layer)
    x = jax.random.normal(jax.random.key(4), (4, 10), jnp.float32)
    c = jax.random.normal(jax.random.key(5), (4, 6), jnp.float32)

    def loss(p, x):
        return jnp.sum(jnp.tanh(nnx.merge(graphdef, p)(x)) * c)

    gp, gx = jax.grad(loss, argnums=(0, 1))(params, x)
    w = jnp.asarray(_weights(layer), jnp.float32)
    ref_x = jax.grad(lambda x: jnp.sum(jnp.tanh(x @ w) * c))(x)  # the digital product
    d = np.asarray(c * (1 - jnp.tanh(x @ w) ** 2), np.float64)
    assert_close_ulps(gx, ref_x, ulps=dot_ulps(10) + 16, magnitude=abs(d) @ abs(w.T) + 1e-6)
    tap = np.asarray(gp["crossbar"].get_value().tap)
    np.testing.assert_array_equal(tap[:, :10], np.asarray(x))
    assert_close_ulps(tap[:, 10:], d, ulps=dot_ulps(10) + 16, magnitude=abs(c))
    # no dense weight gradient: the tiles' cotangent is zero
    for leaf in jax.tree.leaves(gp["crossbar"].get_value().tiles):
        assert not np.any(np.asarray(leaf))


def test_pulsed_update_expectation_is_minus_lr_x_d():
    n_in, n_out, b, lr, trials = 6, 5, 3, 0.01, 256
    layer = _linear(n_in, n_out, b, device=CLEAN)
    graphdef, params = nnx.split(layer)
    x = jax.random.uniform(jax.random.key(6), (b, n_in), jnp.float32, -1, 1)
    c = jax.random.uniform(jax.random.key(7), (b, n_out), jnp.float32, -1, 1)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) * c))(params)  # d = c
    # 16-bit probabilities: the 8-bit default rounds them by up to 2^-9, a bias of its own
    cfg = analog.UpdateConfig(bl=31, prob_bits=16)

    @jax.jit
    @jax.vmap
    def delta_w(seed):
        tx = analog.pulsed_sgd(lr, update=cfg, seed=seed)
        new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
        cb, cb0 = new["crossbar"].get_value(), params["crossbar"].get_value()
        return analog.read_weights(cb.tiles) - analog.read_weights(cb0.tiles)

    dws = np.asarray(delta_w(jnp.arange(trials)), np.float64)
    expected = -lr * np.asarray(x, np.float64).T @ np.asarray(c, np.float64)
    step = float(analog.weight_step(params["crossbar"].get_value().tiles))
    assert lr * 1.0 / (31 * step) < 1  # no probability truncated: the expectation is exact
    # Each coincidence is one step of +-dw: the count per device is a sum of Bernoulli slots,
    # variance <= step * sum_b |lr x_b d_b|; 5 standard errors of the mean of `trials` draws.
    se = np.sqrt(step * lr * np.abs(np.asarray(x)).T @ np.abs(np.asarray(c)) / trials)
    assert np.all(np.abs(dws.mean(0) - expected) <= 5 * se + 1e-7)
    # and the draws are not all alike: it is a stochastic update, not the dense product
    assert np.std(dws, axis=0).max() > 0.5 * step


def _train_regression(layer, tx, steps):
    """``steps`` jitted steps of ``tx`` on a fixed random linear regression through ``layer``;
    returns the first loss, the last and the final optimizer state and params."""
    graphdef, params = nnx.split(layer)
    k1, k2 = jax.random.split(jax.random.key(8))
    x = jax.random.uniform(k1, (16, 8), jnp.float32, -1, 1)
    y = x @ jax.random.uniform(k2, (8, 3), jnp.float32, -0.5, 0.5)

    def loss(p):
        return jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    state, first = tx.init(params), float(loss(params))
    for _ in range(steps):
        params, state = step(params, state)
    return first, float(loss(params)), state, params


def test_training_an_analog_layer_in_situ_lowers_the_loss():
    layer = _linear(8, 3, 16, device=CLEAN, io=presets.TAOX_IO)
    tx = analog.pulsed_sgd(0.5, update=analog.UpdateConfig(bl=15))
    first, last, state, params = _train_regression(layer, tx, 40)
    assert last < 0.3 * first
    assert int(state.count) == 40 and float(state.pulses) > 0
    assert float(params["crossbar"].get_value().step) == 40.0


def test_conv_with_ideal_io_is_the_convolution_and_its_input_gradient():
    conv = analog.nnx.Conv(
        3, 5, 3, batch_size=2, input_size=(6, 6), rngs=nnx.Rngs(1), tile_shape=(8, 4), w_max=1.0
    )
    graphdef, params = nnx.split(conv)
    x = jax.random.normal(jax.random.key(9), (2, 6, 6, 3), jnp.float32)
    k = jnp.asarray(_weights(conv), jnp.float32).reshape(3, 3, 3, 5).transpose(1, 2, 0, 3)

    def ref(x):
        dn = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn)

    mag = np.asarray(
        jax.lax.conv_general_dilated(
            jnp.abs(x), jnp.abs(k), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    assert_close_ulps(conv(x), ref(x), ulps=dot_ulps(27) + 4, magnitude=mag)
    c = jax.random.normal(jax.random.key(10), (2, 6, 6, 5), jnp.float32)
    gp, gx = jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) * c), argnums=(0, 1))(
        params, x
    )
    ref_gx = jax.grad(lambda x: jnp.sum(ref(x) * c))(x)
    assert_close_ulps(gx, ref_gx, ulps=dot_ulps(45) + 4, magnitude=np.max(np.abs(ref_gx)))
    tap = gp["crossbar"].get_value().tap
    assert tap.shape == (2 * 36, 27 + 5)  # one recorded row per patch and sample


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="tile_shape"):
        _linear(tile_shape=(0, 4))
    with pytest.raises(ValueError, match="tile_shape"):
        _linear(tile_shape=(4,))
    with pytest.raises(ValueError, match="bl"):
        analog.UpdateConfig(bl=0)
    with pytest.raises(TypeError, match="UpdateConfig"):
        analog.pulsed_sgd(0.1, update={"bl": 8})
    with pytest.raises(TypeError, match="io_backward"):
        _linear(io_backward="ideal")
    with pytest.raises(ValueError, match="out_bound"):  # one bounded ADC, one not
        _linear(io=presets.TAOX_IO, io_backward=IDEAL_IO)
    with pytest.raises(ValueError, match="inp_bound"):
        _linear(io=analog.IOConfig(inp_bits=8, inp_bound=0.5))
    with pytest.raises(ValueError, match="batch_size"):
        _linear(batch=0)
    with pytest.raises(ValueError, match="in_features=10"):
        _linear()(jnp.ones((4, 9), jnp.float32))
    with pytest.raises(ValueError, match="padding"):
        analog.nnx.Conv(1, 1, 3, batch_size=1, input_size=(4, 4), rngs=nnx.Rngs(0), padding="X")
    params = nnx.split(_linear())[1]
    tx = analog.pulsed_sgd(0.1)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['devise'\]"):
        _linear(devise=presets.IDEAL)
    with pytest.raises(TypeError, match="device model"):
        _linear(device="taox")
    with pytest.raises(ValueError, match="fast_device"):
        _linear(gamma=0.5)


def test_a_gradient_at_a_batch_other_than_the_taps_is_refused_not_silently_untrained():
    layer = _linear(batch=4)
    graphdef, params = nnx.split(layer)
    x = jnp.ones((3, 10), jnp.float32)
    # a read at another size is fine (evaluation) ...
    assert nnx.merge(graphdef, params)(x).shape == (3, 6)
    # ... but its gradient could record no update: refused when traced, naming both sizes
    with pytest.raises(ValueError, match=r"batch of 3 rows.*built for 4"):
        jax.grad(lambda p: nnx.merge(graphdef, p)(x).sum())(params)


@pytest.mark.parametrize("tiki", [False, True])
def test_pulsed_sgd_and_tiki_taka_refuse_a_nonfinite_gradient(tiki):
    layer = _linear(device=CLEAN, fast_device=CLEAN if tiki else None)
    params, grads = _tap_grads(layer, jnp.ones((4, 10), jnp.float32).at[0, 0].set(jnp.nan))
    tx = analog.tiki_taka(0.1) if tiki else analog.pulsed_sgd(0.1)
    updates, state = tx.update(grads, tx.init(params), params)
    assert int(state.nonfinite) == 1 and int(state.count) == 0
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("tiki", [False, True])
def test_learning_rate_may_be_an_optax_schedule(tiki):
    # A schedule is read at the state's step count, as optax's optimizers read theirs: a
    # constant schedule gives the float's run bit for bit (same pulses, same key stream).
    make = analog.tiki_taka if tiki else analog.pulsed_sgd
    kw = {"device": CLEAN, "io": presets.TAOX_IO, "fast_device": CLEAN if tiki else None}
    runs = [
        _train_regression(_linear(8, 3, 16, **kw), make(lr), 3)
        for lr in (0.5, optax.constant_schedule(jnp.float32(0.5)))
    ]
    for a, b in zip(jax.tree.leaves(runs[0][3]), jax.tree.leaves(runs[1][3])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if tiki:
        return
    # A rate that is 0.5 at step 0 and 0 after: three steps pulse exactly what one step at 0.5
    # does (pulse probabilities scale with the rate, so a zero rate sends no pulse at all).
    first_only = lambda c: jnp.where(c < 1, jnp.float32(0.5), jnp.float32(0.0))
    *_, s3, p3 = _train_regression(_linear(8, 3, 16, **kw), make(first_only), 3)
    *_, s1, p1 = _train_regression(_linear(8, 3, 16, **kw), make(0.5), 1)
    assert float(s3.pulses) == float(s1.pulses) > 0 and int(s3.count) == 3
    np.testing.assert_array_equal(_weights_of(p3), _weights_of(p1))


def _weights_of(params) -> np.ndarray:
    return np.asarray(analog.read_weights(params["crossbar"].get_value().tiles))


ASYM = analog.ConstantStep(dw_min=0.01, up_down=0.3)


def test_transfer_rows_cycle_through_the_rows_one_every_n_samples():
    from analog._tiki_taka import transfer_rows

    seen = []
    for count in range(6):
        rows, live = transfer_rows(jnp.int32(count), 4, 2, 5)  # 2 reads per step of 4
        seen += [int(r) for r, ok in zip(rows, live) if ok]
    assert seen == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    seen = [int(transfer_rows(jnp.int32(c), 2, 6, 5)[1][0]) for c in range(6)]
    assert seen == [0, 0, 1, 0, 0, 1]  # one read every third step of 2
    # neither divides the other: one read every 3 samples in steps of 4 is 1, 1, 2, 1, 1, 2
    per_step = [int(np.sum(transfer_rows(jnp.int32(c), 4, 3, 5)[1])) for c in range(6)]
    assert per_step == [1, 1, 2, 1, 1, 2]
    seen = []
    for c in range(6):
        rows, live = transfer_rows(jnp.int32(c), 4, 3, 5)
        seen += [int(r) for r, ok in zip(rows, live) if ok]
    assert seen == [0, 1, 2, 3, 4, 0, 1, 2]  # floor(24 / 3) = 8 reads, cycling


def test_transfer_rows_cycle_within_each_row_tile():
    # 7 rows on tiles of 3 rows: tiles hold rows 0-2, 3-5 and 6; each reads one of its own
    # rows per transfer (aihwkit: one TransferCompound per tile), the last cycles over its one.
    from analog._tiki_taka import transfer_rows

    per_step = []
    for count in range(4):
        rows, live = transfer_rows(jnp.int32(count), 2, 2, 7, 3)
        assert rows.shape == (3,) and bool(np.all(live))
        per_step.append([int(r) for r in rows])
    assert per_step == [[0, 3, 6], [1, 4, 6], [2, 5, 6], [0, 3, 6]]
    rows, live = transfer_rows(jnp.int32(0), 4, 1, 7, 3)  # 4 reads per tile in a step of 4
    assert [int(r) for r in rows] == [0, 1, 2, 0, 3, 4, 5, 3, 6, 6, 6, 6]
    whole = transfer_rows(jnp.int32(5), 4, 2, 7)
    same = transfer_rows(jnp.int32(5), 4, 2, 7, 64)  # a tile taller than the layer: one tile
    assert np.array_equal(whole[0], same[0]) and np.array_equal(whole[1], same[1])


def test_tiki_taka_transfers_a_read_of_a_into_the_buffer_and_whole_steps_into_c():
    x = jax.random.uniform(jax.random.key(11), (2, 4), jnp.float32, -1, 1)
    params, grads = _tap_grads(_linear(4, 3, 2, device=CLEAN, fast_device=CLEAN), x)
    tx = analog.tiki_taka(0.05, transfer_every=1, transfer_lr=3.0, update=analog.UpdateConfig())
    new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
    old_cb, cb = params["crossbar"].get_value(), new["crossbar"].get_value()
    a = np.asarray(analog.read_weights(cb.fast), np.float64)
    assert np.any(a != 0)  # A took the pulsed update
    dc = np.asarray(analog.read_weights(cb.tiles) - analog.read_weights(old_cb.tiles), np.float64)
    step = float(analog.weight_step(cb.tiles))
    h = np.asarray(cb.buffer, np.float64)
    # rows 0 and 1 were read (2 samples, one transfer each); H + C holds 3 A there exactly
    # (up to the conductances' rounding), |H| < one step of C, and rows 2, 3 did not move
    np.testing.assert_allclose((h + dc)[:2], 3.0 * a[:2], atol=1e-5 * step + 1e-6)
    assert np.all(np.abs(h) < step * (1 + 1e-5))
    assert not np.any(dc[2:]) and not np.any(h[2:])


def test_a_transfer_read_has_only_its_own_row_tiles_read_noise():
    # A = 0 (its rate is 0), so H + the change of C is the read itself: pure read noise. Each
    # row tile reads its own row, as aihwkit's tiles do; a read through every row tile (a full
    # mvm of the one-hot row) would add the other tile's noise too: std 0.05 sqrt(2)
    noise = 0.05
    layer = _linear(8, 64, 2, device=CLEAN, fast_device=CLEAN, tile_shape=(4, 64))
    params, grads = _tap_grads(layer, jnp.ones((2, 8), jnp.float32))
    tx = analog.tiki_taka(
        0.0, transfer_every=1, transfer_lr=1.0, transfer_io=analog.IOConfig(read_noise=noise)
    )
    new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
    old_cb, cb = params["crossbar"].get_value(), new["crossbar"].get_value()
    assert not np.any(np.asarray(analog.read_weights(cb.fast)))
    dc = np.asarray(analog.read_weights(cb.tiles) - analog.read_weights(old_cb.tiles), np.float64)
    moved = (np.asarray(cb.buffer, np.float64) + dc)[[0, 1, 4, 5]]  # two rows per tile
    assert not np.any(np.delete(np.asarray(cb.buffer), [0, 1, 4, 5], axis=0))
    # 256 draws: the sample std is within 15% of 0.05 (and 0.0707 is 41% above) at this seed
    assert abs(moved.std() / noise - 1) < 0.15, moved.std()


def test_max_transfer_pulses_caps_a_transfer_and_keeps_the_rest_in_h():
    # as aihwkit's BufferedTransferCompound: at most this many steps of C per transfer; the
    # whole steps beyond it stay in H (H + C still holds 3 A), for the row's next transfer
    x = jax.random.uniform(jax.random.key(11), (2, 4), jnp.float32, -1, 1)
    params, grads = _tap_grads(_linear(4, 3, 2, device=CLEAN, fast_device=CLEAN), x)
    tx = analog.tiki_taka(
        0.05, transfer_every=1, transfer_lr=3.0, max_transfer_pulses=2, update=analog.UpdateConfig()
    )
    new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
    old_cb, cb = params["crossbar"].get_value(), new["crossbar"].get_value()
    a = np.asarray(analog.read_weights(cb.fast), np.float64)
    dc = np.asarray(analog.read_weights(cb.tiles) - analog.read_weights(old_cb.tiles), np.float64)
    step = float(analog.weight_step(cb.tiles))
    h = np.asarray(cb.buffer, np.float64)
    np.testing.assert_allclose((h + dc)[:2], 3.0 * a[:2], atol=1e-5 * step + 1e-6)
    pulses = np.round(np.abs(dc[:2]) / step)
    assert pulses.max() == 2 and np.all(np.abs(3.0 * a[:2]) / step > 2 - 1e-6, where=pulses == 2)
    assert np.any(np.abs(h) > 2 * step)  # the cap bound: more than one step left in H
    # the next step reads rows 2 and 3: rows 0 and 1 keep their whole steps in H until read
    state = tx.update(grads, tx.init(params), params)[1]
    newer = optax.apply_updates(new, tx.update(grads, state, new)[0])
    cb2 = newer["crossbar"].get_value()
    c1, c2 = (np.asarray(analog.read_weights(c.tiles)) for c in (cb, cb2))
    np.testing.assert_array_equal(c2[:2], c1[:2])
    np.testing.assert_array_equal(np.asarray(cb2.buffer)[:2], h[:2].astype(np.float32))
    assert np.any(c2[2:] != c1[2:])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_transfer_pulses"):
            analog.tiki_taka(0.1, max_transfer_pulses=bad)


def test_transfer_lr_may_be_an_optax_schedule():
    # A constant schedule is the float bit for bit; a transfer rate that is 0 from step 1 on
    # freezes C and H after the first step while A keeps learning (what annealing needs).
    kw = {"device": CLEAN, "io": presets.TAOX_IO, "fast_device": CLEAN}
    make = lambda tlr: analog.tiki_taka(0.5, transfer_every=2, transfer_lr=tlr)
    runs = [
        _train_regression(_linear(8, 3, 16, **kw), make(t), 3)
        for t in (0.5, optax.constant_schedule(jnp.float32(0.5)))
    ]
    for a, b in zip(jax.tree.leaves(runs[0][3]), jax.tree.leaves(runs[1][3])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    first_only = lambda c: jnp.where(c < 1, jnp.float32(0.5), jnp.float32(0.0))
    *_, p1 = _train_regression(_linear(8, 3, 16, **kw), make(0.5), 1)
    *_, s3, p3 = _train_regression(_linear(8, 3, 16, **kw), make(first_only), 3)
    cb1, cb3 = p1["crossbar"].get_value(), p3["crossbar"].get_value()
    np.testing.assert_array_equal(_weights_of(p3), _weights_of(p1))
    np.testing.assert_array_equal(np.asarray(cb3.buffer), np.asarray(cb1.buffer))
    fast = lambda cb: np.asarray(analog.read_weights(cb.fast))
    assert np.any(fast(cb3) != fast(cb1))
    assert int(s3.count) == 3
    with pytest.raises(TypeError, match="transfer_lr"):
        analog.tiki_taka(0.1, transfer_lr="fast")


def test_tiki_taka_trains_an_asymmetric_device_layer():
    layer = _linear(8, 3, 16, device=ASYM, fast_device=ASYM)
    tx = analog.tiki_taka(0.5, transfer_every=4, transfer_lr=0.5)
    first, last, state, _ = _train_regression(layer, tx, 100)
    assert last < 0.2 * first  # measured: 0.07
    assert float(state.transfer_pulses) > 0


def test_tiki_taka_and_pulsed_sgd_refuse_the_other_kind_of_layer():
    plain = nnx.split(_linear())[1]
    tt = nnx.split(_linear(fast_device=CLEAN))[1]
    with pytest.raises(ValueError, match="fast array"):
        analog.tiki_taka(0.1).update(plain, analog.tiki_taka(0.1).init(plain), plain)
    with pytest.raises(ValueError, match="tiki_taka"):
        analog.pulsed_sgd(0.1).update(tt, analog.pulsed_sgd(0.1).init(tt), tt)
    with pytest.raises(ValueError, match="transfer_every"):
        analog.tiki_taka(0.1, transfer_every=0)
    with pytest.raises(ValueError, match="fast_device"):
        _linear(gamma=0.5)


def _on_tiles(layer, tiles):
    """``layer`` holding ``tiles`` (same shape) instead of its own."""
    cb = layer.crossbar.get_value()
    layer.crossbar.set_value(dataclasses.replace(cb, tiles=crossbar_tiles(tiles)))
    return layer


def test_bound_management_reads_again_until_the_adc_does_not_saturate():
    # an ADC bound below the tiles' outputs and no other non-ideality: the first read of the
    # first sample saturates, re-reads at 1/2 and 1/4 of its input do not, and the result is
    # x @ W again; the second sample never saturates
    io = analog.IOConfig(out_bound=1.0)
    x = jnp.stack([jnp.full((10,), 1.0), jnp.full((10,), 0.01)]).astype(jnp.float32)
    w = jnp.full((10, 6), 0.3, jnp.float32)  # a full 4-row tile reads 1.2 per unit input
    tiles = analog.init_tiles(jax.random.key(0), w, presets.IDEAL, (4, 4), w_max=1.0)
    exact = np.asarray(x, np.float64) @ np.asarray(analog.read_weights(tiles), np.float64)
    kw = {"io": io, "noise_management": False}
    managed = _on_tiles(_linear(bound_management=True, **kw), tiles)(x)
    assert_close_ulps(managed, exact, ulps=16)
    clipped = np.asarray(_on_tiles(_linear(bound_management=False, **kw), tiles)(x))
    # without it, the first sample's tiles (4 + 4 + 2 rows) report 1 + 1 + 0.6
    np.testing.assert_allclose(clipped[0], 2.6, rtol=1e-5)
    np.testing.assert_allclose(clipped[1], exact[1], rtol=1e-5)


def test_zero_grad_at_bound_zeroes_the_error_of_outputs_read_at_the_adc_bound():
    # aihwkit 1.1.0's handle_output_bound: outputs whose managed forward value reached
    # 0.999 out_bound pass no error down; the update's tap keeps the whole error. Column j of
    # W is 0.05 (j + 1): sample 0 (all ones) reads 0.5, 1.0, ..., 3.0 (bound management
    # re-reads past the 4-row tiles' saturation, so these are exact), sample 1 a hundredth.
    io = analog.IOConfig(out_bound=1.0)
    x = jnp.stack([jnp.full((10,), 1.0), jnp.full((10,), 0.01)]).astype(jnp.float32)
    w = jnp.tile(0.05 * jnp.arange(1, 7, dtype=jnp.float32), (10, 1))
    tiles = analog.init_tiles(jax.random.key(0), w, presets.IDEAL, (4, 4), w_max=1.0)
    w64 = np.asarray(analog.read_weights(tiles), np.float64)
    c = jax.random.normal(jax.random.key(1), (2, 6), jnp.float32)
    past = np.abs(np.asarray(x, np.float64) @ w64) >= 0.999
    assert past[0].tolist() == [False] + [True] * 5 and not past[1].any()

    def grads(**kw):
        layer = _on_tiles(_linear(batch=2, io=io, **kw), tiles)
        graphdef, params = nnx.split(layer)
        loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) * c)
        gp, gx = jax.grad(loss, argnums=(0, 1))(params, x)
        return np.asarray(gx), np.asarray(gp["crossbar"].get_value().tap)[:, 10:]

    c64 = np.asarray(c, np.float64)
    for on, d in ((False, c64), (True, np.where(past, 0.0, c64))):
        gx, tap_d = grads(zero_grad_at_bound=on)
        assert_close_ulps(gx, d @ w64.T, ulps=dot_ulps(6) + 16, magnitude=abs(c64) @ abs(w64.T))
        np.testing.assert_array_equal(tap_d, np.asarray(c))  # the update sees every error
    with pytest.raises(ValueError, match="zero_grad_at_bound=True needs a forward ADC bound"):
        _linear(zero_grad_at_bound=True)  # exact reads: nothing is ever clipped
    with pytest.raises(TypeError, match="zero_grad_at_bound"):
        _linear(io=io, zero_grad_at_bound=1)


def test_noise_management_reads_an_all_zero_vector_as_exactly_zero():
    # aihwkit's abs-max noise management returns zeros for a zero input; read at full scale,
    # the ADC's noise (0.1 here) would reach e.g. a saturated-softmax sample whose d is 0
    io = analog.IOConfig(read_noise=0.1)
    x = jnp.zeros((4, 10), jnp.float32).at[1].set(1.0)
    c = jnp.zeros((4, 6), jnp.float32).at[2].set(1.0)
    for nm in (True, False):
        layer = _linear(io=io, noise_management=nm, use_bias=False)
        graphdef, params = nnx.split(layer)
        loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) * c)
        y = np.asarray(layer(x))
        gx = np.asarray(jax.grad(loss, argnums=1)(params, x))
        zero_y, zero_gx = np.abs(y[[0, 2, 3]]).max(), np.abs(gx[[0, 1, 3]]).max()
        if nm:
            assert zero_y == 0.0 and zero_gx == 0.0
        else:  # without it the noise is read as it comes
            assert zero_y > 0.01 and zero_gx > 0.01
        assert np.abs(y[1]).max() > 0 and np.abs(gx[2]).max() > 0


def test_noise_management_uses_the_dac_range_for_small_inputs():
    io = analog.IOConfig(inp_bits=6, inp_bound=1.0)  # 31 levels per sign
    x = jax.random.uniform(jax.random.key(12), (4, 10), jnp.float32, -0.05, 0.05)
    errs = []
    for nm in (True, False):
        layer = _linear(io=io, noise_management=nm, bound_management=False)
        exact = np.asarray(x, np.float64) @ _weights(layer)
        errs.append(np.abs(np.asarray(layer(x)) - exact).max() / np.abs(exact).max())
    # scaled to max|x| = 1 the inputs use every level: error ~ 1/62 of the range, not 1/3
    assert errs[0] < 0.05 and errs[1] > 5 * errs[0]


def test_chopped_tiki_taka_flips_the_read_rows_and_updates_a_with_x_times_c():
    x = jax.random.uniform(jax.random.key(13), (2, 4), jnp.float32, -1, 1)
    params, grads = _tap_grads(_linear(4, 3, 2, device=CLEAN, fast_device=CLEAN), x)
    # deterministic pulse counts: the same gradient gives the same change of A, up to sign
    tx = analog.tiki_taka(
        0.05,
        transfer_lr=0.0,
        chop_probability=1.0,
        update=analog.UpdateConfig(mode="deterministic"),
    )
    state = tx.init(params)
    np.testing.assert_array_equal(state.choppers[0], np.ones(4))

    def fast(p):
        return np.asarray(analog.read_weights(p["crossbar"].get_value().fast), np.float64)

    a0 = fast(params)
    updates, state = tx.update(grads, state, params)
    p1 = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(state.choppers[0], [-1, -1, 1, 1])  # rows 0, 1 were read
    updates, state = tx.update(grads, state, p1)
    p2 = optax.apply_updates(p1, updates)
    np.testing.assert_array_equal(state.choppers[0], [-1, -1, -1, -1])
    step1 = fast(p1) - a0
    assert np.all(np.abs(step1) > 0)
    # rows 0, 1 were pulsed with -x in the second step: back where they started
    np.testing.assert_allclose(fast(p2)[:2], a0[:2], atol=1e-6)
    np.testing.assert_allclose(fast(p2)[2:] - a0[2:], 2 * step1[2:], rtol=1e-4, atol=1e-6)


def test_the_digital_then_program_row_is_analog_program_and_its_old_name_resolves():
    from beyondbp import methods

    assert methods.get("analog-sgd") is methods.get("analog-program")
    assert "analog-sgd" not in methods.names()  # listed once, run once by --methods all
    assert {"analog-insitu", "analog-tikitaka"} <= set(methods.names())
    with pytest.raises(ValueError, match="unknown method"):
        methods.get("analog-sgd-typo")


def test_the_annealed_tikitaka_row_freezes_c_and_h_when_its_transfer_rate_reaches_zero():
    # cfg.steps = 1: the cosine is at its peak for step 0 and at 0 from step 1 on, so C and H
    # keep what the first step left while A keeps learning; the constant-rate row moves C on.
    from analog._pulsed_sgd import is_crossbar
    from beyondbp import methods
    from beyondbp.methods import analog_rows

    cfg = methods.MethodConfig(
        key=jax.random.key(0), input_shape=(4, 4, 1), widths=(8,), steps=1, batch_size=8
    )
    x = jax.random.uniform(jax.random.key(1), (8, 16))
    y = jnp.arange(8) % 10

    def crossbars(name, steps):
        setup = methods.get(name).build(cfg)
        params, state = setup.params, setup.tx.init(setup.params)
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(setup.apply(p, x), y)
        seen = []
        for _ in range(steps):
            u, state = setup.tx.update(jax.grad(lambda p: loss(p).mean())(params), state, params)
            params = optax.apply_updates(params, u)
            leaves = jax.tree.leaves(params, is_leaf=is_crossbar)
            seen.append([c for c in leaves if is_crossbar(c)])
        return seen

    read = lambda t: np.asarray(analog.read_weights(t))
    annealed = crossbars("analog-tikitaka-annealed", 3)
    for first, last in zip(annealed[0], annealed[-1]):
        np.testing.assert_array_equal(read(last.tiles), read(first.tiles))
        np.testing.assert_array_equal(np.asarray(last.buffer), np.asarray(first.buffer))
        assert np.any(read(last.fast) != read(first.fast))
    constant = crossbars("analog-tikitaka", 3)
    assert any(
        np.any(np.asarray(last.buffer) != np.asarray(first.buffer))
        for first, last in zip(constant[0], constant[-1])
    )
    with pytest.raises(TypeError, match="transfer_lr"):
        analog_rows.build_tikitaka_annealed(cfg, transfer_lr=0.1)
