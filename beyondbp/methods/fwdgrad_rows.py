"""Registry rows for ``fwdgrad``: forward gradients, no backward pass.

``fwdgrad``: weight perturbation, Baydin et al. (2022): one jvp along one
Rademacher tangent per step (K = 1, ``aggregate="mean"``), SGD with momentum at
a learning rate small enough for the estimator's ``(n - 1)|g|^2`` variance,
decayed as ``lr / (1 + t / 2000)``.

``fwdgrad-orthogonal``: K = 16 tangents sharing one primal pass, the gradient
projected onto their span, SGD at a larger rate (the projection's norm is at
most ``|g|``).

``fwdgrad-local``: activity perturbation with local greedy losses, Ren et al.
(ICLR 2023): the configured MLP with a linear classifier head on every hidden
layer (``fwdgrad.LocalMLP``); each block's pre-activations are perturbed per
example and its weights get ``x^T g_hat(z)``. The transform reads ``batch=``.
With Ren et al.'s two variance reductions: ReLU-masked tangents (sec. 3) and
group-wise local losses (sec. 4) with groups of ``LOCAL_GROUP_SIZE`` units, then
Adam with a cosine decay to zero over ``cfg.steps``.

Learning rates were picked by short sweeps on full MNIST (784-256-256-10,
batch 64); see benchmarks/fwdgrad_accuracy.py and BENCHMARKS.md.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax
from flax import nnx

import fwdgrad
from beyondbp import models
from beyondbp.methods._registry import Method, MethodConfig, NotApplicable, Setup, register

#: SGD learning rates (momentum 0.9) of the three rows.
LR_WEIGHT = 1e-4
LR_ORTHOGONAL = 3.0
#: SGD rate of plain FG-A local learning (kept for the fwdgrad+lowbit+analog row).
LR_LOCAL = 0.001
#: Time constant (steps) of the K=1 row's inverse-time decay: the rate halves after this many.
DECAY_STEPS = 2000
#: fwdgrad-local: Adam peak rate (cosine decay to 0) and units per local-loss group. Full
#: MNIST, 784-256-256-10, 3 epochs: group 8 / Adam 3e-3 -> 2.97% error; group 16 -> 3.93%;
#: no mask -> 4.32%; plain FG-A at SGD 0.001 -> 18.4% (BENCHMARKS.md).
LR_LOCAL_ADAM = 3e-3
LOCAL_GROUP_SIZE = 8


def local_num_groups(widths) -> int:
    """Groups per block: the smallest group of at least ``LOCAL_GROUP_SIZE`` units that
    divides every hidden width (one group when a width is smaller than that)."""
    g = math.gcd(*widths)
    size = next(s for s in range(min(LOCAL_GROUP_SIZE, g), g + 1) if g % s == 0)
    return g // size


def _inverse_time_decay(lr: float, steps: int):
    def schedule(count):
        return jnp.float32(lr) / (1.0 + jnp.asarray(count, jnp.float32) / jnp.float32(steps))

    return schedule


def _weight_perturbation(num_tangents: int, aggregate: str, lr: float, decay: bool = False):
    def build(cfg: MethodConfig) -> Setup:
        apply, params = cfg.build_model()
        # K=1 at a constant rate random-walks the weights until the activations blow up (full
        # MNIST, 784-256-256-10: diverged in epoch 4-5, the NaN policy then refused every step).
        # An inverse-time decay lr / (1 + t / T) (Robbins-Monro, the classic schedule for
        # high-variance stochastic gradients) keeps it stable over any budget without shortening
        # a short one: 46.4% after 1 epoch, 76.6% after 6, no refusals. A cosine decay over the
        # run was as stable (77.6% after 6 epochs) but cost a 1-epoch run half its accuracy.
        rate = _inverse_time_decay(lr, DECAY_STEPS) if decay else lr
        tx = optax.chain(
            fwdgrad.forward_gradient(num_tangents=num_tangents, aggregate=aggregate, seed=cfg.seed),
            optax.sgd(rate, momentum=0.9),
        )
        return Setup(params=params, apply=apply, tx=tx, needs_grad=False)

    return build


def _local(cfg: MethodConfig) -> Setup:
    if cfg.model != "mlp":
        raise NotApplicable(
            f"fwdgrad-local trains an MLP with local heads; model={cfg.model!r} is "
            "not supported (use model='mlp', or the 'fwdgrad' weight-perturbation row)"
        )
    model = fwdgrad.LocalMLP(
        (cfg.num_inputs, *cfg.widths, cfg.num_classes), rngs=nnx.Rngs(cfg.seed)
    )
    apply, params = models.functional(model)
    tx = optax.chain(
        fwdgrad.activity_forward_gradient(seed=cfg.seed, num_groups=local_num_groups(cfg.widths)),
        optax.adam(optax.cosine_decay_schedule(LR_LOCAL_ADAM, cfg.steps)),
    )
    return Setup(params=params, apply=apply, tx=tx, needs_grad=False)


register(
    Method(
        "fwdgrad",
        "forward gradient, weight perturbation (Baydin et al. 2022): K=1 Rademacher "
        f"tangent per step, no backward pass; SGD lr {LR_WEIGHT}/(1 + t/{DECAY_STEPS}) momentum 0.9",
        _weight_perturbation(1, "mean", LR_WEIGHT, decay=True),
        family="fwdgrad",
    )
)
register(
    Method(
        "fwdgrad-orthogonal",
        "forward gradient, K=16 tangents sharing the primal, gradient projected onto their "
        f"span; SGD lr {LR_ORTHOGONAL} momentum 0.9",
        _weight_perturbation(16, "orthogonal", LR_ORTHOGONAL),
        family="fwdgrad",
    )
)
register(
    Method(
        "fwdgrad-local",
        "forward gradient, activity perturbation with local losses (Ren et al. 2023): MLP "
        f"with a linear head per hidden layer, ReLU-masked tangents, group-wise local losses "
        f"({LOCAL_GROUP_SIZE} units a group); Adam lr {LR_LOCAL_ADAM} cosine-decayed",
        _local,
        family="fwdgrad",
    )
)
