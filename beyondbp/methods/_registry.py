"""The registry itself: :class:`Method`, :class:`MethodConfig`, :class:`Setup`, ``register``.

The rows live in their own modules (``beyondbp/methods/*_rows.py``), which import this one;
``beyondbp/methods/__init__.py`` imports them explicitly, in table order. Nothing here imports a
row, so there is no import cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax

from beyondbp import models
from beyondbp._not_applicable import NotApplicable as NotApplicable  # re-exported
from beyondbp.models import cross_entropy


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """What every method is built from, identical across methods in one comparison.

    key: PRNG key for parameter initialisation and the transforms' seeds.
    input_shape: shape of one example, e.g. ``(28, 28, 1)``.
    num_classes: number of labels.
    steps: total optimisation steps (for schedules).
    model: a name in ``beyondbp.models.NAMES``: ``"mlp"``, ``"cnn"``, ``"resnet"`` (ResNet-20)
      or ``"vit"`` (patch 4, 4 blocks, width 128).
    widths: hidden widths of the MLP (input and output are added).
    batch_size: the training batch (layers that record per-sample signals, such as
      ``analog.nnx.Linear``'s tap, are sized by it).
    """

    key: jax.Array
    input_shape: tuple[int, ...] = (28, 28, 1)
    num_classes: int = 10
    steps: int = 1000
    model: str = "mlp"
    widths: tuple[int, ...] = (256, 256)
    batch_size: int = 64

    def __post_init__(self):
        if self.model not in models.NAMES:
            raise ValueError(f"model={self.model!r}: use one of {models.NAMES}")
        if self.steps < 1:
            raise ValueError(f"steps={self.steps!r}: need at least 1")

    @property
    def num_inputs(self) -> int:
        n = 1
        for s in self.input_shape:
            n *= s
        return n

    @property
    def seed(self) -> int:
        """An integer seed derived from ``key`` for transforms that take ``seed=``."""
        return int(jax.random.randint(jax.random.fold_in(self.key, 1), (), 0, 2**31 - 1))

    def build_model(self, **kwargs):
        """``(apply, params)`` of the configured reference model (``models.build``; kwargs such
        as ``recipe=`` or layer constructors go to the model)."""
        return models.build(
            self.model,
            self.key,
            self.input_shape,
            self.num_classes,
            widths=self.widths,
            **kwargs,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    """Everything the training loop needs for one method.

    params: pytree of arrays being trained.
    apply: pure ``apply(params, x) -> logits``.
    tx: the optax transform (plain or ``GradientTransformationExtraArgs``).
    needs_grad: feed ``jax.grad`` of the loss as ``updates``; when False the loop
      passes ``None`` and the transform estimates from ``loss_fn=`` / ``batch=``.
    loss: ``loss(logits, labels) -> scalar``.
    energy: optional ``energy(opt_state, steps) -> dict`` with hardware energy per
      step (joules) for methods with a device model.
    """

    params: Any
    apply: Callable[[Any, jax.Array], jax.Array]
    tx: optax.GradientTransformation
    needs_grad: bool = True
    loss: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy
    energy: Callable[[Any, int], dict] | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """A named recipe: ``build(config) -> Setup``."""

    name: str
    description: str
    build: Callable[[MethodConfig], Setup]
    family: str = "backprop"


#: Every registered :class:`Method` by name, in registration (table) order.
REGISTRY: dict[str, Method] = {}
#: Former names that still resolve in :func:`get` (old -> current); not listed by :func:`names`,
#: so a comparison of every row runs each recipe once.
ALIASES: dict[str, str] = {}


def register_alias(old: str, new: str) -> None:
    """Make :func:`get` resolve the former name ``old`` to the registered row ``new``."""
    if new not in REGISTRY:
        raise ValueError(f"register_alias: {new!r} is not a registered method")
    if old in REGISTRY:
        raise ValueError(f"register_alias: {old!r} is a registered method, not a free name")
    ALIASES[old] = new


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry; refuses to shadow a name unless ``replace``."""
    if not isinstance(method, Method):
        raise TypeError(f"register expects a beyondbp.methods.Method, got {type(method).__name__}")
    if method.name in REGISTRY and not replace:
        raise ValueError(
            f"a method named {method.name!r} is already registered; "
            "pass replace=True to override it"
        )
    REGISTRY[method.name] = method
    return method


def names() -> list[str]:
    """Registered method names, in registration order."""
    return list(REGISTRY)


def get(name: str) -> Method:
    """The registered method called ``name`` (clear error listing the known ones)."""
    try:
        return REGISTRY[ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(REGISTRY)}") from None
