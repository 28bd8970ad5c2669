"""The two optax transforms: ``program`` (devices take the update) and ``equilibrium_propagation``.

``program`` comes last in a chain: it receives the final parameter change, sends it to the
devices as pulses, and returns ``realized - params`` so that after ``optax.apply_updates`` the
parameters equal what the chip holds (Gokmen & Vlasov 2016; aihwkit's analog optimisers do the
same through their tiles). ``equilibrium_propagation`` is an estimator: it ignores incoming
updates and reads ``batch=(x, y)`` (Scellier & Bengio 2017; Laborieux et al. 2021).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

import bbcore
from analog._convergence import check_nonconvergence_mode
from analog._devices import Device
from analog._energy import EnergyLedger
from analog._local import activity_difference, check_beta
from analog._periphery import IOConfig
from analog._programming import program_many
from analog._relaxation import _check_params, _check_steps, check_flags, relaxation_counts
from analog._tiles import Tiles, check_tile_shape, init_tiles, read_weights, weight_step

__all__ = [
    "program",
    "ProgramState",
    "equilibrium_propagation",
    "EquilibriumPropagationState",
    "matrix_shape",
    "mixed_precision_transfer",
]

_F32 = jnp.float32


class ProgramState(NamedTuple):
    """State of :func:`program`: step count, PRNG key, the tiles (a pytree shaped like the
    params with a :class:`Tiles` in place of each leaf), the energy ledger, ``nonfinite``,
    the int32 number of updates refused for holding NaN/inf (default 0), and ``pending``: with
    ``mixed_precision=True`` the float32 accumulator of requested but not yet programmed change,
    shaped like the params (None otherwise)."""

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
    key: jax.Array
    tiles: Any
    ledger: EnergyLedger
    nonfinite: ArrayLike = np.int32(0)
    pending: Any = None


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """How a parameter leaf maps onto a crossbar.

    A kernel ``(in, out)`` is the crossbar itself. A bias ``(n,)`` is one extra crossbar row
    driven by a constant input 1 (here its own 1 x n tile row, so it never changes the kernel's
    tiling). A scalar is a 1 x 1 array. A higher-rank leaf (a conv kernel ``(kh, kw, cin, cout)``)
    is unrolled im2col-style into ``(kh * kw * cin, cout)``, as aihwkit maps convolutions.
    """
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, int(shape[0]))
    return (int(math.prod(shape[:-1])), int(shape[-1]))


def _is_tiles(t) -> bool:
    return isinstance(t, Tiles)


def _check_program(device, io, tile_shape, pulse, seed, mixed_precision, w_max):
    """Validate :func:`program`'s arguments (errors say what to pass); returns ``tile_shape``."""
    if not isinstance(device, Device):
        raise TypeError(
            f"program: device={device!r}; pass a device model such as analog.presets.TAOX_RERAM"
        )
    if io is not None and not isinstance(io, IOConfig):
        raise TypeError(f"program: io={io!r}; pass an analog.IOConfig or None")
    tile_shape = check_tile_shape(tile_shape)
    if pulse not in ("stochastic", "deterministic"):
        raise ValueError(f"program: pulse={pulse!r}; use 'stochastic' or 'deterministic'")
    bbcore.check_seed(seed, "program")
    if not isinstance(mixed_precision, bool):
        raise TypeError(f"program: mixed_precision={mixed_precision!r} must be True or False")
    if isinstance(w_max, (dict, list, tuple)):  # one per leaf, matched to params at init
        for leaf in jax.tree.leaves(w_max, is_leaf=lambda x: x is None):
            _check_w_max(leaf, f" (a leaf of the per-leaf w_max {w_max!r})")
    else:
        _check_w_max(w_max, "")
    return tile_shape


def _check_w_max(w_max, where: str) -> None:
    ok = w_max is None or (
        w_max > 0
        if isinstance(w_max, (int, float)) and not isinstance(w_max, bool)
        else hasattr(w_max, "dtype") and jnp.ndim(w_max) == 0
    )
    if not ok:
        raise ValueError(
            f"program: w_max={w_max!r}{where} must be a positive number or None, or a pytree "
            "of those with the params' structure (one per leaf)"
        )


