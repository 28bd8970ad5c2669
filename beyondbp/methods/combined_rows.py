"""Registry rows that chain the three packages in one optax pipeline (issue: all three together).

Each row's transform is a plain ``optax.chain`` a user could write:

``fwdgrad+lowbit``: forward gradients (``jax.jvp``, no backward pass) through the 4-bit model
(``lowbit.dot_general`` has a forward-mode rule), the estimate put on the radix-4 FP4 grid by
``lowbit.quantize_updates``, then SGD.

``lowbit+analog``: backprop through the ``lowbit`` row's model (FP4 gradients with two-phase
rounding, the last layer in 8 bits: ``lowbit_rows.CLASSIFIER_8BIT``), SGD, then
``analog.program(TAOX_RERAM)``: the devices take the step.

``fwdgrad+analog``: activity-perturbed forward gradients with group-wise local losses (Ren et
al., ICLR 2023; ``fwdgrad.activity_forward_gradient`` on a ``fwdgrad.LocalMLP``, groups of
``fwdgrad_rows.LOCAL_GROUP_SIZE`` units as in ``fwdgrad-local``, K = 4 tangents as in the
DESIGN.md chain), SGD with momentum at :func:`local_rate`, programmed onto TAOX_RERAM devices.

``fwdgrad+lowbit+analog``: all three in one chain: the same activity-perturbed forward gradient,
put on the radix-4 FP4 grid by ``lowbit.quantize_updates``, SGD with momentum, TAOX_RERAM devices.

The device chains' rate is a rule, not a number tuned on MNIST: backprop's peak rate divided by
the estimate's second moment ``1 + (d - 1) / K`` for ``d`` perturbed units per local loss
(:func:`beyondbp.methods._rates.forward_gradient_rate`), on a cosine to 0 over the run like
``backprop``. The former constant rate 1e-3 with one group per block (d = 256) is close to
that rule's value for d = 256 (7.7e-4); it left the chains 8 points behind ``fwdgrad-local`` on
one epoch of Fashion-MNIST (74.5% against 82.5%) and still climbing after 15 epochs of 1,500
images (61.6%): the rate, not the devices, limited them. Groups of 8 units cut the second
moment from 65 |g|^2 to 2.75 |g|^2 (Ren et al., sec. 4), and the rule turns that into a
24-fold larger rate. With it, 3 seeds: 82.7% and 82.6% on Fashion-MNIST (one epoch), 88.6% and
88.9% on the 1,500 shapes, 93.9% and 93.7% on MNIST (88.8% and 88.7% before) (BENCHMARKS.md,
"Recipes on data they were not tuned on").

``fwdgrad+lowbit`` uses K = 4 Rademacher weight-perturbation tangents sharing one primal pass,
averaged (the DESIGN.md chain's estimator), through the 4-bit model, and plain SGD at a rate small
enough for the estimate's ``(n - 1)|g|^2 / K`` variance (mnist_small, 784-128-10: 55% test accuracy
after 500 steps, 78% after 3,000, with or without the 4-bit update grid).

Why the device rows use activity perturbation: a weight-perturbation estimate of a 270k-parameter
MLP is mostly zero-mean noise (about sqrt(n/K) = 260 times the signal per weight), and a TaOx
device's up/down asymmetry and exponential step turn zero-mean pulse trains into a drift towards
its symmetry point that is larger than the signal (Gokmen & Haensch 2020): with it, the device
rows stayed at 10-15% (BENCHMARKS.md). Perturbing each block's pre-activations instead divides the
variance by the fan-in and the local losses keep the perturbed dimension small (Ren et al.), so the
devices receive updates that are mostly signal. With one group per block and the former
constant rate 1e-3: 76.5% after 200 steps on mnist_small (K = 4), with and without the 4-bit
grid; 88.5-88.6% after one epoch of full MNIST, 92.3% after 10 (BENCHMARKS.md). The DESIGN.md chain itself (weight perturbation -> 4-bit -> SGD -> devices)
is tested as written in tests/test_composition.py.
"""

from __future__ import annotations

import optax
from flax import nnx

import analog
import beyondbp.methods.analog_rows as analog_rows  # the modules, not the package's __init__
import beyondbp.methods.fwdgrad_rows as fwdgrad_rows
import beyondbp.methods.lowbit_rows as lowbit_rows
import fwdgrad
import lowbit
from beyondbp import models
from beyondbp.methods._rates import cosine_to_zero, forward_gradient_rate
from beyondbp.methods._registry import Method, MethodConfig, NotApplicable, Setup, register

#: Forward-gradient settings shared by the combined rows.
NUM_TANGENTS = 4
LR_FWD = 2e-3
LR_BACKPROP = 0.05
DEVICE = analog.presets.TAOX_RERAM


