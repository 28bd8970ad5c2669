"""Registry rows for float32 backprop, the reference every other row is measured against.

``backprop``: SGD, momentum 0.9, rate 0.05 on a cosine to 0 over the run
(:func:`beyondbp.methods._rates.cosine_to_zero`). At a constant rate SGD ends on the noise
floor its minibatch gradients set, which grows with the rate (the rate-to-noise ratio sets the
excess loss); decaying the rate over the run's own length removes it on any data set and any
budget. One epoch, 3 seeds: Fashion-MNIST 83.4% at the constant rate, 85.7% on the cosine;
MNIST 96.6% and 96.8% (BENCHMARKS.md, "Recipes on data they were not tuned on", Cause 3).
"""

from __future__ import annotations

from collections.abc import Callable

import optax

from beyondbp.methods._rates import cosine_to_zero
from beyondbp.methods._registry import Method, MethodConfig, Setup, register

#: Peak SGD rate (momentum 0.9) of the ``backprop`` row.
LR = 0.05


def build_backprop(optimizer: Callable[[MethodConfig], optax.GradientTransformation]):
    """A ``build(cfg)`` that trains the configured reference model with ``optimizer(cfg)``."""

    def build(cfg: MethodConfig) -> Setup:
        apply, params = cfg.build_model()
        return Setup(params=params, apply=apply, tx=optimizer(cfg), needs_grad=True)

    return build


register(
    Method(
        "backprop",
        f"float32 backprop, SGD lr {LR} on a cosine to 0 over the run, momentum 0.9",
        build_backprop(lambda cfg: optax.sgd(cosine_to_zero(LR, cfg.steps), momentum=0.9)),
    )
)
register(
    Method(
        "backprop-adam",
        "float32 backprop, Adam lr 1e-3",
        build_backprop(lambda cfg: optax.adam(1e-3)),
    )
)
