"""Flax nnx layers whose products run through :func:`lowbit.dot_general` / ``conv_general_dilated``.

Same constructor shape as ``flax.nnx.Linear`` / ``flax.nnx.Conv`` (``kernel`` and
``bias`` parameters, ``(in, out)`` and ``(*window, in, out)`` kernels), plus a
``config``. With ``config.activation_scaling == "pact"`` each layer owns PACT's
learnable clip ``activation_clip`` (an ``nnx.Param``, so it is trained with the
weights). Computation runs in ``dtype`` (the input's dtype when ``None``):
bfloat16 in, bfloat16 out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict, Unpack

import jax
import jax.numpy as jnp
from flax import nnx as fnnx

from lowbit._dot import QuantConfig, conv_general_dilated, dot_general

__all__ = ["Linear", "Conv", "LayerOptions"]


def _check_config(config) -> QuantConfig:
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config={config!r}: expected a lowbit.QuantConfig")
    return config


class LayerOptions(TypedDict, total=False):
    """The keyword options :class:`Linear` and :class:`Conv` share, as ``nnx.Linear`` /
    ``nnx.Conv`` name them, plus ``config``; defaults in ``_DEFAULTS``."""

    config: QuantConfig
    use_bias: bool
    dtype: Any
    param_dtype: Any
    kernel_init: Any
    bias_init: Any
    precision: Any


#: :class:`LayerOptions`' defaults: ``nnx.Linear``'s, and the default :class:`QuantConfig`.
_DEFAULTS: dict[str, Any] = {
    "config": QuantConfig(),
    "use_bias": True,
    "dtype": None,
    "param_dtype": jnp.float32,
    "kernel_init": fnnx.initializers.lecun_normal(),
    "bias_init": fnnx.initializers.zeros_init(),
    "precision": None,
}


class _QuantLayer(fnnx.Module):
    """What :class:`Linear` and :class:`Conv` share: their options and parameters."""

    kernel: fnnx.Param
    bias: fnnx.Param | None
    activation_clip: fnnx.Param | None

    def _init_params(self, rngs, kernel_shape, options) -> None:
        """The kernel, the bias (``use_bias``) and, with PACT activation scaling, the learned
        activation clip (Choi et al. 2018), initialised at ``config.pact_init``."""
        unknown = sorted(set(options) - set(_DEFAULTS))
        if unknown:
            raise TypeError(
                f"lowbit.nnx.{type(self).__name__}: unknown option(s) {unknown}; the options "
                f"are {sorted(_DEFAULTS)}"
            )
        o = {**_DEFAULTS, **options}
        config = self.config = _check_config(o["config"])
        self.dtype, self.precision = o["dtype"], o["precision"]
        param_dtype = o["param_dtype"]
        self.kernel = fnnx.Param(o["kernel_init"](rngs.params(), kernel_shape, param_dtype))
        out_features = kernel_shape[-1]
        self.bias = (
            fnnx.Param(o["bias_init"](rngs.params(), (out_features,), param_dtype))
            if o["use_bias"]
            else None
        )
        self.activation_clip = (
            fnnx.Param(jnp.asarray(config.pact_init, param_dtype))
            if config.activation_scaling == "pact"
            else None
        )


class Linear(_QuantLayer):
    """Quantized dense layer ``y = dot_general(x, kernel) + bias`` (Sun et al. 2020).

    Args:
      in_features / out_features: sizes of the last axis in and out.
      rngs: ``nnx.Rngs`` for initialisation.
      config: the :class:`lowbit.QuantConfig` (INT4 forward, FP4 gradients by default).
      use_bias, dtype, param_dtype, kernel_init, bias_init, precision: as ``nnx.Linear``.

    Shapes: ``x (..., in_features) -> (..., out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: fnnx.Rngs,
        **options: Unpack[LayerOptions],
    ):
        if not (
            isinstance(in_features, int)
            and in_features > 0
            and isinstance(out_features, int)
            and out_features > 0
        ):
            raise ValueError(f"Linear({in_features!r}, {out_features!r}): need positive ints")
        self.in_features, self.out_features = in_features, out_features
        self._init_params(rngs, (in_features, out_features), options)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        kernel = self.kernel[...].astype(dtype)
        clip = None if self.activation_clip is None else self.activation_clip[...]
        y = dot_general(
            x,
            kernel,
            (((x.ndim - 1,), (0,)), ((), ())),
            self.precision,
            config=self.config,
            activation_clip=clip,
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class Conv(_QuantLayer):
    """Quantized convolution, ``NHWC`` inputs and ``HWIO`` kernels, like ``nnx.Conv``.

    Args:
      in_features / out_features: channels in and out.
      kernel_size: int or tuple (one entry per spatial axis).
      strides: int or tuple; padding: ``"SAME"``, ``"VALID"`` or explicit pairs.
      rngs, config, use_bias, dtype, param_dtype, kernel_init, bias_init, precision:
        as :class:`Linear`.

    Shapes: ``x (batch, *spatial, in_features) -> (batch, *spatial', out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        *,
        padding: Any = "SAME",
        rngs: fnnx.Rngs,
        **options: Unpack[LayerOptions],
    ):
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        if not kernel_size or any((not isinstance(k, int)) or k < 1 for k in kernel_size):
            raise ValueError(f"Conv(kernel_size={kernel_size!r}): need positive ints")
        strides = (strides,) * len(kernel_size) if isinstance(strides, int) else tuple(strides)
        if len(strides) != len(kernel_size):
            raise ValueError(
                f"Conv(strides={strides!r}): need one stride per kernel axis ({len(kernel_size)})"
            )
        if isinstance(padding, str):
            if padding not in ("SAME", "VALID"):
                raise ValueError(f"Conv(padding={padding!r}): use 'SAME', 'VALID' or pairs")
        else:
            padding = tuple(tuple(p) for p in padding)
        self.kernel_size, self.strides, self.padding = kernel_size, strides, padding
        self.in_features, self.out_features = in_features, out_features
        self._init_params(rngs, (*kernel_size, in_features, out_features), options)

    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.kernel_size)
        if x.ndim != n + 2:
            raise ValueError(
                f"Conv expects inputs (batch, {n} spatial axes, channels), got {x.shape}"
            )
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        kernel = self.kernel[...].astype(dtype)
        spatial = "HWD"[:n] if n <= 3 else None
        dn = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
        clip = None if self.activation_clip is None else self.activation_clip[...]
        y = conv_general_dilated(
            x,
            kernel,
            self.strides,
            self.padding,
            dimension_numbers=dn,
            precision=self.precision,
            config=self.config,
            activation_clip=clip,
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y
