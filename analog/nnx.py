"""Analog layers for flax nnx: ``Linear`` and ``Conv`` whose weights live on crossbar tiles.

aihwkit's ``AnalogLinear`` and ``AnalogConv2d`` in JAX (Gokmen & Vlasov, Front. Neurosci.
10:333, 2016; Rasch et al., "A flexible and fast PyTorch toolkit for simulating training and
inference on analog crossbar arrays", AICAS 2021). The forward is the tiles' read through a
forward :class:`analog.IOConfig`, the input gradient the transposed read through a backward one,
and training is in situ: :func:`analog.pulsed_sgd` pulses the tiles with each sample's input and
error (``analog._insitu`` says how they reach it). The bias is digital (aihwkit's
``digital_bias``). A typical loop::

    model = analog.nnx.Linear(784, 10, batch_size=64, device=analog.presets.TAOX_RERAM,
                              io=analog.presets.TAOX_IO, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = analog.pulsed_sgd(0.1)
    grads = jax.grad(lambda p: loss(nnx.merge(graphdef, p)(x), y))(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)

A call whose batch is not ``batch_size`` (evaluation at another size) reads the tiles the same
way and records no update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from analog import _presets
from analog._devices import Device
from analog._insitu import Crossbar, Wiring, analog_dense, crossbar_tiles
from analog._periphery import IOConfig
from analog._tiles import check_tile_shape, init_tiles

__all__ = ["Linear", "Conv"]

_F32 = jnp.float32
#: nnx.Linear's default kernel initializer.
LECUN_NORMAL = nnx.initializers.lecun_normal()


def _check_count(name: str, v, who: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{who}: {name}={v!r} must be a positive integer")
    return v


def _wiring(io, io_backward, noise_management, bound_management, max_bm_reads) -> Wiring:
    io = IOConfig() if io is None else io
    return Wiring(
        io_forward=io,
        io_backward=io if io_backward is None else io_backward,
        noise_management=noise_management,
        bound_management=bound_management,
        max_bm_reads=max_bm_reads,
    )


def _crossbar(key, w, device, tile_shape, w_max, rows: int, fast_device, gamma) -> Crossbar:
    """The layer's state: ``w`` programmed onto tiles of ``device``, a zero tap of ``rows``
    rows, and with ``fast_device`` Tiki-Taka's zero fast array (same range) and buffer."""
    for name, dev in (("device", device), ("fast_device", fast_device)):
        if not isinstance(dev, Device) and not (name == "fast_device" and dev is None):
            raise TypeError(f"{name}={dev!r}: pass a device model such as analog.presets.IDEAL")
    if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not math.isfinite(gamma):
        raise TypeError(f"gamma={gamma!r} must be a finite number (the weight of A in gamma A + C)")
    if gamma != 0 and fast_device is None:
        raise ValueError(f"gamma={gamma} weighs a fast array: give fast_device=... too")
    tile_shape = check_tile_shape(tile_shape)
    k_slow, k_fast, k_seed = jax.random.split(key, 3)
    tiles = crossbar_tiles(init_tiles(k_slow, w, device, tile_shape, w_max=w_max))
    tap = jnp.zeros((rows, w.shape[0] + w.shape[1]), _F32)
    seed = jax.random.randint(k_seed, (), 0, 2**24).astype(_F32)  # exact in float32
    step = jnp.zeros((), _F32)
    if fast_device is None:
        return Crossbar(tiles, tap, step, seed)
    a_max = tiles.w_scale * device.range  # A spans the weight range of C
    fast = crossbar_tiles(
        init_tiles(k_fast, jnp.zeros_like(w), fast_device, tile_shape, w_max=a_max)
    )
    return Crossbar(tiles, tap, step, seed, fast, jnp.zeros(w.shape, _F32), float(gamma))


class Linear(nnx.Module):
    """A dense layer on crossbar tiles, trained in situ (aihwkit's ``AnalogLinear``).

    Args:
      in_features, out_features: the weight is ``(in_features, out_features)``.
      batch_size: the training batch; the tap that records ``[x, d]`` has this many rows.
      device: the device model of every cell (default :data:`analog.presets.IDEAL`).
      io: the forward read's periphery (None = exact); io_backward: the transposed read's
        (None = the same as ``io``).
      tile_shape: ``(rows, cols)`` of a tile.
      noise_management, bound_management, max_bm_reads: periphery management
        (``analog._insitu``); both on by default, as in aihwkit.
      w_max: largest representable ``|weight|`` (None = twice the initial ``max|w|``).
      use_bias: a digital bias, trained by plain SGD.
      kernel_init: initializer of the weight before it is programmed (lecun normal).
      rngs: ``nnx.Rngs``; ``params`` draws the weight, the device variation and the noise seed.
      fast_device, gamma: Tiki-Taka (:func:`analog.tiki_taka`): a fast array ``A`` of
        ``fast_device`` cells, zero at first, beside the weight's array ``C``, and a digital
        buffer; the layer reads ``gamma A + C``. None (default): one array, for
        :func:`analog.pulsed_sgd`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        batch_size: int,
        rngs: nnx.Rngs,
        device: Device = _presets.IDEAL,
        io: IOConfig | None = None,
        io_backward: IOConfig | None = None,
        tile_shape: Sequence[int] = (64, 64),
        noise_management: bool = True,
        bound_management: bool = True,
        max_bm_reads: int = 3,
        w_max: float | None = None,
        use_bias: bool = True,
        kernel_init=LECUN_NORMAL,
        fast_device: Device | None = None,
        gamma: float = 0.0,
    ):
        self.in_features = _check_count("in_features", in_features, "Linear")
        self.out_features = _check_count("out_features", out_features, "Linear")
        rows = _check_count("batch_size", batch_size, "Linear")
        k_w, k_dev = jax.random.split(rngs.params())
        self.wiring = _wiring(io, io_backward, noise_management, bound_management, max_bm_reads)
        w = kernel_init(k_w, (in_features, out_features), _F32)
        self.crossbar = nnx.Param(
            _crossbar(k_dev, w, device, tile_shape, w_max, rows, fast_device, gamma)
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), _F32)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(..., in_features) -> (..., out_features)`` in ``x``'s dtype."""
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"analog.nnx.Linear: input shape {x.shape}; its last axis must be "
                f"in_features={self.in_features}"
            )
        lead = x.shape[:-1]
        y = analog_dense(
            self.wiring, x.reshape(-1, self.in_features).astype(_F32), self.crossbar.get_value()
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(_F32)
        return y.reshape(*lead, self.out_features).astype(x.dtype)


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if not (
        isinstance(v, (tuple, list))
        and len(v) == 2
        and all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in v)
    ):
        raise ValueError(f"analog.nnx.Conv: {name}={v!r}; use a positive int or a pair of them")
    return (int(v[0]), int(v[1]))


