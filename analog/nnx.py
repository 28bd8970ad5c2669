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
way; a gradient through such a call is a ``ValueError`` when traced, since it could record no
update.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TypedDict, Unpack

import jax
import jax.numpy as jnp
from flax import nnx

from analog import _presets
from analog._devices import Device
from analog._insitu import Crossbar, Wiring, analog_dense, crossbar_tiles
from analog._periphery import IOConfig
from analog._tiles import check_tile_shape, init_tiles

__all__ = ["Linear", "Conv", "LayerOptions"]

_F32 = jnp.float32
#: nnx.Linear's default kernel initializer.
LECUN_NORMAL = nnx.initializers.lecun_normal()


def _check_count(name: str, v, who: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{who}: {name}={v!r} must be a positive integer")
    return v


class LayerOptions(TypedDict, total=False):
    """The tile, periphery and Tiki-Taka arguments that :class:`Linear` and :class:`Conv` share
    (their defaults and meaning: :class:`Linear`)."""

    device: Device
    io: IOConfig | None
    io_backward: IOConfig | None
    tile_shape: Sequence[int]
    noise_management: bool
    bound_management: bool
    max_bm_reads: int
    zero_grad_at_bound: bool
    w_max: float | None
    use_bias: bool
    kernel_init: Callable[..., jax.Array]
    fast_device: Device | None
    gamma: float


@dataclasses.dataclass(frozen=True)
class _Options:
    """:class:`LayerOptions` with their defaults, checked when a layer is built (an unknown
    name is a ``TypeError`` naming it, as for any keyword)."""

    device: Device = _presets.IDEAL
    io: IOConfig | None = None
    io_backward: IOConfig | None = None
    tile_shape: Sequence[int] = (64, 64)
    noise_management: bool = True
    bound_management: bool = True
    max_bm_reads: int = 3
    zero_grad_at_bound: bool = False
    w_max: float | None = None
    use_bias: bool = True
    kernel_init: Callable[..., jax.Array] = LECUN_NORMAL
    fast_device: Device | None = None
    gamma: float = 0.0

    def __post_init__(self):
        for name in ("device", "fast_device"):
            dev = getattr(self, name)
            if not isinstance(dev, Device) and not (name == "fast_device" and dev is None):
                raise TypeError(f"{name}={dev!r}: pass a device model such as analog.presets.IDEAL")
        g = self.gamma
        if not isinstance(g, (int, float)) or isinstance(g, bool) or not math.isfinite(g):
            raise TypeError(f"gamma={g!r} must be a finite number (the weight of A in gamma A + C)")
        if g != 0 and self.fast_device is None:
            raise ValueError(f"gamma={g} weighs a fast array: give fast_device=... too")
        object.__setattr__(self, "tile_shape", check_tile_shape(self.tile_shape))

    def wiring(self) -> Wiring:
        io = IOConfig() if self.io is None else self.io
        return Wiring(
            io_forward=io,
            io_backward=io if self.io_backward is None else self.io_backward,
            noise_management=self.noise_management,
            bound_management=self.bound_management,
            max_bm_reads=self.max_bm_reads,
            zero_grad_at_bound=self.zero_grad_at_bound,
        )

    def crossbar(self, key, w, rows: int) -> Crossbar:
        """The layer's state: ``w`` programmed onto tiles of ``device``, a zero tap of ``rows``
        rows, and with ``fast_device`` Tiki-Taka's zero fast array (same range) and buffer."""
        k_slow, k_fast, k_seed = jax.random.split(key, 3)
        dev, shape = self.device, self.tile_shape
        tiles = crossbar_tiles(init_tiles(k_slow, w, dev, shape, w_max=self.w_max))
        tap = jnp.zeros((rows, w.shape[0] + w.shape[1]), _F32)
        seed = jax.random.randint(k_seed, (), 0, 2**24).astype(_F32)  # exact in float32
        step = jnp.zeros((), _F32)
        if self.fast_device is None:
            return Crossbar(tiles, tap, step, seed)
        a_max = tiles.w_scale * dev.range  # A spans the weight range of C
        fast = crossbar_tiles(
            init_tiles(k_fast, jnp.zeros_like(w), self.fast_device, shape, w_max=a_max)
        )
        return Crossbar(tiles, tap, step, seed, fast, jnp.zeros(w.shape, _F32), float(self.gamma))


class _TiledLayer(nnx.Module):
    """What both layers do with their options: draw the kernel, place it as a
    ``(fan_in, out_features)`` matrix on tiles beside a tap of ``rows`` rows, and read it."""

    out_features: int

    def _setup(self, rngs: nnx.Rngs, kernel_shape, rows: int, options, to_matrix=None) -> None:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(_Options)})
        if unknown:
            raise TypeError(
                f"analog.nnx.{type(self).__name__}: unknown option(s) {unknown}; the options "
                f"are {sorted(LayerOptions.__annotations__)}"
            )
        opts = _Options(**options)
        k_w, k_dev = jax.random.split(rngs.params())
        self.wiring = opts.wiring()
        kernel = opts.kernel_init(k_w, kernel_shape, _F32)
        mat = kernel if to_matrix is None else to_matrix(kernel)
        self.crossbar = nnx.Param(opts.crossbar(k_dev, mat, rows))
        self.bias = nnx.Param(jnp.zeros((self.out_features,), _F32)) if opts.use_bias else None

    def _read(self, mat: jax.Array) -> jax.Array:
        y = analog_dense(self.wiring, mat, self.crossbar.get_value())
        if self.bias is not None:
            y = y + self.bias[...].astype(_F32)
        return y


