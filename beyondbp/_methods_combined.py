"""Registry rows that chain the three packages in one optax pipeline (issue: all three together).

Each row's transform is a plain ``optax.chain`` a user could write:

``fwdgrad+lowbit``: forward gradients (``jax.jvp``, no backward pass) through the 4-bit model
(``lowbit.dot_general`` has a forward-mode rule), the estimate put on the radix-4 FP4 grid by
``lowbit.quantize_updates``, then SGD.

``lowbit+analog``: backprop through the 4-bit model (FP4 gradients with two-phase rounding), SGD,
then ``analog.program(TAOX_RERAM)``: the devices take the step.

``fwdgrad+analog``: forward-gradient estimate, SGD, programmed onto TAOX_RERAM devices.

``fwdgrad+lowbit+analog``: the chain of ../shared/DESIGN.md ("Composition") on the 4-bit model:
forward gradient -> 4-bit updates -> SGD -> devices.

Forward-gradient rows use K = 4 Rademacher tangents sharing one primal pass, averaged (the
DESIGN.md chain's estimator), and plain SGD at a rate small enough for the estimate's
``(n - 1)|g|^2 / K`` variance (measured on mnist_small, 784-128-10: 55% test accuracy after 500
steps, 78% after 3,000, with or without the 4-bit update grid).

Measured limitation: on TAOX_RERAM the forward-gradient rows barely train. Each update is mostly
zero-mean noise, and the device's up/down asymmetry turns zero-mean pulse trains into a drift
toward its symmetry point that is larger than the signal (Gokmen & Haensch 2020, the motivation
for Tiki-Taka / mixed-precision transfer). A digital accumulator that programs only whole device
steps (Nandakumar et al. 2020) is the known remedy; it is not implemented yet.
"""

from __future__ import annotations

import optax

import analog
import fwdgrad
import lowbit
from beyondbp import _methods_analog, _methods_lowbit
from beyondbp.methods import Method, MethodConfig, Setup, register

#: Forward-gradient settings shared by the combined rows.
NUM_TANGENTS = 4
LR_FWD = 2e-3
LR_BACKPROP = 0.05
DEVICE = analog.presets.TAOX_RERAM


def _build(cfg: MethodConfig, *, forward: bool, four_bit: bool, devices: bool) -> Setup:
    apply, params = _methods_lowbit.build_model(cfg) if four_bit else cfg.build_model()
    chain = []
    if forward:
        chain.append(fwdgrad.forward_gradient(num_tangents=NUM_TANGENTS, seed=cfg.seed))
    if four_bit:
        chain.append(lowbit.quantize_updates(lowbit.RADIX4_FP4, seed=cfg.seed + 1))
    chain.append(optax.sgd(LR_FWD) if forward else optax.sgd(LR_BACKPROP, momentum=0.9))
    if devices:
        chain.append(analog.program(DEVICE, seed=cfg.seed + 2))
    return Setup(params=params, apply=apply, tx=optax.chain(*chain), needs_grad=not forward,
                 energy=_methods_analog.energy_of if devices else None)


def _row(name, description, **parts):
    register(Method(name, description, lambda cfg: _build(cfg, **parts), family="combined"))


_row("fwdgrad+lowbit", f"forward gradient (K={NUM_TANGENTS}, mean) through the 4-bit "
     f"model, updates on the radix-4 FP4 grid, SGD lr {LR_FWD}",
     forward=True, four_bit=True, devices=False)
_row("lowbit+analog", f"4-bit model, backprop FP4 gradients on the radix-4 grid, SGD lr "
     f"{LR_BACKPROP} momentum 0.9, programmed onto TAOX_RERAM devices",
     forward=False, four_bit=True, devices=True)
_row("fwdgrad+analog", f"forward gradient (K={NUM_TANGENTS}, mean), SGD lr {LR_FWD}, "
     "programmed onto TAOX_RERAM devices", forward=True, four_bit=False, devices=True)
_row("fwdgrad+lowbit+analog", f"all three: forward gradient (K={NUM_TANGENTS}, mean) "
     f"through the 4-bit model -> radix-4 FP4 updates -> SGD lr {LR_FWD} -> TAOX_RERAM devices", forward=True, four_bit=True, devices=True)
