"""Reference flax nnx models, each also usable as a pure ``apply(params, x)``.

Forward-mode estimators (``fwdgrad``) and the device model (``analog.program``)
work on plain pytrees of arrays, so every model here can be split into a pure
function and a nested dict of parameters with :func:`functional`::

    model = MLP((784, 1024, 1024, 10), rngs=nnx.Rngs(0))
    apply, params = functional(model)
    logits = apply(params, x)           # same numbers as model(x)
    jax.jvp(lambda p: apply(p, x), (params,), (tangent,))

The layer constructors are arguments (``linear=``, ``conv=``), so a quantized
layer with the same signature (``lowbit.nnx.Linear``) builds the 4-bit variant
of the same architecture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bbcore.activations import ACTIVATIONS, activation_fn
from bbcore.checks import flat_inputs
from beyondbp._resnet import ResNet
from beyondbp._vit import ViT
from beyondbp.models_local import NAMES as _LOCAL_NAMES
from beyondbp.models_local import build as _build_local

__all__ = [
    "MLP",
    "CNN",
    "functional",
    "ACTIVATIONS",
    "mlp",
    "cnn",
    "mlp4bit",
    "cnn4bit",
    "cross_entropy",
    "ResNet",
    "ViT",
    "resnet",
    "vit",
    "resnet4bit",
    "vit4bit",
    "NAMES",
    "build",
]

#: The reference models by name (``beyondbp compare --model``).
NAMES = ("mlp", "cnn", "resnet", "vit", *_LOCAL_NAMES)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels, computed in float32 (the models' loss)."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels
    ).mean()


class MLP(nnx.Module):
    """Multi-layer perceptron: ``widths[0]`` inputs, hidden layers, ``widths[-1]`` outputs.

    Inputs of any shape ``(batch, ...)`` are flattened. Baydin et al. (2022) use
    784-1024-1024-10 with ReLU for MNIST; that is the reference model here.

    Args:
      widths: layer widths including input and output, at least two entries.
      activation: name in :data:`ACTIVATIONS` or a callable, applied between layers.
      rngs: ``nnx.Rngs`` for initialisation.
      linear: layer constructor ``linear(in, out, *, rngs)``; ``nnx.Linear`` by default; or a
        sequence of constructors, one per layer (e.g. 8-bit first and last layers).
      dtype / param_dtype: computation and parameter dtypes.
    """

    def __init__(
        self,
        widths: Sequence[int],
        *,
        activation: str | Callable = "relu",
        rngs: nnx.Rngs,
        linear: Callable[..., nnx.Module] | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ):
        widths = tuple(widths)
        if len(widths) < 2 or any((not isinstance(w, int)) or w < 1 for w in widths):
            raise ValueError(
                f"widths={widths!r}: need at least two positive integers (inputs, ..., outputs), "
                "e.g. (784, 1024, 1024, 10)"
            )
        self.widths = widths
        self.activation = activation_fn(activation)
        linear = linear or nnx.Linear
        ctors = list(linear) if isinstance(linear, (list, tuple)) else [linear] * (len(widths) - 1)
        if len(ctors) != len(widths) - 1:
            raise ValueError(f"linear: {len(ctors)} constructors for {len(widths) - 1} layers")

        def extra(c):
            return {} if c is not nnx.Linear else {"dtype": dtype, "param_dtype": param_dtype}

        self.layers = nnx.List(
            [c(a, b, rngs=rngs, **extra(c)) for c, a, b in zip(ctors, widths[:-1], widths[1:])]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = flat_inputs(x, self.widths[0], "MLP")
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class CNN(nnx.Module):
    """LeNet-5-sized convolutional network for 28x28 single-channel images.

    conv 5x5x6 (same) - act - avgpool 2 - conv 5x5x16 (valid) - act - avgpool 2 -
    dense 120 - act - dense 84 - act - dense ``num_classes`` (LeCun et al., 1998;
    about 61k parameters). Inputs ``(batch, 28, 28)`` or ``(batch, 28, 28, 1)``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 1,
        activation: str | Callable = "relu",
        rngs: nnx.Rngs,
        linear: Callable[..., nnx.Module] | None = None,
        conv: Callable[..., nnx.Module] | None = None,
    ):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: need an integer >= 2")
        linear = linear or nnx.Linear
        conv = conv or nnx.Conv
        self.activation = activation_fn(activation)
        self.in_channels = in_channels
        self.conv1 = conv(in_channels, 6, kernel_size=(5, 5), padding="SAME", rngs=rngs)
        self.conv2 = conv(6, 16, kernel_size=(5, 5), padding="VALID", rngs=rngs)
        self.fc1 = linear(16 * 5 * 5, 120, rngs=rngs)
        self.fc2 = linear(120, 84, rngs=rngs)
        self.fc3 = linear(84, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[1:3] != (28, 28) or x.shape[3] != self.in_channels:
            raise ValueError(
                f"CNN expects images of shape (batch, 28, 28[, {self.in_channels}]), got {x.shape}"
            )
        act = self.activation
        x = _avg_pool2(act(self.conv1(x)))
        x = _avg_pool2(act(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        x = act(self.fc1(x))
        x = act(self.fc2(x))
        return self.fc3(x)


def _avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling, stride 2 (even spatial sizes): a reshape and a mean.

    Written out because flax's pooling divides by a Python int, which strict dtype
    promotion rejects; this keeps the input dtype.
    """
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def functional(model: nnx.Module) -> tuple[Callable[[Any, jax.Array], jax.Array], dict]:
    """Split an nnx module into a pure ``apply(params, x)`` and its parameters.

    ``params`` is a nested dict of arrays (``nnx.State.to_pure_dict``) holding the
    ``nnx.Param`` leaves; any other state (e.g. learnable quantizer clips declared
    as ``nnx.Param``) is included, everything else is closed over. ``apply`` has
    no side effects, so it works under ``jax.jit``, ``jax.grad``, ``jax.jvp`` and
    ``jax.vmap``.
    """
    # nnx.split returns one state per filter: two filters here, so three values
    graphdef, params_state, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
    params = nnx.to_pure_dict(params_state)

    def apply(params, x):
        module = nnx.merge(graphdef, params, rest)
        return module(x)

    return apply, params


def mlp(
    key: jax.Array,
    widths: Sequence[int] = (784, 1024, 1024, 10),
    *,
    activation: str | Callable = "relu",
    recipe=None,
    **kwargs,
):
    """``functional(MLP(...))`` seeded from a JAX key: returns ``(apply, params)``.

    ``recipe``: optional ``lowbit.Recipe`` applied with ``lowbit.apply_rules`` (see :func:`resnet`).
    """
    return _quantized(MLP(widths, activation=activation, rngs=_seeded(key), **kwargs), recipe)


def cnn(key: jax.Array, num_classes: int = 10, *, recipe=None, **kwargs):
    """``functional(CNN(...))`` seeded from a JAX key: returns ``(apply, params)``; ``recipe`` as :func:`mlp`."""
    return _quantized(CNN(num_classes, rngs=_seeded(key), **kwargs), recipe)


def mlp4bit(
    key: jax.Array,
    widths: Sequence[int] = (784, 1024, 1024, 10),
    *,
    config=None,
    activation: str | Callable = "relu",
    edge_config=None,
):
    """The :class:`MLP` with every layer a ``lowbit.nnx.Linear`` (Sun et al. 2020 4-bit training).

    ``config`` is a ``lowbit.QuantConfig`` (default: ``QuantConfig()``, INT4
    weights/activations, radix-4 FP4 gradients with GradScale and TPR). Same key,
    same initial weights as :func:`mlp`. ``edge_config``, if given, is used for the first and
    the last layer instead (Sun et al. keep those in 8 bits). Returns ``(apply, params)``.
    """
    import functools

    import lowbit

    config = lowbit.QuantConfig() if config is None else config
    inner = functools.partial(lowbit.nnx.Linear, config=config)
    if edge_config is None:
        return mlp(key, widths, activation=activation, linear=inner)
    edge = functools.partial(lowbit.nnx.Linear, config=edge_config)
    n = len(tuple(widths)) - 1
    ctors = [edge if i in (0, n - 1) else inner for i in range(n)]
    return mlp(key, widths, activation=activation, linear=ctors)


def cnn4bit(key: jax.Array, num_classes: int = 10, *, config=None, **kwargs):
    """The LeNet-sized :class:`CNN` built from ``lowbit.nnx.Conv`` / ``lowbit.nnx.Linear``."""
    import functools

    import lowbit

    config = lowbit.QuantConfig() if config is None else config
    return cnn(
        key,
        num_classes,
        linear=functools.partial(lowbit.nnx.Linear, config=config),
        conv=functools.partial(lowbit.nnx.Conv, config=config),
        **kwargs,
    )


def _seeded(key: jax.Array) -> nnx.Rngs:
    return nnx.Rngs(int(jax.random.randint(key, (), 0, 2**31 - 1)))


def _quantized(model: nnx.Module, recipe) -> tuple[Callable[[Any, jax.Array], jax.Array], dict]:
    """``functional(model)`` after ``lowbit.apply_rules(model, recipe)`` (``None``: float32)."""
    if recipe is not None:
        import lowbit

        lowbit.apply_rules(model, recipe)
    return functional(model)


def resnet(key: jax.Array, depth: int = 20, num_classes: int = 10, *, recipe=None, **kwargs):
    """``functional(ResNet(depth, num_classes, ...))`` seeded from a JAX key: ``(apply, params)``.

    ``recipe``: a ``lowbit.Recipe`` (or rules) applied with ``lowbit.apply_rules`` before the
    split; ``None`` keeps float32. Same key, same initial weights whatever the recipe. Keyword
    arguments go to :class:`ResNet` (``in_channels``, ``widths``, ``groups``, ``shortcut``).
    """
    return _quantized(ResNet(depth, num_classes, rngs=_seeded(key), **kwargs), recipe)


def vit(
    key: jax.Array,
    num_classes: int = 10,
    *,
    patch: int = 4,
    depth: int = 4,
    width: int = 128,
    heads: int = 4,
    recipe=None,
    **kwargs,
):
    """``functional(ViT(...))`` seeded from a JAX key: ``(apply, params)``; ``recipe`` as :func:`resnet`."""
    model = ViT(
        num_classes, patch=patch, depth=depth, width=width, heads=heads, rngs=_seeded(key), **kwargs
    )
    return _quantized(model, recipe)


def resnet4bit(key: jax.Array, depth: int = 20, num_classes: int = 10, *, recipe=None, **kwargs):
    """:func:`resnet` through ``lowbit.recipes.SUN2020`` by default (Sun et al. 2020).

    4-bit INT4/radix-4 FP4 convolutions, with the stem, the classifier and the 1x1 projection
    shortcuts in 8 bits, as the paper kept them. Pass another ``lowbit.Recipe`` as ``recipe``.
    """
    import lowbit

    recipe = lowbit.recipes.SUN2020 if recipe is None else recipe
    return resnet(key, depth, num_classes, recipe=recipe, **kwargs)


def vit4bit(key: jax.Array, num_classes: int = 10, *, recipe=None, **kwargs):
    """:func:`vit` through ``lowbit.recipes.SUN2020`` by default (embedding and head in 8 bits)."""
    import lowbit

    recipe = lowbit.recipes.SUN2020 if recipe is None else recipe
    return vit(key, num_classes, recipe=recipe, **kwargs)


def build(
    name: str,
    key: jax.Array,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    widths: Sequence[int] = (256, 256),
    recipe=None,
    **kwargs,
):
    """``(apply, params)`` of the reference model ``name`` for examples of ``input_shape``.

    ``mlp``: ``inputs-widths-classes``; ``cnn``: the LeNet-sized :class:`CNN` (28x28x1);
    ``resnet``: ResNet-20 with ``in_channels`` from the shape; ``vit``: the patch-4, 4-block,
    width-128 :class:`ViT` for images of that size; ``mixer`` / ``conv``: the networks of the
    ``fwdgrad-mixer`` / ``fwdgrad-conv`` rows with one classifier at the end
    (:func:`beyondbp.models_local.build`). ``recipe`` as :func:`resnet`; ``kwargs``
    go to the model.
    """
    shape = tuple(int(s) for s in input_shape)
    if name in _LOCAL_NAMES:
        return _build_local(name, key, shape, num_classes, widths=widths, recipe=recipe, **kwargs)
    if name == "mlp":
        n = math.prod(shape)
        return mlp(key, (n, *widths, num_classes), recipe=recipe, **kwargs)
    if name == "cnn":
        return cnn(key, num_classes, recipe=recipe, **kwargs)
    if name not in NAMES:
        raise ValueError(f"model={name!r}: use one of {NAMES}")
    if len(shape) != 3:
        raise ValueError(f"model={name!r} needs images (H, W, C), got examples of shape {shape}")
    if name == "resnet":
        return resnet(key, 20, num_classes, in_channels=shape[2], recipe=recipe, **kwargs)
    return vit(
        key, num_classes, image_size=shape[:2], in_channels=shape[2], recipe=recipe, **kwargs
    )
