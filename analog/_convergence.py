"""When a relaxation has not settled: the tolerance check, its error and its once-only warning.

Used by the free phase (:func:`analog.predict`) and the activity difference
(:func:`analog.activity_difference`); the residual is ``max |s_t - s_(t-1)|`` of the last sweep.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax

__all__ = [
    "NonConvergenceError",
    "NonConvergenceWarning",
    "check_nonconvergence_mode",
    "raise_if_not_converged",
]


class NonConvergenceError(RuntimeError):
    """The relaxation did not reach a fixed point within the allowed number of steps."""


class NonConvergenceWarning(RuntimeWarning):
    """A relaxation ended with a residual above ``tol`` (issued once per process by default)."""


_WARNED = [False]

_MODES = ("warn", "raise")


def check_nonconvergence_mode(mode: Any) -> str:
    if mode not in _MODES:
        raise ValueError(
            f"on_nonconvergence={mode!r}: use 'warn' (default: report the residual "
            "and warn once) or 'raise' (stop with NonConvergenceError)"
        )
    return mode


def raise_if_not_converged(
    residual: jax.Array,
    tol: float | None,
    phase: str,
    steps_name: str,
    steps: int,
    mode: str = "raise",
) -> None:
    """Act on residual > tol: raise NonConvergenceError (``mode="raise"``) or warn once.

    Raises now if concrete, at run time if traced. The residual is in the info either way.
    """
    if tol is None:
        return

    def check(r):
        r = float(r)
        if r <= tol:  # NaN never passes: a NaN relaxation is a non-convergence too
            return
        msg = (
            f"{phase} relaxation did not converge: residual max|s_t - s_(t-1)| = {r:.3g} > "
            f"tol={tol} after {steps_name}={steps} sweeps. Increase {steps_name}, reduce the "
            "learning rate or the weights' scale, or raise tol (read noise sets a floor on "
            "the residual); tol=None disables this check."
        )
        if mode == "raise":
            raise NonConvergenceError(msg)
        if not _WARNED[0]:
            _WARNED[0] = True
            warnings.warn(
                msg + " (Warned once per process; the residual is in the returned "
                "info and the transform state counts such steps; "
                "on_nonconvergence='raise' stops instead.)",
                NonConvergenceWarning,
                stacklevel=2,
            )

    if isinstance(residual, jax.core.Tracer):
        # Under an outer jit the value exists only at run time; a raise then surfaces as a
        # JaxRuntimeError carrying this message.
        jax.debug.callback(check, residual)
    else:
        check(residual)
