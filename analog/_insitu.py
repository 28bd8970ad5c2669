"""In-situ training through the crossbar: the analog product with its own backward pass.

Gokmen & Vlasov, "Acceleration of Deep Neural Network Training with Resistive Cross-Point
Devices", Front. Neurosci. 10:333 (2016), Sec. "Methods": the three cycles of a layer on a
crossbar are the forward read ``y = W^T x`` (rows driven), the backward read ``delta = W d``
(columns driven, the transposed product) and the update, a rank-1 outer product ``x d^T`` made
by coincident stochastic pulse trains at every cross-point (their Eq. 2-3). aihwkit runs the
same cycles in ``AnalogLinear`` / ``AnalogSGD``.

Here the forward and backward reads are one ``jax.custom_vjp`` (:func:`analog_dense`): the
forward is the tiles' product through a forward :class:`IOConfig`, the input gradient the
transposed product through a backward one, never the digital ``d @ W.T``. The update needs each
sample's ``x`` and ``d``; a pure function cannot keep them, so they travel in the gradient of a
zero-valued *tap* (a ``(B, in + out)`` array in the layer's parameters): its cotangent is
defined as ``[x, d]``. :func:`analog.pulsed_sgd` (``analog._pulsed_sgd``) reads them there and
pulses the tiles. A jax.grad-based loop therefore never forms the dense gradient ``x^T d``.

Periphery management, as aihwkit's ``IOParameters`` names it (Gokmen, Onen, Haensch, Front.
Neurosci. 11:538, 2017, "noise and bound management"):

* noise management (``noise_management=True``, aihwkit's ``NoiseManagementType.ABS_MAX``): each
  sample's input vector is divided by its largest ``|x|`` before the DACs, so it spans their
  full range, and the result multiplied back digitally after the ADCs (an all-zero vector
  reads exactly zero, no noise, as in aihwkit);
* bound management (``bound_management=True``, aihwkit's ``BoundManagementType.ITERATIVE``):
  a sample whose tile output reached the ADC's bound is read again with its input halved, up to
  ``max_bm_reads`` extra reads, and the result doubled back each time.

The gradient at the ADC bound (``zero_grad_at_bound=True``; off by default): the error ``d``
of every output whose forward value reached ``0.999 io_forward.out_bound`` is zeroed before
the backward read, a straight-through estimator of a clamp. This is what aihwkit 1.1.0's
RPUCuda tiles do by default (``handle_output_bound``: ``post_forward`` records the mask,
``pre_backward`` applies it). aihwkit compares the output *after* noise and bound management,
in the layer's own units, so with noise management an output larger than the ADC bound loses
its gradient although no ADC clipped it: a network whose outputs grow past the bound (the
logits of a confident classifier) stops passing errors to the layers below. The update still
takes the unmasked ``d``, as aihwkit's optimizer does. The switch exists for parity with
aihwkit (``benchmarks/aihwkit_parity_ours.py``); the default passes every error.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

import bbcore
from analog._mvm import sum_tiles, tile_read
from analog._periphery import IOConfig
from analog._tiles import Tiles, _tile_weights

__all__ = ["Crossbar", "Wiring", "analog_dense", "crossbar_tiles", "effective_weights"]

_F32 = jnp.float32
_EXACT = IOConfig()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Wiring:
    """The static periphery of an in-situ layer (hashable: one compilation per wiring).

    io_forward / io_backward: periphery of the forward read and of the transposed read.
    noise_management / bound_management / max_bm_reads / zero_grad_at_bound: see the
      module docstring.
    """

    io_forward: IOConfig = _EXACT
    io_backward: IOConfig = _EXACT
    noise_management: bool = True
    bound_management: bool = True
    max_bm_reads: int = 3
    zero_grad_at_bound: bool = False

    def __post_init__(self):
        for name in ("io_forward", "io_backward"):
            if not isinstance(getattr(self, name), IOConfig):
                raise TypeError(
                    f"{name}={getattr(self, name)!r}: pass an analog.IOConfig "
                    "(IOConfig.ideal() for exact reads)"
                )
        for name in ("noise_management", "bound_management", "zero_grad_at_bound"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}={getattr(self, name)!r} must be True or False")
        if self.zero_grad_at_bound and self.io_forward.out_bound is None:
            raise ValueError(
                "zero_grad_at_bound=True needs a forward ADC bound, but io_forward.out_bound is "
                "None (an exact read clips nothing); give io_forward an out_bound or leave the "
                "switch off"
            )
        m = self.max_bm_reads
        if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= 16:
            raise ValueError(f"max_bm_reads={m!r}: use an integer in [1, 16]")
        # The forward and backward reads are two directions of the same arrays: noise
        # management drives inputs at full scale (|v| <= 1), which a DAC bound below 1 would
        # clip on every read; bound management needs an ADC bound to detect saturation.
        for name in ("io_forward", "io_backward"):
            io = getattr(self, name)
            if self.noise_management and io.inp_bound is not None and io.inp_bound < 1.0:
                raise ValueError(
                    f"{name}.inp_bound={io.inp_bound} < 1 with noise_management: inputs "
                    "scaled to max|x| = 1 would be clipped on every read; use inp_bound >= 1 "
                    "or noise_management=False"
                )
        if self.bound_management and (
            (self.io_forward.out_bound is None) != (self.io_backward.out_bound is None)
        ):
            raise ValueError(
                "bound_management with one bounded ADC and one unbounded: io_forward.out_bound="
                f"{self.io_forward.out_bound}, io_backward.out_bound="
                f"{self.io_backward.out_bound}; give both reads an ADC bound or neither "
                "(the forward and backward periphery must match in kind)"
            )


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["tiles", "tap", "step", "seed", "fast", "buffer"],
    meta_fields=["gamma"],
)
@dataclasses.dataclass(frozen=True)
class Crossbar:
    """A layer's trainable analog state, as one parameter (a pytree of float32 arrays only,
    so ``jax.grad`` takes it whole).

    tiles: the weight ``(in, out)`` on crossbars; its stuck-device masks are float 0/1
      (:func:`crossbar_tiles`), since ``jax.grad`` refuses boolean inputs.
    tap: zeros ``(B, in + out)``; its gradient through :func:`analog_dense` is ``[x, d]``, each
      sample's layer input and output error (module docstring).
    step: float32 scalar, the number of updates taken; seeds fresh read noise every step.
    seed: float32 scalar holding an integer below ``2^24``, the seed of the layer's read noise
      (an array, not a static int, so that a layer can be built under ``jax.jit``).
    fast, buffer, gamma: Tiki-Taka's fast array ``A`` (``tiles`` is then the slow array
      ``C``), the digital buffer ``H`` ``(in, out)`` between them, and the weight of ``A`` in
      the effective weight ``gamma A + C`` (:func:`analog.tiki_taka`); None, None, 0 otherwise.
    """

    tiles: Tiles
    tap: jax.Array
    step: jax.Array
    seed: jax.Array
    fast: Tiles | None = None
    buffer: jax.Array | None = None
    gamma: float = 0.0


def crossbar_tiles(tiles: Tiles) -> Tiles:
    """``tiles`` with float32 stuck masks (``Device.clip`` reads any nonzero as stuck)."""

    def floats(v):
        return v._replace(stuck_on=v.stuck_on.astype(_F32), stuck_off=v.stuck_off.astype(_F32))

    return dataclasses.replace(
        tiles, var_plus=floats(tiles.var_plus), var_minus=floats(tiles.var_minus)
    )


def _read(wt, v, io: IOConfig, key, transpose: bool):
    """One read of ``v (B, n)`` through every tile; returns the padded output and, per
    sample, whether any tile's output reached the ADC bound."""
    y = tile_read(wt, v, io, key, transpose)
    if io.out_bound is None:
        sat = jnp.zeros((v.shape[0],), bool)
    else:
        sat = jnp.any(jnp.abs(y) >= io.out_bound, axis=(0, 1, 3))
    return sum_tiles(y, transpose), sat


