"""``analog.ExpFitStep``: aihwkit's ``ExpStepDevice``, the exponential fit of a ReRAM/CMOS step.

aihwkit (``aihwkit.simulator.configs.devices.ExpStepDevice``, after Gong et al., "Signal and
noise extraction from analog memory elements for neuromorphic computing", Nat. Commun. 9:2102,
2018) scales every pulse's step by ``max(y, 0)`` with

    z = 2 a_es w / (w_max - w_min) + b_es,    y_up = 1 - A_up exp(gamma_up z),
                                              y_down = 1 - A_down exp(-gamma_down z),

so the step of either direction shrinks exponentially as the weight nears that direction's
bound, with the two directions fitted separately (an asymmetric device). aihwkit's ``w`` is
measured from w = 0, which stays put when its bounds are spread device to device
(``w_max_dtod``, ``w_min_dtod``), over that device's own range. On a device of this package
``w`` is likewise measured from the nominal mid-range ``c = (g_min + g_max) / 2`` over the
device's own range: ``w / (w_max - w_min)`` is ``(g - c) / (g_max_ij - g_min_ij)``, which is
``x - 1/2`` (``x`` the position in the range) on a device at the nominal range, and ``x - 1/2
+ h`` with ``h = 1/2 - (c - g_min_ij) / (g_max_ij - g_min_ij)`` on a spread one (the curves
below are evaluated at ``x + h``: :meth:`analog.Device._reference_shift`). So one up
pulse moves ``x`` by ``a (1 - B_up exp(k_up x))`` with ``a = dw_min (1 + up_down) / range``,
``k_up = 2 a_es gamma_up`` and ``B_up = A_up exp(gamma_up (b_es - a_es))``; in the mirrored
coordinate ``x' = 1 - x`` a down pulse moves ``x'`` by ``a (1 - B_down exp(k_down x'))`` with
``k_down = 2 a_es gamma_down`` and ``B_down = A_down exp(-gamma_down (a_es + b_es))``.

n pulses: the continuous solution of ``dx/dn = a (1 - B e^(k x))``,

    exp(-k x_n) = B + (exp(-k x_0) - B) exp(-k a n),

which composes exactly (n pulses then m equal n + m) and stays below the fixed point
``x* = -ln(B) / k`` where the step vanishes (a device already at or past it does not move:
aihwkit's ``max(y, 0)``). It differs from the discrete recurrence by O(k a) relative per pulse:
0.5% at aihwkit's defaults (k a = 6.07 x 8.3e-4). ``dw_min`` is aihwkit's: the step where
``y = 1``, not the step at mid-range as for the other models here (there ``y`` is 0.983 at the
defaults).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from analog._devices import Device, check_numbers

__all__ = ["ExpFitStep"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExpFitStep(Device):
    """aihwkit's ``ExpStepDevice`` (module docstring; Gong et al., Nat. Commun. 9:2102, 2018).

    Attributes (aihwkit's names and defaults, lower-cased): ``a_up``, ``a_down`` (aihwkit's
    ``A_up``, ``A_down``), ``gamma_up``, ``gamma_down``, ``es_a``, ``es_b`` (aihwkit's ``a``,
    ``b``); plus every :class:`analog.Device` field.
    """

    a_up: float = 0.00081
    a_down: float = 0.36833
    gamma_up: float = 12.44625
    gamma_down: float = 12.78785
    es_a: float = 0.244
    es_b: float = 0.2425

    def __post_init__(self):
        super().__post_init__()
        cls = type(self).__name__
        check_numbers(self, ("a_up", "a_down", "gamma_up", "gamma_down", "es_a", "es_b"))
        for name in ("a_up", "a_down"):
            if getattr(self, name) < 0:
                raise ValueError(f"{cls}: {name}={getattr(self, name)!r} must be >= 0")
        for name in ("gamma_up", "gamma_down", "es_a"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"{cls}: {name}={getattr(self, name)!r} must be > 0 (at 0 the step does not "
                    "depend on the weight: use ConstantStep)"
                )

    def _coefficients(self, up: bool) -> tuple[float, float]:
        """``(B, k)`` of one direction's ``dx/dn = a (1 - B e^(k x))`` (module docstring)."""
        if up:
            return self.a_up * math.exp(self.gamma_up * (self.es_b - self.es_a)), (
                2.0 * self.es_a * self.gamma_up
            )
        return self.a_down * math.exp(-self.gamma_down * (self.es_a + self.es_b)), (
            2.0 * self.es_a * self.gamma_down
        )

    @staticmethod
    def _curve(x, n, a, b: float, k: float):
        e0 = jnp.exp(-k * x)
        moving = b < e0  # below the fixed point; at or past it the step is max(y, 0) = 0
        e_n = b + (e0 - b) * jnp.exp(-k * a * n)
        return jnp.where(moving, -jnp.log(jnp.where(moving, e_n, 1.0)) / k, x)

    def _reference_shift(self, var, rng):
        # aihwkit's z is tied to w = 0 (module docstring), not to this device's mid-range
        return 0.5 - (0.5 * (self.g_min + self.g_max) - var.g_min) / rng

    def _up(self, x, n, a):
        return self._curve(x, n, a, *self._coefficients(up=True))

    def _down(self, x, n, a):
        return self._curve(x, n, a, *self._coefficients(up=False))
