"""The local rule: a layered energy network trained by activity differences (Equilibrium Propagation).

Network (Scellier & Bengio, "Equilibrium Propagation", Front. Comput. Neurosci. 2017, Eq. 1, in
the layered "primitive function" form of Laborieux et al., "Scaling Equilibrium Propagation to
Deep ConvNets", Front. Neurosci. 2021, Eq. 3): input ``s_0 = x`` clamped, states
``s_1 .. s_L`` in ``[0, 1]`` (the hard-sigmoid range, so ``rho(s) = s`` inside the box),

    Phi(x, s; W, b) = sum_k  s_(k-1)^T W_k s_k + b_k^T s_k
    E(s)            = 1/2 sum_k |s_k|^2 - Phi
    F(s)            = E(s) + beta C(s),   C = 1/2 |s_L - y|^2.

Relaxation minimises F over the box by exact block-coordinate descent: the minimiser of F in
one layer given its neighbours is ``s_k = clip(W_k^T s_(k-1) + W_(k+1) s_(k+1) + b_k, 0, 1)``
(for the output layer, nudged: ``clip((W_L^T s_(L-1) + b_L + beta y) / (1 + beta), 0, 1)``).
Layers of equal parity do not interact, so all odd layers are updated together, then all even
ones; every sweep lowers F, and its fixed points are F's stationary points in the box. The
products ``W_k^T s_(k-1)`` and ``W_(k+1) s_(k+1)`` are the crossbar's ``mvm`` and
``mvm_transpose`` (with the :class:`IOConfig` periphery: DAC, ADC, read noise) when ``io`` is given.

This module holds the network (its parameters and their checks), the relaxation through exact
or crossbar products, the free-phase :func:`predict`, and the operation counts of relaxation.
The learning rule built on it is in ``analog/_local.py``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import bbcore
from analog import _counter_rng as R
from analog._convergence import raise_if_not_converged
from analog._energy import EnergyLedger
from analog._mvm import noisy_mvm, read_noise_shapes
from analog._periphery import IOConfig, require_io_key
from analog._tiles import _to_tiles, check_tile_shape

__all__ = ["init_energy_network", "predict", "relax", "read_input", "relaxation_counts"]

_F32 = jnp.float32


def init_energy_network(
    key: jax.Array, layer_sizes: Sequence[int], *, dtype: Any = jnp.float32
) -> list[dict]:
    """Parameters of a layered energy network: ``[{"kernel": (n_k-1, n_k), "bias": (n_k,)}, ...]``.

    Kernels are Glorot-uniform (as in Scellier & Bengio 2017, Sec. 4), biases zero.

    Args:
      key: PRNG key.
      layer_sizes: ``(inputs, hidden..., outputs)``, at least two positive ints, e.g. (784, 500, 10).
      dtype: parameter dtype.
    """
    sizes = tuple(layer_sizes)
    if len(sizes) < 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        raise ValueError(
            f"layer_sizes={layer_sizes!r}: need at least two positive integers "
            "(inputs, ..., outputs), e.g. (784, 500, 10)"
        )
    params = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        lim = math.sqrt(6.0 / (a + b))
        w = jax.random.uniform(jax.random.fold_in(key, i), (a, b), _F32, -lim, lim)
        params.append({"kernel": w.astype(dtype), "bias": jnp.zeros((b,), dtype)})
    return params


def _check_params(params: Any) -> tuple[list[jax.Array], list[jax.Array]]:
    if (
        not isinstance(params, (list, tuple))
        or not params
        or not all(isinstance(p, dict) and set(p) == {"kernel", "bias"} for p in params)
    ):
        raise TypeError(
            "energy-network params must be a list of {'kernel': (n_in, n_out), "
            "'bias': (n_out,)} dicts, as made by analog.init_energy_network"
        )
    ws = [jnp.asarray(p["kernel"]) for p in params]
    bs = [jnp.asarray(p["bias"]) for p in params]
    for k, (w, b) in enumerate(zip(ws, bs)):
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise ValueError(
                f"layer {k}: kernel {w.shape} / bias {b.shape}; need (n_in, n_out) and (n_out,)"
            )
        if k and ws[k - 1].shape[1] != w.shape[0]:
            raise ValueError(
                f"layer {k}: kernel {w.shape} does not follow the previous layer's "
                f"{ws[k - 1].shape}"
            )
    return ws, bs


def _check_steps(name: str, steps: Any) -> int:
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{name}={steps!r}: need a positive integer number of relaxation sweeps")
    return int(steps)


def check_flags(**flags: Any) -> None:
    """Refuse a non-bool switch (``normalize="no"`` would otherwise be truthy and silently on)."""
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name}={value!r}: pass True or False")


def _used_tile_shape(shape: tuple[int, ...], tile_shape: tuple[int, int]) -> tuple[int, int]:
    """The part of a tile a matrix smaller than it uses: ``min`` of the two, per axis.

    A ``500 x 10`` output layer on ``64 x 64`` tiles drives 10 of each tile's 64 columns. The
    unused rows are driven with zeros and the unused columns' outputs are never kept, so
    leaving them out gives the same products, noise and ADC on every used line while drawing
    read noise for 10 columns instead of 64 (BENCHMARKS.md, "Speed of the registered
    `analog-eqprop-taox` row"). The energy ledger still counts whole tiles.
    """
    return (min(tile_shape[0], shape[0]), min(tile_shape[1], shape[1]))


class _Ops(NamedTuple):
    """Forward ``s @ W_k`` and transposed ``s @ W_k.T`` products, ``fwd(k, s, z)`` and
    ``bwd(k, s, z)``, with ``z`` the read's unit noise ``(z_w, z_read)``; and ``shapes(k,
    transpose, batch)``, the shapes of that noise (Nones when the read draws none)."""

    fwd: Any
    bwd: Any
    shapes: Any


def _ops(ws: list[jax.Array], io: IOConfig, tile_shape: tuple[int, int]) -> _Ops:
    """Forward ``s @ W_k`` and transposed ``s @ W_k.T`` products, exact or through crossbars."""
    if io.is_ideal:
        return _Ops(
            lambda k, s, z: s @ ws[k], lambda k, s, z: s @ ws[k].T, lambda k, t, b: (None, None)
        )
    # Tile once per call, not per sweep; the periphery (DAC, noise, ADC) acts on every read.
    wts = [_to_tiles(w, _used_tile_shape(w.shape, tile_shape)) for w in ws]

    def fwd(k, s, z):
        return noisy_mvm(wts[k], s, io, *z, transpose=False)[:, : ws[k].shape[1]]

    def bwd(k, s, z):
        return noisy_mvm(wts[k], s, io, *z, transpose=True)[:, : ws[k].shape[0]]

    return _Ops(fwd, bwd, lambda k, t, b: read_noise_shapes(wts[k].shape, b, io, t))


def _read_noise(
    seeds: jax.Array | None, stream, shapes: list[tuple[Any, Any]], z: jax.Array | None = None
) -> list[tuple[Any, Any]]:
    """Unit Gaussians for several reads, ``[(z_w, z_read), ...]`` shaped like ``shapes``.

    One counter-hash call (``analog._counter_rng``, stream ``stream`` of ``seeds``) draws them
    all, or ``z``, those same values drawn beforehand (:func:`_sweep_normals`), is cut up.
    """
    sizes = [math.prod(s) for pair in shapes for s in pair if s is not None]
    if seeds is None or not sizes:
        return [(None, None) for _ in shapes]
    if z is None:
        z = R._normal(R._hash_bits(seeds, stream, (sum(sizes),)))
    out, at = [], 0
    for pair in shapes:
        got: list[jax.Array | None] = []
        for shape in pair:
            if shape is not None:
                size = math.prod(shape)
                got.append(z[at : at + size].reshape(shape))
                at += size
            else:
                got.append(None)
        out.append((got[0], got[1]))
    return out


# The largest noise, in bytes, drawn for all sweeps of a relaxation before its loop starts.
_PREDRAW_BYTES = 64 * 2**20


def _sweep_normals(
    seeds: jax.Array | None, steps: int, shapes: list[tuple[Any, Any]]
) -> jax.Array | None:
    """Every sweep's noise at once, ``(steps, size)``: row ``t`` is stream ``t``'s values.

    A sweep's reads are small (a 500 x 10 layer's), and drawn inside the loop their hash and
    Gaussian transform ran as small operations per sweep, several times slower per value than
    one large vectorised draw (BENCHMARKS.md, "Speed of the registered `analog-eqprop-taox`
    row"). The values are the same either way; above ``_PREDRAW_BYTES`` they are drawn per
    sweep instead (None).
    """
    size = sum(math.prod(s) for pair in shapes for s in pair if s is not None)
    if seeds is None or not size or 4 * steps * size > _PREDRAW_BYTES:
        return None
    streams = jnp.arange(steps, dtype=jnp.uint32)
    return jax.vmap(lambda t: R._normal(R._hash_bits(seeds, t, (size,))))(streams)


def _sweep(ops: _Ops, bs, x, states, target, beta, noise: dict, linear_output: bool = False):
    """One block-coordinate sweep: odd layers (1-based) then even layers.

    ``noise[(k, transpose)]`` is the unit noise of the read of ``W_k`` (``transpose``: the
    top-down read ``s_(k+1) W_k^T``). With ``linear_output`` the output layer's exact
    minimiser is left unclipped: its energy ``1/2 |s_L|^2 - s_L^T u + beta/2 |s_L - y|^2`` is a
    strictly convex quadratic without the box.
    """
    states = list(states)
    n = len(states)
    for parity in (0, 1):
        for i in range(parity, n, 2):
            below = x if i == 0 else states[i - 1]
            u = ops.fwd(i, below, noise.get((i, False))) + bs[i]
            if i < n - 1:
                u = u + ops.bwd(i + 1, states[i + 1], noise[(i + 1, True)])
            else:
                u = (u + beta * target) / (1.0 + beta)
                if linear_output:
                    states[i] = u
                    continue
            states[i] = jnp.clip(u, 0.0, 1.0)
    return tuple(states)


def _held_input(ops: _Ops, x, input_product, seeds, steps: int, n_1: int) -> jax.Array:
    """The read of ``x @ W_1`` that :func:`relax` holds for all its sweeps (checked if given).

    The clamped input's product is the same every sweep, so it is read once and held
    (sample-and-hold on the first crossbar's column outputs): with a noisy periphery its
    read noise and ADC error are frozen instead of redrawn each sweep. Training passes the
    same held read to all phases of a step (``input_product=``), so that noise is common to
    the free and nudged states and cancels in their difference, as on a chip that drives
    the clamped rows once per example. It is also what keeps a noisy 784x500 first layer
    affordable: 90% of the product cost, formerly re-read 20-40 times per phase. The energy
    ledger still counts a read per sweep (a chip relaxing continuously keeps driving rows).
    Drawn here, its noise is stream ``steps`` of the relaxation's key.
    """
    if input_product is None:
        return ops.fwd(0, x, _read_noise(seeds, steps, [ops.shapes(0, False, x.shape[0])])[0])
    h0 = jnp.asarray(input_product)
    if h0.shape != (x.shape[0], n_1) or not jnp.issubdtype(h0.dtype, jnp.floating):
        raise ValueError(
            f"relax: input_product has shape {h0.shape} and dtype {h0.dtype}; "
            f"it must be a float (batch, n_1) = {(x.shape[0], n_1)} "
            "read of x @ W_1, e.g. from analog.read_input(params, x, ...)"
        )
    return h0.astype(_F32)


def relax(
    params,
    x,
    states,
    target,
    beta,
    steps: int,
    *,
    io: IOConfig | None = None,
    key: jax.Array | None = None,
    tile_shape=(64, 64),
    input_product=None,
    linear_output: bool = False,
):
    """Relax the states to a minimum of ``F = E + beta C`` (see the module docstring).

    Args:
      params: energy-network params; x: ``(B, n_in)`` clamped input.
      states: tuple of initial states ``(B, n_k)`` for layers 1..L.
      target: ``(B, n_out)`` target of the cost (ignored when beta = 0).
      beta: nudge strength (scalar; 0 = free phase).
      steps: number of sweeps.
      io: crossbar periphery used for every product (None = exact).
      key: PRNG key when ``io`` draws noise.
      input_product: ``(B, n_1)`` read of ``x @ W_1`` through the periphery to hold for the
        whole relaxation (default: read it once here); see :func:`read_input`.
      linear_output: leave the output units unbounded (see :func:`activity_difference`).

    Returns:
      ``(states, residual)``, residual = ``max |s_T - s_(T-1)|`` of the last sweep.
    """
    io = IOConfig() if io is None else io
    tile_shape = check_tile_shape(tile_shape)
    steps = _check_steps("steps", steps)
    ws, bs = _check_params(params)
    ws = [w.astype(_F32) for w in ws]
    bs = [b.astype(_F32) for b in bs]
    require_io_key(io, key, "relax")
    ops = _ops(ws, io, tile_shape)
    ops_fwd = ops.fwd
    beta = jnp.asarray(beta, _F32)
    x = x.astype(_F32)
    target = target.astype(_F32)
    # Sweep t draws its noise from stream t of the key, the held input read from stream steps.
    seeds = R._key_seeds(key) if io.needs_key and key is not None else None
    b = x.shape[0]
    reads = [(k, t) for t in (False, True) for k in range(1, len(ws))]
    shapes = [ops.shapes(k, t, b) for k, t in reads]

    h0 = _held_input(ops, x, input_product, seeds, steps, ws[0].shape[1])
    ops = _Ops(lambda k, s, z: h0 if k == 0 else ops_fwd(k, s, z), ops.bwd, ops.shapes)

    z_all = _sweep_normals(seeds, steps, shapes)

    def body(t, s):
        z = None if z_all is None else z_all[t]
        noise = dict(zip(reads, _read_noise(seeds, t, shapes, z)))
        return _sweep(ops, bs, x, s, target, beta, noise, linear_output)

    states = tuple(s.astype(_F32) for s in states)
    states = jax.lax.fori_loop(0, steps - 1, body, states)
    last = body(steps - 1, states)
    residual = jnp.max(jnp.stack([jnp.max(jnp.abs(a - b)) for a, b in zip(last, states)]))
    return last, residual


def read_input(
    params,
    x: jax.Array,
    *,
    io: IOConfig | None = None,
    key: jax.Array | None = None,
    tile_shape=(64, 64),
) -> jax.Array:
    """One read of the clamped input through the first crossbar: ``x @ W_1`` with ``io``'s
    DAC, read noise and ADC (exact for ideal ``io``). :func:`relax` holds it for all sweeps."""
    io = IOConfig() if io is None else io
    ws, _ = _check_params(params)
    require_io_key(io, key, "read_input")
    ops = _ops([ws[0].astype(_F32)], io, check_tile_shape(tile_shape))
    seeds = R._key_seeds(key) if io.needs_key and key is not None else None
    z = _read_noise(seeds, 0, [ops.shapes(0, False, x.shape[0])])[0]
    return ops.fwd(0, x.astype(_F32), z)


def _flatten_x(x: jax.Array, n_in: int) -> jax.Array:
    return bbcore.flat_inputs(jnp.asarray(x), n_in, "the energy network").astype(_F32)


def predict(
    params,
    x: jax.Array,
    *,
    steps: int = 20,
    io: IOConfig | None = None,
    key: jax.Array | None = None,
    tile_shape=(64, 64),
    tol: float | None = None,
    return_residual: bool = False,
    linear_output: bool = False,
):
    """Free phase: relax with the input clamped and return the output units ``(B, n_out)``.

    Args:
      params: energy-network params; x: ``(B, ...)`` inputs, flattened to ``(B, n_in)``.
      steps: relaxation sweeps; io/key/tile_shape: crossbar periphery for every product.
      tol: if given, raise :class:`NonConvergenceError` when the last sweep's residual exceeds it.
      return_residual: also return the residual.
      linear_output: unbounded output units, as trained (see :func:`activity_difference`).

    Returns:
      float32 output units in ``[0, 1]`` (unbounded with ``linear_output``; argmax is the predicted class), or
      ``(outputs, residual)``.
    """
    ws, _ = _check_params(params)
    steps = _check_steps("steps", steps)
    tile_shape = check_tile_shape(tile_shape)
    io = IOConfig() if io is None else io
    require_io_key(io, key, "predict")
    xf = _flatten_x(x, ws[0].shape[0])
    check_flags(linear_output=linear_output)
    out, res = _predict(params, xf, key, steps, io, tile_shape, bool(linear_output))
    raise_if_not_converged(res, tol, "free-phase", "steps", steps)
    return (out, res) if return_residual else out


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _predict(params, xf, key, steps, io, tile_shape, linear_output=False):
    ws, _ = _check_params(params)
    b = xf.shape[0]
    states = tuple(jnp.zeros((b, w.shape[1]), _F32) for w in ws)
    target = jnp.zeros((b, ws[-1].shape[1]), _F32)
    s, res = relax(
        params,
        xf,
        states,
        target,
        0.0,
        steps,
        io=io,
        key=key,
        tile_shape=tile_shape,
        linear_output=linear_output,
    )
    return s[-1], res


def _mvm_counts(n_in: int, n_out: int, batch: int, tile_shape: tuple[int, int]):
    th, tw = tile_shape
    r, c = -(-n_in // th), -(-n_out // tw)
    cells = 2.0 * batch * r * c * th * tw  # both devices of each pair are read
    drive_fwd, read_fwd = batch * r * c * th, batch * r * c * tw
    return cells, drive_fwd, read_fwd


def relaxation_counts(
    layer_sizes: Sequence[int], batch: int, sweeps: int, tile_shape=(64, 64)
) -> EnergyLedger:
    """Operation counts of ``sweeps`` relaxation sweeps on crossbars (and the digital FLOPs).

    A sweep reads every ``W_k`` forward once and every ``W_k`` but the first transposed once.
    A forward read drives each tile's ``rows`` inputs (DAC) and digitises its ``cols`` outputs
    (ADC); a transposed read the other way round. The digital estimate counts ``2 n_in n_out``
    FLOPs per example per product.
    """
    tile_shape = check_tile_shape(tile_shape)
    cells = dac = adc = flops = 0.0
    for k, (a, o) in enumerate(itertools.pairwise(layer_sizes)):
        c, d_in, d_out = _mvm_counts(a, o, batch, tile_shape)
        reads = 1 if k == 0 else 2
        cells += reads * c
        dac += d_in + (d_out if k else 0)
        adc += d_out + (d_in if k else 0)
        flops += reads * 2.0 * batch * a * o
    f = float(sweeps)
    z = jnp.zeros((), _F32)
    return EnergyLedger(
        steps=z,
        cell_reads=jnp.asarray(cells * f, _F32),
        dac=jnp.asarray(dac * f, _F32),
        adc=jnp.asarray(adc * f, _F32),
        pulses=z,
        digital_flops=jnp.asarray(flops * f, _F32),
    )