def managed_read(wt, v, io: IOConfig, key, transpose: bool, wiring: Wiring) -> jax.Array:
    """``v @ W`` (or ``v @ W.T``) through the tiles with noise and bound management.

    Args:
      wt: ``(R, C, rows, cols)`` tile weights; v: ``(B, n)`` float32.
      io: the read's periphery; key: its noise key; wiring: the management switches.

    Returns:
      ``(B, padded out)`` float32, in the units of ``v @ W``.
    """
    if wiring.noise_management:
        m = jnp.max(jnp.abs(v), axis=1, keepdims=True)
        v = v / jnp.where(m > 0, m, 1.0)
    y, sat = _read(wt, v, io, jax.random.fold_in(key, 0), transpose)
    if wiring.bound_management and io.out_bound is not None:

        def again(carry):
            k, y, sat, scale = carry
            scale = jnp.where(sat, 0.5 * scale, scale)
            y2, sat2 = _read(wt, v * scale[:, None], io, jax.random.fold_in(key, k + 1), transpose)
            y = jnp.where(sat[:, None], y2 / scale[:, None], y)
            return k + 1, y, sat & sat2, scale

        def more(carry):
            return (carry[0] < wiring.max_bm_reads) & jnp.any(carry[2])

        init = (jnp.zeros((), jnp.int32), y, sat, jnp.ones(sat.shape, _F32))
        y = jax.lax.while_loop(more, again, init)[1]
    # scaled back by m itself: an all-zero input reads exactly zero (scaled by 1, the ADC
    # noise would hand a saturated-softmax sample, d = 0, an error of the noise's size;
    # aihwkit returns zeros too), and a NaN input stays NaN instead of reading 0
    return y * m if wiring.noise_management else y