def _w_max_leaves(w_max, treedef, n: int) -> list:
    """One ``w_max`` per params leaf: the same for all, or the per-leaf tree's, in order."""
    if not isinstance(w_max, (dict, list, tuple)):
        return [w_max] * n
    try:
        return treedef.flatten_up_to(w_max)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"program: the per-leaf w_max does not have the params' structure {treedef} ({e}); "
            "give one number or None for every leaf, or one number for all"
        ) from None


def mixed_precision_transfer(
    pending: list[jax.Array], deltas: list[jax.Array], tiles: list[Tiles]
) -> tuple[list[jax.Array], list[jax.Array]]:
    """The digital accumulator of mixed-precision training: what to send now, what to keep.

    Nandakumar et al., "Mixed-precision deep learning based on computational memory", Front.
    Neurosci. 14:406 (2020), Sec. 2.2 (aihwkit's ``MixedPrecisionCompound``): per weight,
    ``chi += delta``, then ``p = trunc(chi / eps)`` whole pulse pairs are sent (``eps`` =
    :func:`weight_step`, the nominal change of one pair) and ``chi -= p eps``. Sub-step and
    zero-mean parts of the updates (noisy estimates: forward gradients, small-batch local
    rules) are averaged here instead of becoming random pulses, which asymmetric devices turn
    into drift towards their symmetry points. The transfer is open-loop, as in the paper: the
    devices' nonlinearity and noise act on the ``p`` pulses and are not fed back.

    Args:
      pending, deltas: float32 accumulators and requested changes, in the tiles' ``(in, out)``.
      tiles: the tiles the changes are for (their ``w_scale`` and step size).

    Returns:
      ``(sent, pending)``: whole-step changes to program, and the new accumulators.
    """
    # Clamped at twice the pair's full swing: a larger request only saturates the devices, and
    # an unbounded chi loses the trunc arithmetic (|chi/eps| >= 2^24 in float32) or overflows
    # to inf from a huge but finite update.
    chi = [
        jnp.clip(c + dl, -4.0 * t.w_scale, 4.0 * t.w_scale)
        for c, dl, t in zip(pending, deltas, tiles)
    ]
    # trunc, not round: |chi| stays below one step, so a change smaller than a step is never
    # sent early (Nandakumar et al.'s threshold at eps).
    sent = [jnp.trunc(c / weight_step(t)) * weight_step(t) for c, t in zip(chi, tiles)]
    return sent, [c - s for c, s in zip(chi, sent)]


def program(
    device: Device,
    *,
    io: IOConfig | None = None,
    tile_shape=(64, 64),
    pulse: str = "stochastic",
    seed: int = 0,
    w_max: Any = None,
    mixed_precision: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Make the devices take the incoming updates; return what they actually did.

    ``init(params)`` programs every leaf onto fresh tiles of ``device`` (write-and-verify, with
    device-to-device variation drawn from ``seed``); leaves map to matrices by
    :func:`matrix_shape`. ``update(updates, state, params)`` turns each leaf's change into
    per-device pulse counts (``pulse="stochastic"``: stochastic rounding of
    ``update / weight_step``, unbiased; ``"deterministic"``: nearest, so changes under half a
    step are lost), applies them with the device's nonlinearity, asymmetry, cycle-to-cycle noise,
    bounds and stuck cells, and returns ``read_weights - params`` in the params' dtypes. An
    arbitrary gradient is not an outer product, so the coincidence scheme of
    :func:`pulse_update` does not apply here; use it directly for rank-1 updates.

    Args:
      device: device model (e.g. ``analog.presets.TAOX_RERAM``).
      io: periphery of the tiles. Programming reads back conductances exactly (write-and-verify
        is not modelled), so ``io`` is only validated and kept for symmetry with the other calls.
      tile_shape: ``(rows, cols)`` of a tile.
      pulse: ``"stochastic"`` or ``"deterministic"`` rounding of pulse counts.
      seed: integer seed for the variation and the pulse noise.
      w_max: largest representable ``|weight|`` per leaf; None = twice the leaf's initial
        ``max|w|`` (1.0 for an all-zero leaf such as a fresh bias). A pytree with the params'
        structure (a number or None per leaf) sets each leaf's range on its own, as a chip
        maps each layer with its own conductance-to-weight scale (aihwkit's per-layer
        ``weight_scaling``).
      mixed_precision: keep a digital float32 accumulator per weight and program only whole
        device steps (:func:`mixed_precision_transfer`); ``pulse`` is then not used. Costs one
        float32 per weight of digital memory and two digital operations per weight and step
        (not counted in the ledger, whose ``digital_flops`` is the work a digital processor
        would do instead).

    Non-finite policy (``bbcore.finite``): an update with a NaN or inf anywhere is refused as a
    whole. No device is pulsed (a NaN pulse count would leave NaN conductances for good), the
    tiles, key, count and ledger stay as they were, ``state.nonfinite`` is incremented and the
    returned updates are zeros.
    """
    tile_shape = _check_program(device, io, tile_shape, pulse, seed, mixed_precision, w_max)
    # one compilation for the whole tree instead of one per leaf
    init_fn = jax.jit(
        functools.partial(
            _program_init,
            device=device,
            seed=seed,
            tile_shape=tile_shape,
            w_max=w_max,
            mixed_precision=mixed_precision,
        )
    )

    update_fn = functools.partial(_program_update, pulse=pulse, mixed_precision=mixed_precision)
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _program_init(params, *, device, seed, tile_shape, w_max, mixed_precision) -> ProgramState:
    """:func:`program`'s ``init``: every leaf programmed onto fresh tiles (key ``seed``)."""
    key = bbcore.key(seed)
    leaves, treedef = jax.tree.flatten(params)
    tiles = [
        init_tiles(
            jax.random.fold_in(key, i),
            jnp.asarray(p).reshape(matrix_shape(jnp.shape(p))),
            device,
            tile_shape,
            w_max=m,
        )
        for i, (p, m) in enumerate(zip(leaves, _w_max_leaves(w_max, treedef, len(leaves))))
    ]
    return ProgramState(
        count=jnp.zeros((), jnp.int32),
        key=jax.random.fold_in(key, len(leaves)),
        tiles=jax.tree.unflatten(treedef, tiles),
        ledger=EnergyLedger.zeros(),
        nonfinite=jnp.zeros((), jnp.int32),
        pending=(
            jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), _F32), params)
            if mixed_precision
            else None
        ),
    )


