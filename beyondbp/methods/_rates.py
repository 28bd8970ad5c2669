"""Learning-rate rules the registry rows share, defined by the run and the estimator, not the data.

``cosine_to_zero``: a rate on a cosine to 0 over the run's ``steps`` (Loshchilov & Hutter 2017,
SGDR without restarts). A schedule in fractions of the budget means the same thing on a
one-epoch run of 60k images and on fifteen epochs of 1,500.

``forward_gradient_rate``: the SGD rate for a forward-gradient estimate with ``K`` Rademacher
tangents of a ``d``-dimensional perturbation, scaled from a backprop rate by the estimate's
second moment (unbiased: Baydin et al. 2022, Thm. 1; variance growing with the perturbed
dimension: Ren et al. 2023, sec. 3).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def cosine_to_zero(peak: float, steps: int) -> optax.Schedule:
    """``peak * (1 + cos(pi t / steps)) / 2`` at step ``t`` (held at 0 past ``steps``), float32.

    Written out instead of ``optax.cosine_decay_schedule``, which mixes a Python float with the
    int32 step count: strict dtype promotion refuses that.
    """
    if not peak > 0:
        raise ValueError(f"cosine_to_zero: peak={peak!r} must be > 0")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"cosine_to_zero: steps={steps!r} must be a positive integer")
    total = jnp.float32(steps)

    def schedule(count):
        t = jnp.minimum(jnp.asarray(count).astype(jnp.float32), total) / total
        return jnp.float32(peak) * 0.5 * (1.0 + jnp.cos(jnp.float32(jnp.pi) * t))

    return schedule


def forward_gradient_rate(backprop_rate: float, num_tangents: int, dim: int) -> float:
    """SGD rate for a ``num_tangents``-tangent Rademacher forward gradient over ``dim`` units.

    The estimate ``g_hat = (1/K) sum_k (g . v_k) v_k`` is unbiased, and with Rademacher ``v``
    (``|v|^2 = d``) its second moment is ``E|g_hat|^2 = (1 + (d - 1) / K) |g|^2``. SGD's stability limit and its noise floor both scale with
    ``rate * E|g_hat|^2``, so a rate that is right for the exact gradient is right for the
    estimate when divided by that factor: ``backprop_rate * K / (K + d - 1)``. ``dim`` is the
    size of one perturbed group (Ren et al. 2023's local losses make it the group, not the
    network).
    """
    if not backprop_rate > 0:
        raise ValueError(f"forward_gradient_rate: backprop_rate={backprop_rate!r} must be > 0")
    if num_tangents < 1 or dim < 1:
        raise ValueError(
            f"forward_gradient_rate: num_tangents={num_tangents!r} and dim={dim!r} must be >= 1"
        )
    return backprop_rate * num_tangents / (num_tangents + dim - 1)
