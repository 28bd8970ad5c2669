"""The rate rules of the registered rows (beyondbp/methods/_rates.py): references and the rows
that use them (issue 16: fixed rules instead of per-data-set tuning)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from beyondbp import methods
from beyondbp.methods import _rates, combined_rows, fwdgrad_rows


@pytest.mark.standard_promotion  # the reference, optax's schedule, is not strict-safe
def test_cosine_to_zero_is_optax_cosine_decay():
    ref = optax.cosine_decay_schedule(0.05, 345)
    ours = _rates.cosine_to_zero(0.05, 345)
    for i in (0, 1, 100, 172, 344, 345, 1000):
        # float32 cosine against optax's: a few ulps of the peak
        assert float(ours(jnp.int32(i))) == pytest.approx(float(ref(i)), rel=1e-6, abs=1e-8)
    assert float(ours(jnp.int32(345))) == 0.0 and float(ours(jnp.int32(1000))) == 0.0


def test_cosine_to_zero_is_float32_under_strict_promotion():
    assert _rates.cosine_to_zero(0.05, 10)(jnp.int32(3)).dtype == jnp.float32


@pytest.mark.parametrize(
    ("peak", "steps", "match"),
    [(0.0, 10, "peak=0.0"), (-1.0, 10, "peak=-1.0"), (0.1, 0, "steps=0"), (0.1, 2.5, "steps=2.5")],
)
def test_cosine_to_zero_refuses_bad_input(peak, steps, match):
    with pytest.raises(ValueError, match=match):
        _rates.cosine_to_zero(peak, steps)


def test_forward_gradient_rate_divides_by_the_estimates_second_moment():
    # Monte Carlo: E|g_hat|^2 / |g|^2 for K Rademacher tangents in d dimensions is 1 + (d-1)/K;
    # the rule's rate times that factor gives back the backprop rate
    d, k, n = 8, 4, 40_000
    g = jax.random.normal(jax.random.key(0), (d,), jnp.float32)
    v = jax.random.rademacher(jax.random.key(1), (n, k, d), jnp.float32)
    g_hat = jnp.mean(jnp.einsum("nkd,d->nk", v, g)[..., None] * v, axis=1)
    moment = float(jnp.mean(jnp.sum(g_hat**2, -1)) / jnp.sum(g**2))
    # sampling error of a mean of 40k draws of a quantity with relative spread ~1: ~1%
    assert moment == pytest.approx(1 + (d - 1) / k, rel=0.03)
    assert _rates.forward_gradient_rate(0.05, k, d) * (1 + (d - 1) / k) == pytest.approx(0.05)
    # exact gradients (one dimension) keep the backprop rate
    assert _rates.forward_gradient_rate(0.05, 4, 1) == 0.05


@pytest.mark.parametrize(("k", "d"), [(0, 8), (4, 0)])
def test_forward_gradient_rate_refuses_bad_input(k, d):
    with pytest.raises(ValueError, match="must be >= 1"):
        _rates.forward_gradient_rate(0.05, k, d)


def test_device_chains_rate_follows_their_local_groups():
    # groups of LOCAL_GROUP_SIZE units, as fwdgrad-local: 256-wide blocks -> 32 groups of 8
    assert fwdgrad_rows.local_num_groups((256, 256)) == 32
    expected = combined_rows.LR_BACKPROP * 4 / (4 + fwdgrad_rows.LOCAL_GROUP_SIZE - 1)
    assert combined_rows.local_rate((256, 256)) == pytest.approx(expected)
    # a hidden width below the group size is one group of that width
    assert combined_rows.local_rate((4,)) == pytest.approx(combined_rows.LR_BACKPROP * 4 / 7)


def _first_step_and_late_step(name, steps=100):
    """The size of one SGD update at the start and at the end of a ``steps`` run of ``name``."""
    cfg = methods.MethodConfig(key=jax.random.key(0), widths=(16,), steps=steps)
    setup = methods.get(name).build(cfg)
    grads = jax.tree.map(jnp.ones_like, setup.params)
    state = setup.tx.init(setup.params)
    sizes = []
    for _ in range(steps):
        updates, state = setup.tx.update(grads, state, setup.params)
        sizes.append(sum(float(jnp.sum(jnp.abs(u))) for u in jax.tree.leaves(updates)))
    return sizes[0], sizes[-1]


def test_backprop_row_decays_its_rate_to_zero_over_the_run():
    first, last = _first_step_and_late_step("backprop")
    assert first > 0
    # the last step's rate is 0.05 (1 + cos(pi 99/100)) / 2 = 1.2e-5, but momentum carries
    # the earlier steps: well under a constant rate's steady step (10x the first)
    assert last < 0.5 * first
    assert np.isfinite(last)


def test_tangents_for_moment_is_the_fewest_within_the_bound():
    # Monte Carlo, as above: K = 7 tangents over 8 units holds E|g_hat|^2 <= 2|g|^2, 6 do not
    d, n = 8, 40_000
    k = _rates.tangents_for_moment(d, 2.0)
    assert k == 7
    g = jax.random.normal(jax.random.key(2), (d,), jnp.float32)

    def moment(kk):
        v = jax.random.rademacher(jax.random.key(kk), (n, kk, d), jnp.float32)
        g_hat = jnp.mean(jnp.einsum("nkd,d->nk", v, g)[..., None] * v, axis=1)
        return float(jnp.mean(jnp.sum(g_hat**2, -1)) / jnp.sum(g**2))

    # 1 + 7/7 = 2.0 and 1 + 7/6 = 2.17: 3% sampling error separates them
    assert moment(k) == pytest.approx(2.0, rel=0.03)
    assert moment(k - 1) > 2.0 * 1.04
    # one unit needs one tangent (the estimate is exact); a looser bound needs fewer tangents
    assert _rates.tangents_for_moment(1) == 1
    assert _rates.tangents_for_moment(8, 3.0) == 4
    assert _rates.tangents_for_moment(8, 1.1) == 70


@pytest.mark.parametrize(("d", "factor"), [(0, 2.0), (True, 2.0), (8, 1.0), (8, 0.5)])
def test_tangents_for_moment_refuses_bad_input(d, factor):
    with pytest.raises(ValueError, match="tangents_for_moment"):
        _rates.tangents_for_moment(d, factor)


def test_local_row_takes_tangents_from_its_largest_group():
    assert fwdgrad_rows.local_num_tangents((256, 256)) == 7  # groups of 8
    assert fwdgrad_rows.local_num_tangents((100,)) == 9  # groups of 10
    assert fwdgrad_rows.local_num_tangents((4,)) == 3  # one group of the whole width


@pytest.mark.standard_promotion  # optax.adam mixes a Python float with its int32 count
def test_local_row_gives_its_heads_their_exact_local_gradient():
    # Adam's first step is -lr g / (|g| + eps): its sign is the gradient's. Each head's exact
    # gradient, from jax.grad of its own loss on its block's (constant) activations, must
    # give the sign of every head update; a forward-perturbed head estimate does not
    cfg = methods.MethodConfig(key=jax.random.key(0), widths=(16, 16), steps=10)
    setup = methods.get("fwdgrad-local").build(cfg)
    x = jax.random.uniform(jax.random.key(1), (32, 28, 28, 1), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (32,), 0, 10)
    updates, _ = setup.tx.update(None, setup.tx.init(setup.params), setup.params, batch=(x, y))
    p = setup.params
    h = x.reshape(32, -1)
    for i in sorted(p["layers"]):
        if i > 0:
            h = (h - h.mean(-1, keepdims=True)) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-5)
        h = jax.nn.relu(h @ p["layers"][i]["kernel"] + p["layers"][i]["bias"])

        def head_loss(head, a=h):
            logits = a @ head["kernel"] + head["bias"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        exact = jax.grad(head_loss)(p["heads"][i])
        for leaf in ("kernel", "bias"):
            g, u = np.asarray(exact[leaf]), np.asarray(updates["heads"][i][leaf])
            big = np.abs(g) > 1e-6
            assert big.sum() >= g.size // 2
            np.testing.assert_array_equal(np.sign(u[big]), -np.sign(g[big]))


@pytest.mark.standard_promotion  # optax.adam and its schedule mix a Python float with int32
def test_mixer_row_has_no_raw_patch_norm_and_its_own_adam_rate():
    cfg = methods.MethodConfig(key=jax.random.key(0), input_shape=(28, 28, 1), steps=100)
    assert not fwdgrad_rows.mixer_config(cfg).input_norm
    # Adam's first step is lr * sign(g) (bias-corrected, eps negligible): the rate itself
    tx = fwdgrad_rows.adam_cosine(fwdgrad_rows.LR_MIXER_ADAM)(cfg)
    params = {"kernel": jnp.ones((2,))}
    u, _ = tx.update({"kernel": jnp.full((2,), 0.3)}, tx.init(params), params)
    np.testing.assert_allclose(u["kernel"], -fwdgrad_rows.LR_MIXER_ADAM, rtol=1e-5)


def test_insitu_row_puts_its_rate_on_a_cosine_over_the_run(monkeypatch):
    from beyondbp.methods import analog_rows

    seen = {}

    def capture(lr, **kw):
        seen["lr"] = lr
        raise RuntimeError("captured")

    monkeypatch.setattr(analog_rows.analog, "pulsed_sgd", capture)
    cfg = methods.MethodConfig(key=jax.random.key(0), widths=(8,), steps=200, batch_size=4)
    with pytest.raises(RuntimeError, match="captured"):
        methods.get("analog-insitu").build(cfg)
    lr = seen["lr"]
    assert float(lr(jnp.int32(0))) == pytest.approx(analog_rows.INSITU_LR)
    assert float(lr(jnp.int32(100))) == pytest.approx(analog_rows.INSITU_LR / 2, rel=1e-6)
    assert float(lr(jnp.int32(200))) == 0.0