def _program_update(updates, state, params=None, *, pulse, mixed_precision, **extra):
    """:func:`program`'s ``update``: pulse the devices, or refuse a non-finite update whole."""
    del extra
    if params is None:
        raise ValueError(
            "analog.program needs params: it returns realized - params, so "
            "call tx.update(updates, state, params)"
        )
    if updates is None:
        raise ValueError(
            "analog.program got updates=None; put it after a transform that "
            "produces updates (an estimator or optax.sgd)"
        )
    u_leaves, treedef = jax.tree.flatten(updates)
    p_leaves = treedef.flatten_up_to(params)
    t_leaves = jax.tree.leaves(state.tiles, is_leaf=_is_tiles)
    deltas = [jnp.asarray(u).astype(_F32).reshape(t.shape) for u, t in zip(u_leaves, t_leaves)]

    tiles_def = jax.tree.structure(state.tiles, is_leaf=_is_tiles)

    def conductances(tiles):  # the part of the tiles an update changes
        return tiles_def.unflatten(
            [(t.g_plus, t.g_minus) for t in jax.tree.leaves(tiles, is_leaf=_is_tiles)]
        )

    def take():
        upd, new = _program_step(state, deltas, p_leaves, t_leaves, treedef, pulse, mixed_precision)
        return upd, new._replace(tiles=conductances(new.tiles))

    # A cond, not a select: a refused update never reaches the device model at all. Only the
    # conductances go through it: the device parameters (six arrays per conductance array)
    # never change, and as outputs of the cond XLA copied them every step (BENCHMARKS.md,
    # "Speed of the registered `analog-eqprop-taox` row").
    upd, new = bbcore.refuse_nonfinite(
        bbcore.all_finite(u_leaves), take, state._replace(tiles=conductances(state.tiles)), params
    )
    tiles = [
        dataclasses.replace(t, g_plus=gp, g_minus=gm)
        for t, (gp, gm) in zip(t_leaves, tiles_def.flatten_up_to(new.tiles))
    ]
    return upd, new._replace(tiles=tiles_def.unflatten(tiles))


