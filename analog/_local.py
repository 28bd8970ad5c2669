"""The local rule: the Equilibrium-Propagation activity difference of a layered energy network.

The network, its energy ``F = E + beta C`` and its relaxation are in ``analog/_relaxation.py``.
The update (the activity difference, Scellier & Bengio Eq. 10; centered form of Laborieux et
al. Eq. 9): with fixed points ``s^(+beta)``, ``s^(-beta)``,

    dL/dW_k ~ -(1/(2 beta)) [ s_(k-1)^+ (s_k^+)^T - s_(k-1)^- (s_k^-)^T ],
    dL/db_k ~ -(1/(2 beta)) [ s_k^+ - s_k^- ],

batch-averaged, where ``L = C(s^0)`` is the free equilibrium's loss. Each layer's update needs
only the activities on its own crossbar's rows and columns in the two phases: Yi et al.
(Nature Electronics 2023) program it as the difference of two outer products. The one-sided
form uses ``s^(+beta)`` and ``s^0`` with ``1/beta``. The result is returned as a descent
direction (an estimate of the gradient), so ``optax.sgd`` follows it.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import bbcore
from analog._convergence import check_nonconvergence_mode, raise_if_not_converged
from analog._periphery import IOConfig, require_io_key
from analog._relaxation import (
    _check_params,
    _check_steps,
    _flatten_x,
    check_flags,
    read_input,
    relax,
)
from analog._tiles import check_tile_shape

__all__ = ["activity_difference", "RelaxInfo", "check_beta"]

_F32 = jnp.float32


class RelaxInfo(NamedTuple):
    """Diagnostics of one call of :func:`activity_difference`.

    free_residual / nudged_residual: ``max |s_t - s_(t-1)|`` over units and batch at the last
      sweep of the free / nudged phase(s) (0 at an exact fixed point).
    free_output: the free phase's output units ``(B, n_out)``.
    """

    free_residual: jax.Array
    nudged_residual: jax.Array
    free_output: jax.Array


def check_beta(beta: Any, centered: bool) -> None:
    """Validate beta when it is concrete (a traced beta, e.g. inject_hyperparams, is not checked)."""
    try:
        b = float(beta)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return
    if not math.isfinite(b) or b == 0:
        raise ValueError(
            f"beta={beta!r}: the nudge must be a finite non-zero number (the "
            "activity difference divides by beta; beta=0 has no learning signal)"
        )
    if centered and abs(b) >= 1:
        raise ValueError(
            f"beta={beta!r} with centered=True: the -beta phase needs |beta| < 1 "
            "(1 - |beta| > 0 keeps the nudged output energy convex)"
        )
    if b <= -1:
        raise ValueError(f"beta={beta!r}: need beta > -1 (1 + beta > 0)")


def _targets(y: jax.Array, n_out: int, batch: int) -> jax.Array:
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.integer):
        if y.shape != (batch,):
            raise ValueError(f"integer labels y have shape {y.shape}; need ({batch},)")
        return jax.nn.one_hot(y, n_out, dtype=_F32)
    if y.shape != (batch, n_out):
        raise ValueError(
            f"float targets y have shape {y.shape}; need ({batch}, {n_out}) "
            "(or pass integer labels)"
        )
    return y.astype(_F32)


def activity_difference(
    params,
    x: jax.Array,
    y: jax.Array,
    *,
    beta: float | jax.Array,
    free_steps: int,
    nudged_steps: int,
    centered: bool = True,
    io: IOConfig | None = None,
    key: jax.Array | None = None,
    tile_shape=(64, 64),
    tol: float | None = 5e-2,
    normalize: bool = False,
    linear_output: bool = False,
    on_nonconvergence: str = "warn",
    return_info: bool = False,
):
    """Equilibrium-Propagation gradient estimate from free and nudged activities.

    Args:
      params: energy-network params (from :func:`init_energy_network`).
      x: ``(B, ...)`` inputs (flattened); y: ``(B,)`` integer labels or ``(B, n_out)`` targets.
      beta: nudge strength, non-zero; ``|beta| < 1`` when centered.
      free_steps / nudged_steps: relaxation sweeps of the free and of each nudged phase.
      centered: use the +beta and -beta phases (Laborieux et al. 2021; bias O(beta^2) instead
        of O(beta)); otherwise +beta against the free phase.
      io, key, tile_shape: crossbar periphery for every product (None = exact).
      tol: a phase whose last-sweep residual exceeds it has not converged; None disables the
        check. Units live in [0, 1], so the default 0.05 means "some unit still moved by 5% of
        its range in the last sweep": the phase has not settled.
      linear_output: leave the output units unbounded instead of clipping them to [0, 1]. A
        clipped output unit whose input falls below ``-beta`` for every example of its class
        sits at 0 in the free and both nudged phases, so its activity difference, and hence
        every later update, is exactly zero: it is dead for good (the 83-85% plateaus measured
        on MNIST, and the collapse to one class on Fashion-MNIST; BENCHMARKS.md, "Recipes on
        data they were not tuned on"). An unbounded output always moves with the nudge.
      on_nonconvergence: ``"warn"`` (default) warns once per process (a
        :class:`NonConvergenceWarning`) and returns the update: a few sweeps short of a fixed
        point still give a useful estimate (a fresh 784-100-10 network on raw MNIST ends 20
        free sweeps at residual 0.065 and trains to 93%); ``"raise"`` raises
        :class:`NonConvergenceError` (also under jit).
      normalize: divide layer ``k``'s update by ``1 + mean_batch |s_(k-1)|^2`` (its free-phase
        input activities plus the bias's constant input): the normalised LMS step of Nagumo &
        Noda (IEEE Trans. Autom. Control 1967) and Widrow & Lehr (Proc. IEEE 1990, Eq. 14).
        Near equilibrium the output layer's update is an LMS step, ``Delta s_L ~ lr |s_(L-1)|^2
        (y - s_L)``, stable only for ``lr |s_(L-1)|^2 < 2``; that product depends on the data
        (input energy sets the hidden activity), so one raw rate that is stable on MNIST
        diverges on brighter data and drives every output unit below the nudge's reach
        (dead outputs). Normalised, the following rate is a data-independent step size.
      return_info: also return :class:`RelaxInfo`.

    Returns:
      updates shaped and typed like ``params`` (a descent direction), or ``(updates, info)``.
    """
    check_beta(beta, centered)
    check_nonconvergence_mode(on_nonconvergence)
    phases = _phases(free_steps, nudged_steps, centered, io, tile_shape, normalize, linear_output)
    require_io_key(phases.io, key, "activity_difference")
    ws, _ = _check_params(params)
    xf = _flatten_x(x, ws[0].shape[0])
    target = _targets(y, ws[-1].shape[1], xf.shape[0])
    key = bbcore.key(0) if key is None else key
    updates, info = _activity_difference(params, xf, target, jnp.asarray(beta, _F32), key, phases)
    _act_on_residuals(info, tol, phases, on_nonconvergence)
    return (updates, info) if return_info else updates


def _act_on_residuals(info: RelaxInfo, tol: float | None, phases: _Phases, mode: str) -> None:
    """Warn or raise (``mode``) for each phase whose residual exceeds ``tol``."""
    raise_if_not_converged(
        info.free_residual, tol, "free-phase", "free_steps", phases.free_steps, mode
    )
    raise_if_not_converged(
        info.nudged_residual, tol, "nudged-phase", "nudged_steps", phases.nudged_steps, mode
    )


class _Phases(NamedTuple):
    """The static settings of one activity-difference step (hashable: a jit static argument)."""

    free_steps: int
    nudged_steps: int
    centered: bool
    io: IOConfig
    tile_shape: tuple[int, int]
    normalize: bool
    linear_output: bool


def _phases(
    free_steps, nudged_steps, centered, io, tile_shape, normalize, linear_output
) -> _Phases:
    """:func:`activity_difference`'s static settings, checked (errors say what to pass)."""
    check_flags(normalize=normalize, linear_output=linear_output)
    io = IOConfig() if io is None else io
    return _Phases(
        free_steps=_check_steps("free_steps", free_steps),
        nudged_steps=_check_steps("nudged_steps", nudged_steps),
        centered=centered,
        io=io,
        tile_shape=check_tile_shape(tile_shape),
        normalize=bool(normalize),
        linear_output=bool(linear_output),
    )


@functools.partial(jax.jit, static_argnums=5)
def _activity_difference(params, xf, target, beta, key, phases: _Phases):
    """The free and nudged relaxations of one step, and the layers' updates from them."""
    ws, _ = _check_params(params)
    b = xf.shape[0]
    kf, kp, km, ki = jax.random.split(key, 4)
    zeros = tuple(jnp.zeros((b, w.shape[1]), _F32) for w in ws)
    io, tile_shape = phases.io, phases.tile_shape
    kw: dict[str, Any] = dict(io=io, tile_shape=tile_shape, linear_output=phases.linear_output)
    # one held read of the clamped input serves all phases of the step (see relax)
    kw["input_product"] = read_input(params, xf, io=io, key=ki, tile_shape=tile_shape)
    s0, r0 = relax(params, xf, zeros, target, 0.0, phases.free_steps, key=kf, **kw)
    s_plus, rp = relax(params, xf, s0, target, beta, phases.nudged_steps, key=kp, **kw)
    if phases.centered:
        s_minus, rm = relax(params, xf, s0, target, -beta, phases.nudged_steps, key=km, **kw)
        scale = -1.0 / (2.0 * beta)
        rn = jnp.maximum(rp, rm)
    else:
        s_minus, scale, rn = s0, -1.0 / beta, rp
    updates = _layer_updates(params, xf, s0, s_plus, s_minus, scale, phases.normalize)
    return updates, RelaxInfo(r0, rn, s0[-1])


def _layer_updates(params, xf, s0, s_plus, s_minus, scale, normalize: bool) -> list[dict]:
    """``scale`` times each layer's difference of outer products (batch mean), in its dtypes."""
    b = xf.shape[0]
    below_p = (xf,) + tuple(s_plus[:-1])
    below_m = (xf,) + tuple(s_minus[:-1])
    below_0 = (xf,) + tuple(s0[:-1])
    updates = []
    for k, p in enumerate(params):
        dw = (below_p[k].T @ s_plus[k] - below_m[k].T @ s_minus[k]) / b
        db = jnp.mean(s_plus[k] - s_minus[k], axis=0)
        if normalize:  # NLMS: the step per unit of the layer's input power (see the docstring)
            power = 1.0 + jnp.mean(jnp.sum(jnp.square(below_0[k]), axis=-1))
            dw, db = dw / power, db / power
        updates.append(
            {
                "kernel": (scale * dw).astype(jnp.asarray(p["kernel"]).dtype),
                "bias": (scale * db).astype(jnp.asarray(p["bias"]).dtype),
            }
        )
    return updates
