"""Flax nnx modules of the local-loss networks (mirroring ``lowbit.nnx``).

``LocalMLP``, ``LocalMixer`` and ``LocalConvNet`` hold their parameters as
``nnx.Param`` leaves; ``nnx.split(model, nnx.Param)`` and ``to_pure_dict()``
give the parameter dict the function API (``fwdgrad.local_mlp_grads``,
``fwdgrad.mixer_grads``, ``fwdgrad.convnet_grads``) and the optax transforms
(``fwdgrad.activity_forward_gradient``, ``fwdgrad.local_forward_gradient``)
expect. Ren, Kornblith, Liao, Hinton, "Scaling Forward Gradient With Local
Losses" (ICLR 2023).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bbcore.activations import activation_fn
from bbcore.checks import flat_inputs
from fwdgrad import _convnet, _mixer, _networks
from fwdgrad._activity import _block_input

__all__ = ["LocalMLP", "LocalMixer", "LocalConvNet"]


class LocalMLP(nnx.Module):
    """MLP with a linear classifier head on every hidden layer, for local losses.

    ``widths = (inputs, hidden..., classes)``: hidden layer i maps to
    ``widths[i + 1]`` and has a head ``widths[i + 1] -> classes``. The
    prediction is the last head's logits, so for ``(784, 1024, 1024, 10)`` the
    prediction path is exactly the 784-1024-1024-10 MLP of Baydin et al. (2022),
    plus one auxiliary 1024-10 head, and (``normalize=True``) a parameter-free
    layer norm on the input of every block after the first. Train with :func:`local_mlp_grads` or
    :func:`activity_forward_gradient`; ``nnx.split(model, nnx.Param)`` gives the
    parameter dict they expect.
    """

    def __init__(
        self,
        widths: Sequence[int],
        *,
        activation: str | Callable = "relu",
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
        normalize: bool = True,
    ):
        widths = tuple(widths)
        if len(widths) < 3 or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths
        ):
            raise ValueError(
                f"widths={widths!r}: need at least three positive ints "
                "(inputs, hidden..., classes), e.g. (784, 1024, 1024, 10)"
            )
        self.widths = widths
        self.normalize = bool(normalize)
        self.activation_fn = activation_fn(activation)
        hidden, classes = widths[1:-1], widths[-1]
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype)
                for a, b in zip(widths[:-2], hidden)
            ]
        )
        self.heads = nnx.List(
            [nnx.Linear(h, classes, rngs=rngs, param_dtype=param_dtype) for h in hidden]
        )

    def local_logits(self, x: jax.Array) -> list[jax.Array]:
        """Every block's head logits, each block reading a stop-gradient input."""
        h = x.reshape(x.shape[0], -1)
        out = []
        for i, (layer, head) in enumerate(zip(self.layers, self.heads)):
            h = _block_input(jax.lax.stop_gradient(h), i, self.normalize)
            h = self.activation_fn(layer(h))
            out.append(head(h))
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        h = flat_inputs(x, self.widths[0], "LocalMLP")
        for i, layer in enumerate(self.layers):
            h = self.activation_fn(layer(_block_input(h, i, self.normalize)))
        return self.heads[-1](h)


class _Params(nnx.Module):
    """A nested dict of arrays as ``nnx.Param`` attributes; :meth:`tree` gives the dict back."""

    def __init__(self, tree: dict):
        self._keys = tuple(tree)
        for k, v in tree.items():
            setattr(self, k, _Params(v) if isinstance(v, dict) else nnx.Param(v))

    def tree(self) -> dict:
        out = {}
        for k in self._keys:
            a = getattr(self, k)
            out[k] = a.tree() if isinstance(a, _Params) else a[...]
        return out


class _LocalNet(nnx.Module):
    """Blocks of parameters plus the function API of one architecture."""

    _config_type: type[_networks.NetworkConfig]
    _init: Callable

    def __init__(self, config: Any, *, rngs: nnx.Rngs, param_dtype: Any = jnp.float32):
        self.config = type(self)._config_type.check(config)
        params = type(self)._init(rngs.params(), config, param_dtype)
        self.blocks = nnx.List([_Params(params["blocks"][i]) for i in sorted(params["blocks"])])

    def params(self) -> dict:
        """The parameter dict of the function API, ``{"blocks": {i: ...}}``."""
        return {"blocks": {i: b.tree() for i, b in enumerate(self.blocks)}}

    def local_logits(self, x: jax.Array) -> list[jax.Array]:
        """Every block's head logits, with a stop-gradient between blocks under ``block_loss``."""
        return _networks.network_local_logits(self.params(), x, self.config)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.local_logits(x)[-1]


class LocalMixer(_LocalNet):
    """Ren et al.'s LocalMixer as a flax nnx module; ``config``: a :class:`fwdgrad.MixerConfig`.

    ``model(x)`` is the last block's head logits; train with
    ``fwdgrad.local_forward_gradient(config)`` or :func:`fwdgrad.mixer_grads`.
    """

    _config_type = _mixer.MixerConfig
    _init = staticmethod(_mixer.mixer_init)


class LocalConvNet(_LocalNet):
    """Conv blocks with a local head each, flax nnx; ``config``: a :class:`fwdgrad.ConvNetConfig`.

    ``model(x)`` is the last block's head logits; train with
    ``fwdgrad.local_forward_gradient(config)`` or :func:`fwdgrad.convnet_grads`.
    """

    _config_type = _convnet.ConvNetConfig
    _init = staticmethod(_convnet.convnet_init)
