"""Learning-rate rules the registry rows share, defined by the run and the estimator, not the data.

``cosine_to_zero``: a rate on a cosine to 0 over the run's ``steps`` (Loshchilov & Hutter 2017,
SGDR without restarts). A schedule in fractions of the budget means the same thing on a
one-epoch run of 60k images and on fifteen epochs of 1,500.

``forward_gradient_rate``: the SGD rate for a forward-gradient estimate with ``K`` Rademacher
tangents of a ``d``-dimensional perturbation, scaled from a backprop rate by the estimate's
second moment (unbiased: Baydin et al. 2022, Thm. 1; variance growing with the perturbed
dimension: Ren et al. 2023, sec. 3).

``tangents_for_moment``: the fewest tangents ``K`` that hold the same second moment within a
fixed factor of the exact gradient's, for estimators trained at a rate meant for exact gradients
(Adam's step does not shrink with the estimate's noise the way the SGD rule above does).
"""

from __future__ import annotations

import math

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


def tangents_for_moment(dim: int, factor: float = 2.0) -> int:
    """Fewest Rademacher tangents ``K`` with ``E|g_hat|^2 <= factor |g|^2`` over ``dim`` units.

    The second moment of :func:`forward_gradient_rate` is ``(1 + (dim - 1) / K) |g|^2``, so
    ``K = ceil((dim - 1) / (factor - 1))`` (at least 1): with ``factor = 2`` the estimate's
    noise is at most the size of the gradient itself, ``K = dim - 1`` tangents per group
    (Ren et al. 2023, sec. 3-4: ``dim`` is one local-loss group, not the network).
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"tangents_for_moment: dim={dim!r} must be an int >= 1")
    if not factor > 1:
        raise ValueError(f"tangents_for_moment: factor={factor!r} must be > 1")
    # the tolerance keeps a float quotient such as 7 / 0.1 = 70.000...01 at 70
    return max(1, math.ceil((dim - 1) / (factor - 1) - 1e-9))
