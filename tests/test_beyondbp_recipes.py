"""Fixed rules of the registered recipes (issue: robust recipes): checked against references."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from beyondbp.methods import analog_rows, lowbit_rows


@pytest.mark.standard_promotion  # the reference, optax's schedule, is not strict-safe
def test_lowbit_rate_is_optax_cosine_to_zero_over_the_run():
    ref = optax.cosine_decay_schedule(lowbit_rows.LR, 937)
    ours = lowbit_rows.rate(937)
    for i in (0, 1, 100, 468, 936, 937, 2000):
        assert float(ours(jnp.int32(i))) == pytest.approx(float(ref(i)), rel=1e-6, abs=1e-9)
    assert float(ours(jnp.int32(937))) == 0.0


def test_rate_is_strict_promotion_safe_float32():
    assert lowbit_rows.rate(10)(jnp.int32(3)).dtype == jnp.float32


def test_nlms_output_step_is_inside_the_lms_stability_limit():
    # normalised LMS converges for 0 < mu < 2 (Widrow & Lehr 1990); the output layer's
    # activity difference near equilibrium is an LMS step
    mu_hidden, mu_out = analog_rows.NLMS_RATES
    assert 0 < mu_out < 2 and mu_hidden > 0
    assert np.isfinite(mu_hidden)
