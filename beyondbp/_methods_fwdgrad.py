"""Registry rows for ``fwdgrad``: forward gradients, no backward pass.

``fwdgrad``: weight perturbation, Baydin et al. (2022): one jvp along one
Rademacher tangent per step (K = 1, ``aggregate="mean"``), SGD with momentum at
a learning rate small enough for the estimator's ``(n - 1)|g|^2`` variance.

``fwdgrad-orthogonal``: K = 16 tangents sharing one primal pass, the gradient
projected onto their span, SGD at a larger rate (the projection's norm is at
most ``|g|``).

``fwdgrad-local``: activity perturbation with local greedy losses, Ren et al.
(ICLR 2023): the configured MLP with a linear classifier head on every hidden
layer (``fwdgrad.LocalMLP``); each block's pre-activations are perturbed per
example and its weights get ``x^T g_hat(z)``. The transform reads ``batch=``.

Learning rates were picked by short sweeps on full MNIST (784-256-256-10,
batch 64); see benchmarks/fwdgrad_accuracy.py and BENCHMARKS.md.
"""

from __future__ import annotations

import optax
from flax import nnx

import fwdgrad
from beyondbp import models
from beyondbp.methods import Method, MethodConfig, Setup, register

#: SGD learning rates (momentum 0.9) of the three rows.
LR_WEIGHT = 1e-4
LR_ORTHOGONAL = 3.0
LR_LOCAL = 0.001


def _weight_perturbation(num_tangents: int, aggregate: str, lr: float):
    def build(cfg: MethodConfig) -> Setup:
        apply, params = cfg.build_model()
        tx = optax.chain(
            fwdgrad.forward_gradient(num_tangents=num_tangents, aggregate=aggregate,
                                     seed=cfg.seed),
            optax.sgd(lr, momentum=0.9))
        return Setup(params=params, apply=apply, tx=tx, needs_grad=False)
    return build


def _local(cfg: MethodConfig) -> Setup:
    if cfg.model != "mlp":
        raise ValueError(f"fwdgrad-local trains an MLP with local heads; model={cfg.model!r} is "
                         "not supported (use model='mlp', or the 'fwdgrad' weight-perturbation row)")
    model = fwdgrad.LocalMLP((cfg.num_inputs, *cfg.widths, cfg.num_classes),
                             rngs=nnx.Rngs(cfg.seed))
    apply, params = models.functional(model)
    tx = optax.chain(fwdgrad.activity_forward_gradient(seed=cfg.seed),
                     optax.sgd(LR_LOCAL, momentum=0.9))
    return Setup(params=params, apply=apply, tx=tx, needs_grad=False)


register(Method("fwdgrad",
                "forward gradient, weight perturbation (Baydin et al. 2022): K=1 Rademacher "
                f"tangent per step, no backward pass; SGD lr {LR_WEIGHT} momentum 0.9",
                _weight_perturbation(1, "mean", LR_WEIGHT), family="fwdgrad"))
register(Method("fwdgrad-orthogonal",
                "forward gradient, K=16 tangents sharing the primal, gradient projected onto their "
                f"span; SGD lr {LR_ORTHOGONAL} momentum 0.9",
                _weight_perturbation(16, "orthogonal", LR_ORTHOGONAL), family="fwdgrad"))
register(Method("fwdgrad-local",
                "forward gradient, activity perturbation with local losses (Ren et al. 2023): MLP "
                f"with a linear head per hidden layer; SGD lr {LR_LOCAL} momentum 0.9",
                _local, family="fwdgrad"))