def _program_step(state, deltas, p_leaves, t_leaves, treedef, pulse, mixed_precision):
    """One accepted update: the changes (through the accumulator) to pulses, the new state."""
    key, sub = jax.random.split(state.key)
    pending = state.pending
    if mixed_precision:
        sent, chi = mixed_precision_transfer(
            [c.reshape(t.shape) for c, t in zip(treedef.flatten_up_to(pending), t_leaves)],
            deltas,
            t_leaves,
        )
        pending = treedef.unflatten([c.reshape(jnp.shape(p)) for c, p in zip(chi, p_leaves)])
        new_tiles, pulses = program_many(t_leaves, sent, sub, rounding="deterministic")
    else:
        new_tiles, pulses = program_many(t_leaves, deltas, sub, rounding=pulse)
    z = jnp.zeros((), _F32)
    ledger = state.ledger + EnergyLedger(
        steps=jnp.ones((), _F32), cell_reads=z, dac=z, adc=z, pulses=pulses, digital_flops=z
    )
    tiles = jax.tree.unflatten(jax.tree.structure(state.tiles, is_leaf=_is_tiles), new_tiles)
    return _realized_minus_params(new_tiles, p_leaves, treedef), ProgramState(
        count=state.count + 1,
        key=key,
        tiles=tiles,
        ledger=ledger,
        nonfinite=jnp.asarray(state.nonfinite, jnp.int32),
        pending=pending,
    )


def _realized_minus_params(tiles: list[Tiles], p_leaves: list, treedef) -> Any:
    """``read_weights(tiles) - params`` per leaf, in the params' shapes and dtypes."""
    out = []
    for t, p in zip(tiles, p_leaves):
        realized = read_weights(t).reshape(jnp.shape(p))
        out.append((realized - jnp.asarray(p).astype(_F32)).astype(jnp.asarray(p).dtype))
    return treedef.unflatten(out)


class EquilibriumPropagationState(NamedTuple):
    """State of :func:`equilibrium_propagation`: step count, PRNG key, the last step's largest
    relaxation residual (for monitoring convergence), the energy ledger of its crossbar reads,
    ``nonfinite``, the int32 number of steps refused for a NaN/inf update (default 0), and
    ``unconverged``, the int32 number of steps whose relaxation residual exceeded ``tol``."""

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
    key: jax.Array
    residual: jax.Array
    ledger: EnergyLedger
    nonfinite: ArrayLike = np.int32(0)
    unconverged: ArrayLike = np.int32(0)


