"""fwdgrad: forward gradients with ``jax.jvp``, no backward pass, as optax transforms.

Baydin, Pearlmutter, Syme, Wood, Torr, "Gradients without Backpropagation"
(2022) for weight perturbation; Ren, Kornblith, Liao, Hinton, "Scaling Forward
Gradient With Local Losses" (ICLR 2023) for activity perturbation with local
losses; Silver et al., "Learning by Directional Gradient Descent" (ICLR 2022)
for the variance of directional estimators.

    grad_fn = fwdgrad.fwd_grad(loss, num_tangents=4)          # like jax.grad, key first
    g = grad_fn(jax.random.key(0), params, batch)

    tx = optax.chain(fwdgrad.forward_gradient(num_tangents=4), optax.sgd(1e-2))
    updates, state = tx.update(None, state, params, loss_fn=lambda p: loss(p, batch))
"""

from fwdgrad._activity import (
    LocalMLP,
    activity_forward_gradient,
    activity_fwd_grad,
    local_mlp_apply,
    local_mlp_grads,
)
from fwdgrad._estimators import (
    AGGREGATES,
    cosine_similarity,
    estimator_variance,
    fwd_grad,
    theoretical_variance,
    value_and_fwd_grad,
)
from fwdgrad._tangents import TANGENTS, sample_tangents
from fwdgrad._distributed import sharded_forward_gradient
from fwdgrad._transforms import ForwardGradientState, forward_gradient

__all__ = [
    "AGGREGATES",
    "TANGENTS",
    "ForwardGradientState",
    "LocalMLP",
    "activity_forward_gradient",
    "activity_fwd_grad",
    "cosine_similarity",
    "estimator_variance",
    "forward_gradient",
    "fwd_grad",
    "local_mlp_apply",
    "local_mlp_grads",
    "sample_tangents",
    "sharded_forward_gradient",
    "theoretical_variance",
    "value_and_fwd_grad",
]
