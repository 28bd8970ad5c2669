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