def equilibrium_propagation(
    *,
    beta: float = 0.5,
    free_steps: int = 20,
    nudged_steps: int = 4,
    seed: int = 0,
    centered: bool = True,
    io: IOConfig | None = None,
    tile_shape=(64, 64),
    tol: float | None = 5e-2,
    normalize: bool = False,
    linear_output: bool = False,
    on_nonconvergence: str = "warn",
) -> optax.GradientTransformationExtraArgs:
    """Estimator transform: the activity-difference update of an energy network from ``batch``.

    ``update(updates, state, params, *, batch=(x, y))`` ignores ``updates`` (may be None) and
    returns :func:`activity_difference` of ``params`` on the batch, a descent direction shaped
    like ``params``; follow it with ``optax.sgd(lr)`` and, on a chip, ``program(device)``. The
    PRNG key (read noise) lives in the state. Every relaxation product goes through the crossbar
    periphery ``io`` (None = exact); the state's ledger counts those reads.

    Args:
      beta: nudge (non-zero; ``|beta| < 1`` when centered). Scellier & Bengio use 0.5 for
        784-500-10 (their Sec. 4); Laborieux et al. use the centered +beta/-beta form.
      free_steps / nudged_steps: relaxation sweeps per phase.
      seed: integer seed; centered: +beta/-beta phases (else +beta vs free).
      io / tile_shape: crossbar periphery and tiling used during relaxation.
      tol: a step whose last-sweep residual exceeds it has not converged: it is counted in
        ``state.unconverged`` and warned about once (``on_nonconvergence="warn"``, default), or
        raises :class:`NonConvergenceError` (``"raise"``).
      normalize: normalised (NLMS) per-layer steps; see :func:`activity_difference`.
      linear_output: unbounded output units, which cannot die; see :func:`activity_difference`.

    Non-finite policy: with ``tol`` set and ``on_nonconvergence="raise"``, a relaxation that
    goes NaN/inf is a non-convergence and raises :class:`NonConvergenceError` (a NaN residual
    never passes ``<= tol``). Otherwise an update holding NaN or inf is refused: zeros are
    returned, the count, key, residual and ledger stay as they were and ``state.nonfinite`` is
    incremented.
    """
    free_steps, nudged_steps, tile_shape = _check_equilibrium_propagation(
        beta, free_steps, nudged_steps, seed, centered, io, tile_shape, normalize, linear_output
    )
    check_nonconvergence_mode(on_nonconvergence)
    settings: dict[str, Any] = {
        "beta": beta,
        "free_steps": free_steps,
        "nudged_steps": nudged_steps,
        "centered": centered,
        "io": io,
        "tile_shape": tile_shape,
        "tol": tol,
        "normalize": normalize,
        "linear_output": linear_output,
        "on_nonconvergence": on_nonconvergence,
        "return_info": True,
    }
    estimate = functools.partial(activity_difference, **settings)
    sweeps = free_steps + (2 if centered else 1) * nudged_steps
    init_fn = functools.partial(_ep_init, seed=seed)
    update_fn = functools.partial(
        _ep_update, estimate=estimate, tol=tol, sweeps=sweeps, tile_shape=tile_shape
    )
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _ep_init(params, *, seed) -> EquilibriumPropagationState:
    """:func:`equilibrium_propagation`'s ``init``: counters at zero, the key from ``seed``."""
    _check_params(params)
    return EquilibriumPropagationState(
        jnp.zeros((), jnp.int32),
        bbcore.key(seed),
        jnp.zeros((), _F32),
        EnergyLedger.zeros(),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def _ep_update(
    updates, state, params=None, *, batch=None, estimate, tol, sweeps, tile_shape, **extra
):
    """:func:`equilibrium_propagation`'s ``update``: ``estimate`` on the batch, counted; a
    non-finite update is refused whole."""
    del updates, extra
    x, y = _check_batch(params, batch)
    key, sub = jax.random.split(state.key)
    upd, info = estimate(params, x, y, key=sub)
    residual = jnp.maximum(info.free_residual, info.nudged_residual)
    late = (
        jnp.zeros((), jnp.int32)
        if tol is None
        else jnp.logical_not(residual <= tol).astype(jnp.int32)
    )
    new = EquilibriumPropagationState(
        state.count + 1,
        key,
        residual,
        state.ledger + _step_counts(params, jnp.shape(x)[0], sweeps, tile_shape),
        jnp.asarray(state.nonfinite, jnp.int32),
        jnp.asarray(state.unconverged, jnp.int32) + late,
    )
    return bbcore.refuse_nonfinite(bbcore.all_finite(upd), lambda: (upd, new), state, upd)


def _check_equilibrium_propagation(
    beta, free_steps, nudged_steps, seed, centered, io, tile_shape, normalize, linear_output
) -> tuple[int, int, tuple[int, int]]:
    """Validate :func:`equilibrium_propagation`'s arguments; return the checked sweeps and tiling."""
    check_beta(beta, centered)
    free_steps = _check_steps("free_steps", free_steps)
    nudged_steps = _check_steps("nudged_steps", nudged_steps)
    tile_shape = check_tile_shape(tile_shape)
    if io is not None and not isinstance(io, IOConfig):
        raise TypeError(f"equilibrium_propagation: io={io!r}; pass an analog.IOConfig or None")
    bbcore.check_seed(seed, "equilibrium_propagation")
    check_flags(normalize=normalize, linear_output=linear_output)
    return free_steps, nudged_steps, tile_shape


def _check_batch(params, batch) -> tuple[Any, Any]:
    """The ``(x, y)`` an :func:`equilibrium_propagation` update reads (errors say how to pass)."""
    if params is None:
        raise ValueError(
            "equilibrium_propagation needs params: tx.update(None, state, params, batch=(x, y))"
        )
    if batch is None:
        raise ValueError(
            "equilibrium_propagation reads the keyword extra arg batch=(x, y); "
            "pass it to tx.update (optax.chain forwards it)"
        )
    x, y = batch
    return x, y


def _step_counts(params, batch: int, sweeps: int, tile_shape: tuple[int, int]) -> EnergyLedger:
    """The ledger of one step: the relaxation's crossbar reads and the digital update's FLOPs."""
    ws, _ = _check_params(params)
    sizes = [ws[0].shape[0]] + [w.shape[1] for w in ws]
    counts = relaxation_counts(sizes, batch, sweeps, tile_shape)
    # The update itself: two outer products per layer on a digital processor.
    upd_flops = sum(4.0 * batch * w.shape[0] * w.shape[1] for w in ws)
    return counts._replace(steps=jnp.ones((), _F32), digital_flops=counts.digital_flops + upd_flops)
