"""Tolerances stated in float32 ulps of the result's magnitude, never as a bare absolute number.

Why: XLA:CPU vectorises reductions to the machine's SIMD width (8 float32 lanes with AVX2, 16 with
AVX-512), so the same dot product is summed in a different order on different CPUs, and so are
eager and jitted programs, or batched and looped ones. An absolute ``atol=1e-12`` is below one
float32 ulp of a result of size 1e-4, so it passes or fails by the CPU's vector width, not by the
code under test. A reordered float32 sum of ``k`` terms ``t_i`` differs from the exact sum by at
most ``gamma_k * sum |t_i|`` with ``gamma_k = k u / (1 - k u)`` and ``u = eps / 2`` (Higham,
*Accuracy and Stability of Numerical Algorithms*, 2nd ed., Theorem 3.5 / eq. 3.5), so a
reference computed exactly (float64) may differ from any float32 order by ``k`` ulps of the
*magnitude* ``sum |t_i|`` (for a matrix product, ``|A| @ |B|``), not of the result itself, which
cancellation can make arbitrarily small.
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def assert_close_ulps(actual, desired, *, ulps: float, magnitude=None, err_msg: str = "") -> None:
    """Assert ``|actual - desired| <= ulps * eps(float32) * magnitude`` element-wise.

    Args:
      actual, desired: arrays of the same shape.
      ulps: allowed error in float32 ulps of ``magnitude``; state why in the caller.
      magnitude: the size the error scales with, broadcastable to ``desired``: for a sum or dot
        product the sum of the absolute terms (``np.abs(A) @ np.abs(B)``); by default the largest
        absolute value of ``desired`` (one scale for the whole result).
    """
    a = np.asarray(actual, np.float64)
    d = np.asarray(desired, np.float64)
    if magnitude is None:
        magnitude = np.max(np.abs(d)) if d.size else 0.0
    tol = ulps * EPS32 * np.asarray(magnitude, np.float64)
    # a zero magnitude means every term was zero: both sides must then be exactly zero
    np.testing.assert_array_less(
        np.abs(a - d),
        np.broadcast_to(tol, d.shape) + np.finfo(np.float64).tiny,
        err_msg=err_msg or f"differs by more than {ulps} float32 ulps of the magnitude",
    )


def dot_ulps(k: int) -> float:
    """Higham's bound for a reordered float32 sum of ``k`` terms, in ulps (``gamma_k / eps``), doubled
    because both sides of a comparison may be rounded (one float32 order against another)."""
    u = EPS32 / 2
    return 2 * (k * u / (1 - k * u)) / EPS32