class Conv(nnx.Module):
    """A 2-D convolution on crossbar tiles by unfolding patches (aihwkit's ``AnalogConv2d``).

    Every ``kh x kw x in_features`` patch of the NHWC input is one input vector of a
    ``(kh kw in_features, out_features)`` crossbar (im2col, the mapping of Gokmen, Onen and
    Haensch, "Training deep convolutional neural networks with resistive cross-point
    devices", Front. Neurosci. 11:538, 2017): the forward reads every patch, the backward
    reads every patch's error through the transposed array and folds the patches back, and the
    update is the sum of one rank-1 pulse update per patch and sample.

    Args:
      in_features, out_features: input and output channels.
      kernel_size, strides: ints or pairs; padding: ``"SAME"`` or ``"VALID"``.
      batch_size, input_size: the training batch and its ``(H, W)``: the tap records every
        patch of such a batch (``batch_size * H' * W'`` rows).

    The other arguments are :class:`Linear`'s.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        batch_size: int,
        input_size: Sequence[int],
        rngs: nnx.Rngs,
        strides: int | Sequence[int] = 1,
        padding: str = "SAME",
        device: Device = _presets.IDEAL,
        io: IOConfig | None = None,
        io_backward: IOConfig | None = None,
        tile_shape: Sequence[int] = (64, 64),
        noise_management: bool = True,
        bound_management: bool = True,
        max_bm_reads: int = 3,
        w_max: float | None = None,
        use_bias: bool = True,
        kernel_init=LECUN_NORMAL,
        fast_device: Device | None = None,
        gamma: float = 0.0,
    ):
        self.in_features = _check_count("in_features", in_features, "Conv")
        self.out_features = _check_count("out_features", out_features, "Conv")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        if padding not in ("SAME", "VALID"):
            raise ValueError(f"analog.nnx.Conv: padding={padding!r}; use 'SAME' or 'VALID'")
        self.padding = padding
        h, w = _pair(tuple(input_size), "input_size")
        rows = _check_count("batch_size", batch_size, "Conv") * math.prod(self._out_hw(h, w))
        k_w, k_dev = jax.random.split(rngs.params())
        self.wiring = _wiring(io, io_backward, noise_management, bound_management, max_bm_reads)
        # (kh, kw, cin, cout) as nnx.Conv draws it, then as the patches are ordered: (cin, kh, kw).
        kh, kw = self.kernel_size
        kern = kernel_init(k_w, (kh, kw, in_features, out_features), _F32)
        mat = kern.transpose(2, 0, 1, 3).reshape(in_features * kh * kw, out_features)
        self.crossbar = nnx.Param(
            _crossbar(k_dev, mat, device, tile_shape, w_max, rows, fast_device, gamma)
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), _F32)) if use_bias else None

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        if self.padding == "SAME":
            return (-(-h // sh), -(-w // sw))
        if h < kh or w < kw:
            raise ValueError(
                f"analog.nnx.Conv: input {h}x{w} is smaller than the kernel {kh}x{kw} "
                "with padding='VALID'"
            )
        return ((h - kh) // sh + 1, (w - kw) // sw + 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, in_features) -> (N, H', W', out_features)`` in ``x``'s dtype."""
        x = jnp.asarray(x)
        if x.ndim != 4 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"analog.nnx.Conv: input shape {x.shape}; need (N, H, W, "
                f"in_features={self.in_features})"
            )
        patches = jax.lax.conv_general_dilated_patches(
            x.astype(_F32),
            self.kernel_size,
            self.strides,
            self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        n, ho, wo, k = patches.shape
        y = analog_dense(self.wiring, patches.reshape(n * ho * wo, k), self.crossbar.get_value())
        if self.bias is not None:
            y = y + self.bias[...].astype(_F32)
        return y.reshape(n, ho, wo, self.out_features).astype(x.dtype)