def _keys(cb: Crossbar) -> tuple[jax.Array, jax.Array]:
    key = jax.random.fold_in(bbcore.key(cb.seed.astype(jnp.uint32)), cb.step.astype(jnp.uint32))
    return jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)


def effective_weights(cb: Crossbar) -> jax.Array:
    """The tile-layout weights a read sees: ``C``, or ``gamma A + C`` with a fast array (one
    read of the combined conductances, as aihwkit's compound devices reduce them)."""
    w = _tile_weights(cb.tiles)
    if cb.fast is not None and cb.gamma != 0:
        w = w + cb.gamma * _tile_weights(cb.fast)
    return w


def _forward(wiring: Wiring, x: jax.Array, cb: Crossbar) -> jax.Array:
    tiles = cb.tiles
    k_fwd, _ = _keys(cb)
    y = managed_read(effective_weights(cb), x, wiring.io_forward, k_fwd, False, wiring)
    y = y[:, : tiles.shape[1]]
    if _tapped(x, cb):
        y = y + cb.tap[:, tiles.shape[0] :]
    return y


def _tapped(x: jax.Array, cb: Crossbar) -> bool:
    """Whether this call records ``[x, d]``: the batch is the one the tap was sized for."""
    return cb.tap.shape[0] == x.shape[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def analog_dense(wiring: Wiring, x: jax.Array, cb: Crossbar) -> jax.Array:
    """The crossbar product ``x @ W`` with an analog backward pass.

    Args:
      wiring: static periphery and management; x: ``(B, in)`` float32; cb: the layer's state.

    Returns:
      ``(B, out)`` float32. Its VJP gives ``x`` the transposed read of the output error through
      ``wiring.io_backward``, ``cb.tap`` the cotangent ``[x, d]`` (a ``B`` other than the tap's batch is a
      ``ValueError`` when the gradient is traced: it could record no update), and zeros to ``cb.tiles`` and ``cb.step``.
    """
    return _forward(wiring, x, cb)


def _fwd(wiring, x, cb):
    y = _forward(wiring, x, cb)
    # 0.999: aihwkit's margin, so that an output read exactly at the bound counts as clipped
    at_bound = (
        jnp.abs(y) >= 0.999 * wiring.io_forward.out_bound if wiring.zero_grad_at_bound else None
    )
    return y, (x, cb, at_bound)


def _bwd(wiring, res, d):
    x, cb, at_bound = res
    tiles = cb.tiles
    _, k_bwd = _keys(cb)
    d = d.astype(_F32)
    read = d if at_bound is None else jnp.where(at_bound, 0.0, d)
    dx = managed_read(effective_weights(cb), read, wiring.io_backward, k_bwd, True, wiring)
    dx = dx[:, : tiles.shape[0]].astype(x.dtype)
    if not _tapped(x, cb):
        # A zero tap would make the optimizer pulse nothing: the step would look taken while
        # the weights never move. Shapes are static, so this fails when the step is traced.
        raise ValueError(
            f"analog layer: a gradient was taken through a batch of {x.shape[0]} rows, but the "
            f"layer's update tap was built for {cb.tap.shape[0]} (batch_size, times the output "
            "positions for Conv). Build the layer with the training batch size, or drop the "
            "last partial batch; reads at other sizes (evaluation) need no gradient."
        )
    tap = jnp.concatenate([x.astype(_F32), d], axis=1)
    zeros = jax.tree.map(jnp.zeros_like, cb)
    return dx, dataclasses.replace(zeros, tap=tap)


analog_dense.defvjp(_fwd, _bwd)