def local_rate(widths) -> float:
    """Peak SGD rate of the device chains: ``LR_BACKPROP`` scaled by the local estimate's
    second moment for one local-loss group of the configured widths (module docstring)."""
    group = min(widths) // fwdgrad_rows.local_num_groups(widths)
    return forward_gradient_rate(LR_BACKPROP, NUM_TANGENTS, group)


def _build_local(cfg: MethodConfig, *, four_bit: bool) -> Setup:
    """Activity-perturbed local forward gradients (-> 4-bit updates) -> SGD -> devices."""
    if cfg.model != "mlp":
        raise NotApplicable(
            f"the forward-gradient device rows train an MLP with local heads; "
            f"model={cfg.model!r} is not supported (use model='mlp')"
        )
    model = fwdgrad.LocalMLP(
        (cfg.num_inputs, *cfg.widths, cfg.num_classes), rngs=nnx.Rngs(cfg.seed)
    )
    apply, params = models.functional(model)
    groups = fwdgrad_rows.local_num_groups(cfg.widths)
    chain = [
        fwdgrad.activity_forward_gradient(
            num_tangents=NUM_TANGENTS, seed=cfg.seed, num_groups=groups
        )
    ]
    if four_bit:
        chain.append(lowbit.quantize_updates(lowbit.RADIX4_FP4, seed=cfg.seed + 1))
    chain += [
        optax.sgd(cosine_to_zero(local_rate(cfg.widths), cfg.steps), momentum=0.9),
        analog.program(DEVICE, seed=cfg.seed + 2),
    ]
    return Setup(
        params=params,
        apply=apply,
        tx=optax.chain(*chain),
        needs_grad=False,
        energy=analog_rows.energy_of,
    )


def _build(cfg: MethodConfig, *, forward: bool, four_bit: bool, devices: bool) -> Setup:
    if forward and devices:
        return _build_local(cfg, four_bit=four_bit)
    # the 8-bit classifier rule is about the FP4 input-gradient GEMM (lowbit_rows.CLASSIFIER_8BIT);
    # a forward gradient runs no backward GEMM, so fwdgrad+lowbit keeps every layer in 4 bits
    if four_bit:
        apply, params = lowbit_rows.build_model(cfg, classifier_8bit=not forward)
    else:
        apply, params = cfg.build_model()
    chain = []
    if forward:
        chain.append(fwdgrad.forward_gradient(num_tangents=NUM_TANGENTS, seed=cfg.seed))
    if four_bit:
        chain.append(lowbit.quantize_updates(lowbit.RADIX4_FP4, seed=cfg.seed + 1))
    # 4-bit backprop gradients take the lowbit row's decaying rate (lowbit_rows.rate: why)
    backprop_rate = lowbit_rows.rate(cfg.steps) if four_bit else LR_BACKPROP
    chain.append(optax.sgd(LR_FWD) if forward else optax.sgd(backprop_rate, momentum=0.9))
    if devices:
        chain.append(analog.program(DEVICE, seed=cfg.seed + 2))
    return Setup(
        params=params,
        apply=apply,
        tx=optax.chain(*chain),
        needs_grad=not forward,
        energy=analog_rows.energy_of if devices else None,
    )


def _row(name, description, **parts):
    register(Method(name, description, lambda cfg: _build(cfg, **parts), family="combined"))


_row(
    "fwdgrad+lowbit",
    f"forward gradient (K={NUM_TANGENTS}, mean) through the 4-bit "
    f"model, updates on the radix-4 FP4 grid, SGD lr {LR_FWD}",
    forward=True,
    four_bit=True,
    devices=False,
)
_row(
    "lowbit+analog",
    f"4-bit model (last layer in 8 bits), backprop FP4 gradients on the radix-4 grid, SGD lr "
    f"{LR_BACKPROP} on a cosine to 0 over the run, momentum 0.9, programmed onto TAOX_RERAM "
    "devices",
    forward=False,
    four_bit=True,
    devices=True,
)
_row(
    "fwdgrad+analog",
    f"forward gradient (K={NUM_TANGENTS}), activity perturbation with group-wise local "
    f"losses (Ren et al. 2023), SGD lr {LR_BACKPROP} x K / (K + group - 1) on a cosine to 0, "
    "momentum 0.9, programmed onto TAOX_RERAM devices",
    forward=True,
    four_bit=False,
    devices=True,
)
_row(
    "fwdgrad+lowbit+analog",
    f"all three: activity-perturbed local forward gradient "
    f"(K={NUM_TANGENTS}, group-wise local losses) -> radix-4 FP4 updates -> SGD lr "
    f"{LR_BACKPROP} x K / (K + group - 1) on a cosine to 0, momentum 0.9 -> TAOX_RERAM devices",
    forward=True,
    four_bit=True,
    devices=True,
)
