"""Registry rows for float32 backprop, the reference every other row is measured against."""

from __future__ import annotations

from collections.abc import Callable

import optax

from beyondbp.methods._registry import Method, MethodConfig, Setup, register


def build_backprop(optimizer: Callable[[], optax.GradientTransformation]):
    """A ``build(cfg)`` that trains the configured reference model with ``optimizer()``."""

    def build(cfg: MethodConfig) -> Setup:
        apply, params = cfg.build_model()
        return Setup(params=params, apply=apply, tx=optimizer(), needs_grad=True)

    return build


register(
    Method(
        "backprop",
        "float32 backprop, SGD lr 0.05 momentum 0.9",
        build_backprop(lambda: optax.sgd(0.05, momentum=0.9)),
    )
)
register(
    Method(
        "backprop-adam", "float32 backprop, Adam lr 1e-3", build_backprop(lambda: optax.adam(1e-3))
    )
)
