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

from fwdgrad import nnx
from fwdgrad._activity import (
    activity_forward_gradient,
    activity_fwd_grad,
    local_mlp_apply,
    local_mlp_grads,
)
from fwdgrad._convnet import (
    ConvNetConfig,
    convnet_apply,
    convnet_grads,
    convnet_init,
    convnet_local_losses,
)
from fwdgrad._diagnostics import cosine_similarity, estimator_variance, theoretical_variance
from fwdgrad._distributed import sharded_forward_gradient
from fwdgrad._estimators import (
    AGGREGATES,
    STRATEGIES,
    fwd_grad,
    resolve_strategy,
    value_and_fwd_grad,
)
from fwdgrad._heads import local_head_losses
from fwdgrad._local import local_forward_gradient, local_fwd_grad
from fwdgrad._mixer import MixerConfig, mixer_apply, mixer_grads, mixer_init, mixer_local_losses
from fwdgrad._tangents import TANGENTS, WEIGHT_TANGENTS, sample_tangents
from fwdgrad._transforms import ForwardGradientState, forward_gradient
from fwdgrad.nnx import LocalConvNet, LocalMixer, LocalMLP

__all__ = [
    "AGGREGATES",
    "ConvNetConfig",
    "ForwardGradientState",
    "LocalConvNet",
    "LocalMLP",
    "LocalMixer",
    "MixerConfig",
    "STRATEGIES",
    "TANGENTS",
    "WEIGHT_TANGENTS",
    "activity_forward_gradient",
    "activity_fwd_grad",
    "convnet_apply",
    "convnet_grads",
    "convnet_init",
    "convnet_local_losses",
    "cosine_similarity",
    "estimator_variance",
    "forward_gradient",
    "fwd_grad",
    "local_forward_gradient",
    "local_fwd_grad",
    "local_head_losses",
    "local_mlp_apply",
    "local_mlp_grads",
    "mixer_apply",
    "mixer_grads",
    "mixer_init",
    "mixer_local_losses",
    "nnx",
    "resolve_strategy",
    "sample_tangents",
    "sharded_forward_gradient",
    "theoretical_variance",
    "value_and_fwd_grad",
]
