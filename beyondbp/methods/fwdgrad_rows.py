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
group-wise local losses (sec. 4) with groups of ``LOCAL_GROUP_SIZE`` units; the
heads take their exact local gradient, as in Ren et al.'s released code; and
:func:`local_num_tangents` tangents per example, the fewest that hold the estimate's
second moment within ``LOCAL_MOMENT_BOUND`` times the exact local gradient's
(:func:`beyondbp.methods._rates.tangents_for_moment`); then Adam with a cosine
decay to zero over ``cfg.steps``. Why: exact local gradients of the same network and losses match
backprop, so the row's former gap was the estimator's variance, which the tangent
count bounds (BENCHMARKS.md, "Cause 5: fwdgrad-local's estimator variance").

``fwdgrad-mixer`` and ``fwdgrad-conv``: the same estimator (LG-FG-A: block-,
patch- and group-wise local losses, ReLU-masked tangents) on Ren et al.'s
LocalMixer (``fwdgrad.LocalMixer``) and on a conv net with a local head per
block (``fwdgrad.LocalConvNet``), through ``fwdgrad.local_forward_gradient``.
Each row builds its own network from the data's image shape and the configured
widths by the fixed rules of :func:`mixer_config` and :func:`conv_config` (the
same for ``model="mlp"`` and ``"cnn"``: the row's network is its own), and
trains it with the same second-moment bound on K (:func:`net_num_tangents`)
and exact head gradients (which ``fwdgrad.local_forward_gradient`` always
gives these networks' heads), and Adam cosine-decayed to zero over the run
(:func:`adam_cosine`), so the schedule is a fraction of the budget on any data
set, never a step count: the conv net at ``fwdgrad-local``'s rate, the mixer at
its own (``LR_MIXER_ADAM``, swept on MNIST).
``beyondbp compare --model mixer|conv`` trains the same networks end to end with
one classifier head (:mod:`beyondbp.models_local`).

Learning rates were picked by short sweeps on full MNIST (784-256-256-10,
batch 64); see benchmarks/fwdgrad_accuracy.py and BENCHMARKS.md.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from flax import nnx

import fwdgrad
from beyondbp import models, models_local
from beyondbp.methods._rates import tangents_for_moment
from beyondbp.methods._registry import Method, MethodConfig, NotApplicable, Setup, register
from beyondbp.models_local import CONV_CHANNELS, LOCAL_GROUP_SIZE, local_num_groups

#: SGD learning rates (momentum 0.9) of the three rows.
LR_WEIGHT = 1e-4
LR_ORTHOGONAL = 3.0
#: Time constant (steps) of the K=1 row's inverse-time decay: the rate halves after this many.
DECAY_STEPS = 2000
#: fwdgrad-local: Adam peak rate (cosine decay to 0) and units per local-loss group. Full
#: MNIST, 784-256-256-10, 3 epochs: group 8 / Adam 3e-3 -> 2.97% error; group 16 -> 3.93%;
#: no mask -> 4.32%; plain FG-A at SGD 0.001 -> 18.4% (BENCHMARKS.md).
LR_LOCAL_ADAM = 3e-3
#: fwdgrad-local: bound on the estimate's second moment, in units of the exact local gradient's
#: (``E|g_hat|^2 <= 2 |g|^2``: the noise no larger than the signal; accuracy against the bound:
#: BENCHMARKS.md, "Cause 5").
LOCAL_MOMENT_BOUND = 2.0
#: fwdgrad-mixer's Adam peak rate (cosine to 0). The row first borrowed fwdgrad-local's 3e-3,
#: set on the MLP; swept on the mixer itself on full MNIST (one epoch, seed 0, no raw-patch
#: norm): 3e-3 93.18%, 1e-2 95.41%; Ren et al.'s SGD recipe (momentum 0.9, lr 0.05, 10% warm-up,
#: cosine, weight decay 1e-4) 89.27%. At 3e-3 the mixer was also far from fitting 345 steps of
#: 1,500 images (65.3% against 90.1% at 1e-2, seed 0; BENCHMARKS.md, "Stop 33").
LR_MIXER_ADAM = 1e-2


def local_num_tangents(widths) -> int:
    """Tangents per example of ``fwdgrad-local``: the fewest that keep the second moment of the
    largest local-loss group's estimate within ``LOCAL_MOMENT_BOUND`` of the exact gradient's
    (7 for groups of 8 units; 1 for a group of one unit, whose estimate is exact)."""
    group = max(widths) // local_num_groups(widths)
    return tangents_for_moment(group, LOCAL_MOMENT_BOUND)


def _image_shape(cfg: MethodConfig) -> tuple[int, int, int]:
    try:
        return models_local.image_shape(cfg.input_shape)
    except ValueError as e:
        raise NotApplicable(str(e)) from None


def mixer_config(cfg: MethodConfig) -> fwdgrad.MixerConfig:
    """The ``fwdgrad-mixer`` network for a configuration
    (:func:`beyondbp.models_local.mixer_config`: 7x7 patches on 28x28, one block per width, at least two, groups of >= 8 units, LG-FG-A)."""
    return models_local.mixer_config(_image_shape(cfg), cfg.widths, cfg.num_classes)


def conv_config(cfg: MethodConfig) -> fwdgrad.ConvNetConfig:
    """The ``fwdgrad-conv`` network for a configuration (:func:`beyondbp.models_local.conv_config`:
    ``CONV_CHANNELS`` cut to what the image halves for, groups of >= 8 units, LG-FG-A)."""
    return models_local.conv_config(_image_shape(cfg), cfg.num_classes)


def net_num_tangents(config: fwdgrad.MixerConfig | fwdgrad.ConvNetConfig) -> int:
    """Tangents per example of ``fwdgrad-mixer`` / ``fwdgrad-conv``: ``fwdgrad-local``'s rule
    (:func:`local_num_tangents`) for the largest channel group of any block, the units one
    (patch, group) local loss perturbs at a grouped site (15 for the conv net's 64-channel
    blocks in 4 groups, 7 for the mixer's groups of 8). The mixer's token-mixing sites feed
    every group (``per_group=False``): their estimate stays above the bound."""
    widths = config.channels if isinstance(config, fwdgrad.ConvNetConfig) else (config.channels,)
    group = max(widths) // config.num_groups
    return tangents_for_moment(group, LOCAL_MOMENT_BOUND)


def adam_cosine(peak: float):
    """The optimiser of a local-loss network row: Adam at ``peak``, cosine-decayed to 0 over the
    run (``fwdgrad-local``'s recipe; the mixer at its own rate ``LR_MIXER_ADAM``)."""

    def make(cfg: MethodConfig) -> optax.GradientTransformation:
        return optax.adam(optax.cosine_decay_schedule(peak, cfg.steps))

    return make


def _local_net(name: str, make_config, init, apply, optimizer):
    def build(cfg: MethodConfig) -> Setup:
        config = make_config(cfg)
        params = init(cfg.key, config)
        tx = optax.chain(
            # the heads already take their exact local gradient (fwdgrad._local._param_grads:
            # jax.grad of the head loss on constant features, fwdgrad-local's head_grad="exact")
            fwdgrad.local_forward_gradient(
                config, seed=cfg.seed, num_tangents=net_num_tangents(config)
            ),
            optimizer(cfg),
        )
        return Setup(
            params=params,
            apply=lambda p, x: apply(p, x, config),
            tx=tx,
            needs_grad=False,
        )

    build.__name__ = f"build_{name}"
    return build


def _inverse_time_decay(lr: float, steps: int):
    def schedule(count):
        return jnp.float32(lr) / (1.0 + jnp.asarray(count, jnp.float32) / jnp.float32(steps))

    return schedule


def _weight_perturbation(
    num_tangents: int, aggregate: str, lr: float, decay: bool = False, tangent: str = "rademacher"
):
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
            fwdgrad.forward_gradient(
                num_tangents=num_tangents, aggregate=aggregate, tangent=tangent, seed=cfg.seed
            ),
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
    # head_grad="exact": a head is one linear layer reading a constant, so its gradient
    # a^T (softmax - onehot) / B needs the loss's derivative at the logits and no backward pass
    # through any layer; Ren et al.'s code trains its heads with it (jax.grad of the head loss,
    # local_forward_gradient/train_mixer_supervised.py). Perturbing the 10 logits instead added
    # a (10 - 1)|g|^2 noise to the prediction layer itself: 0.5 points on Fashion-MNIST.
    tx = optax.chain(
        fwdgrad.activity_forward_gradient(
            seed=cfg.seed,
            num_groups=local_num_groups(cfg.widths),
            num_tangents=local_num_tangents(cfg.widths),
            head_grad="exact",
        ),
        adam_cosine(LR_LOCAL_ADAM)(cfg),
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
        "fwdgrad-rank1",
        "forward gradient, weight perturbation as 'fwdgrad' with rank-one tangents: each weight "
        "matrix's tangent is s r^T for random sign vectors s, r (the same per-entry variance as "
        "Rademacher), so x (s r^T) = (x s) r^T costs a matrix-vector product, not a matmul; "
        f"SGD lr {LR_WEIGHT}/(1 + t/{DECAY_STEPS}) momentum 0.9",
        _weight_perturbation(1, "mean", LR_WEIGHT, decay=True, tangent="rank1"),
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
        f"({LOCAL_GROUP_SIZE} units a group), K tangents for a second moment <= "
        f"{LOCAL_MOMENT_BOUND:g}x the exact gradient's "
        f"(K = {tangents_for_moment(LOCAL_GROUP_SIZE, LOCAL_MOMENT_BOUND)} for full groups), exact head "
        f"gradients; Adam lr {LR_LOCAL_ADAM} cosine-decayed",
        _local,
        family="fwdgrad",
    )
)
register(
    Method(
        "fwdgrad-mixer",
        "forward gradient, LG-FG-A on Ren et al.'s LocalMixer (2023): patches a quarter of "
        "the image side (7x7 on MNIST), a local head per block, block-, patch- and group-wise "
        f"local losses, ReLU-masked tangents, K for a second moment <= "
        f"{LOCAL_MOMENT_BOUND:g}x the exact gradient's per channel group, exact head gradients; "
        f"Adam lr {LR_MIXER_ADAM} cosine-decayed",
        _local_net(
            "mixer",
            mixer_config,
            fwdgrad.mixer_init,
            fwdgrad.mixer_apply,
            adam_cosine(LR_MIXER_ADAM),
        ),
        family="fwdgrad",
    )
)
register(
    Method(
        "fwdgrad-conv",
        "forward gradient, LG-FG-A on a conv net with a local head per block "
        f"(channels {CONV_CHANNELS}, 2x2 average pools), block-, patch- and group-wise local "
        f"losses, ReLU-masked tangents, K for a second moment <= "
        f"{LOCAL_MOMENT_BOUND:g}x the exact gradient's per channel group, exact head gradients; "
        f"Adam lr {LR_LOCAL_ADAM} cosine-decayed",
        _local_net(
            "conv",
            conv_config,
            fwdgrad.convnet_init,
            fwdgrad.convnet_apply,
            adam_cosine(LR_LOCAL_ADAM),
        ),
        family="fwdgrad",
    )
)