class Linear(_TiledLayer):
    """A dense layer on crossbar tiles, trained in situ (aihwkit's ``AnalogLinear``).

    Args:
      in_features, out_features: the weight is ``(in_features, out_features)``.
      batch_size: the training batch; the tap that records ``[x, d]`` has this many rows.
      rngs: ``nnx.Rngs``; ``params`` draws the weight, the device variation and the noise seed.

    Every argument after ``rngs`` is a keyword of :class:`LayerOptions` (one definition of
    them and their defaults serves both layers):

      device: the device model of every cell (default :data:`analog.presets.IDEAL`).
      io: the forward read's periphery (None = exact); io_backward: the transposed read's
        (None = the same as ``io``).
      tile_shape: ``(rows, cols)`` of a tile (default ``(64, 64)``).
      noise_management, bound_management, max_bm_reads: periphery management
        (``analog._insitu``); both on by default, as in aihwkit, with at most 3 reads.
      zero_grad_at_bound: zero the error of outputs whose forward value reached the forward
        ADC bound, as aihwkit 1.1.0's tiles do (``analog._insitu``; default off).
      w_max: largest representable ``|weight|`` (None = twice the initial ``max|w|``).
      use_bias: a digital bias, trained by plain SGD.
      kernel_init: initializer of the weight before it is programmed (lecun normal).
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
        **options: Unpack[LayerOptions],
    ):
        self.in_features = _check_count("in_features", in_features, "Linear")
        self.out_features = _check_count("out_features", out_features, "Linear")
        rows = _check_count("batch_size", batch_size, "Linear")
        self._setup(rngs, (in_features, out_features), rows, options)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(..., in_features) -> (..., out_features)`` in ``x``'s dtype."""
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"analog.nnx.Linear: input shape {x.shape}; its last axis must be "
                f"in_features={self.in_features}"
            )
        lead = x.shape[:-1]
        y = self._read(x.reshape(-1, self.in_features).astype(_F32))
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


class Conv(_TiledLayer):
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
        **options: Unpack[LayerOptions],
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
        kh, kw = self.kernel_size

        def to_matrix(
            kern,
        ):  # (kh, kw, cin, cout) as nnx.Conv draws it -> patch order (cin, kh, kw)
            return kern.transpose(2, 0, 1, 3).reshape(in_features * kh * kw, out_features)

        self._setup(rngs, (kh, kw, in_features, out_features), rows, options, to_matrix)

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
        y = self._read(patches.reshape(n * ho * wo, k))
        return y.reshape(n, ho, wo, self.out_features).astype(x.dtype)
